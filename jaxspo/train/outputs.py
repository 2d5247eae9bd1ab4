"""A finished run's artefacts: the final params, the optional HF export and the curves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxspo.checkpoint import save_params
from jaxspo.distributed import is_writer
from jaxspo.models.hf_io import save_hf
from jaxspo.train.metrics_log import plot_curves
from jaxspo.train.run import Run


def write_outputs(run: Run, params: Any, full_params: Callable[[], Any]) -> None:
    """Closes the metrics log; writes the final params, the optional HF export and the curves.

    ``full_params`` builds the whole model's params for the HF export (from the model view: ``params`` themselves,
    or with LoRA the base with the adapters merged in).
    """
    cfg = run.cfg
    run.log.close()
    if cfg.checkpoint.save_final:
        save_params(params, run.run_dir / "params")  # the trained params (LoRA: RUN_DIR/base.json names their base)
    if cfg.checkpoint.export_hf_dir:
        save_hf(
            full_params(),
            cfg.model,
            run.tokenizer,
            cfg.checkpoint.export_hf_dir,
            dtype=cfg.checkpoint.export_dtype,
            max_shard_size=cfg.checkpoint.export_max_shard_size,
        )
    if cfg.logging.plot and is_writer():
        plot_curves(run.run_dir / "metrics.jsonl", run.run_dir / "curves.png")
