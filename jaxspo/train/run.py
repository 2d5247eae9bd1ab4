"""A run's shared pieces: its directory, task, tokenizer, model, mesh, encoded data and metrics log."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxspo.config import Config, dump_yaml, to_dict
from jaxspo.data.encode import encode_prompts
from jaxspo.data.formats import prompts_of
from jaxspo.data.row_store import spill
from jaxspo.data.screen import DataReport, encode_screened, write_reports
from jaxspo.data.sources import load_splits
from jaxspo.data.synthetic import build_synthetic_task
from jaxspo.distributed import barrier, broadcast_text, is_writer
from jaxspo.errors import ConfigError, RunDirError
from jaxspo.models import ModelConfig
from jaxspo.models.hf_config import check_same_architecture, model_config_from_hf
from jaxspo.models.hf_io import load_params, load_tokenizer
from jaxspo.perf import run_peak
from jaxspo.sharding import make_mesh
from jaxspo.train.evaluate import Evaluator
from jaxspo.objectives import HostContext, build_objective, switches
from jaxspo.train.metrics_log import MetricsLog
from jaxspo.train.scoring import PairScorer
from jaxspo.train.state import abstract_model, init_params, param_shardings

log = logging.getLogger("jaxspo")


@dataclasses.dataclass
class RunResult:
    """What a finished run hands back (also written to the run directory)."""

    run_dir: Path
    before: dict[str, float]
    after: dict[str, float]
    params: Any
    reference_params: Any


def resolve_run_dir(cfg: Config, config_name: str) -> Path:
    """``cfg.run_dir`` or ``runs/<config name>-<UTC timestamp>`` (never reuses an old run's folder)."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    stamp = broadcast_text(datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S"))  # process 0's clock
    return Path("runs") / f"{config_name}-{stamp}"


def model_and_tokenizer(model: ModelConfig, task_tokenizer: Any) -> tuple[ModelConfig, Any]:
    """With ``model.path``: the architecture from its config.json and its tokenizer (the task's rows are
    tokenised with it). Without: the recipe's model (vocab defaulting to the tokenizer's) and the task's."""
    if model.path:
        return model_config_from_hf(model.path, model), load_tokenizer(model.path)
    return dataclasses.replace(model, vocab_size=model.vocab_size or len(task_tokenizer)), task_tokenizer


class Run:
    """Holds the pieces shared by both phases and the evaluator.

    The data is read and screened before any model is built (``screen``: the splits encoded at once; default
    "train" and "eval", only "eval" for a ``stages`` recipe, which screens its own pairs), so a bad file or
    row stops the command before anything compiles.
    """

    def __init__(self, cfg: Config, run_dir: Path, screen: tuple[str, ...] | None = None):
        self.task = build_synthetic_task(cfg.data.synthetic)
        self.splits = load_splits(cfg.data.source, self.task, cfg.data.task, cfg.data.on_bad_row)
        model_cfg, self.tokenizer = model_and_tokenizer(cfg.model, self.task.tokenizer)
        if model_cfg.vocab_size < len(self.tokenizer):
            raise ConfigError(
                f"model.vocab_size ({model_cfg.vocab_size}) is smaller than the tokenizer's "
                f"{len(self.tokenizer)} tokens; set model.vocab_size=0 (the tokenizer's size)"
            )
        self.cfg = cfg = dataclasses.replace(cfg, model=model_cfg)
        self.run_dir = run_dir
        self.data_reports: dict[str, DataReport] = {}
        self._encoded: dict[tuple[str, int | None], dict[str, np.ndarray]] = {}
        self._scorers: dict[nnx.GraphDef, PairScorer] = {}
        for split in screen if screen is not None else ("eval",) if switches.staged(cfg) else ("train", "eval"):
            self.encoded(split, cfg.eval.num_pairs if split == "eval" else None)
        self.mesh = make_mesh(cfg.mesh.shape())
        self.peak_flops, peak_source = run_peak(
            cfg.model.dtype, cfg.logging.peak_flops
        )  # all devices' FLOP/s, for perf/mfu
        if self.peak_flops is None:
            log.warning(
                "no peak FLOP/s known for %s devices: metrics rows carry no perf/mfu; set "
                "logging.peak_flops (docs/speed.md, MFU)",
                peak_source,
            )
        else:
            log.info(
                "peak %.3g FLOP/s over %d devices (%s, %s): perf/mfu's denominator",
                self.peak_flops,
                jax.device_count(),
                peak_source,
                cfg.model.dtype,
            )
        self.graphdef, self.abstract_params = abstract_model(cfg.model)
        self.param_sharding = param_shardings(self.abstract_params, self.mesh, cfg.mesh.rules)
        if cfg.model.path:
            self.params = load_params(cfg.model.path, cfg.model, self.abstract_params, self.param_sharding)
        else:
            self.params = init_params(cfg.model, cfg.trainer.seed, self.param_sharding)
        self.reference_params = None  # None: the reference is the policy's starting point (after SFT)
        if cfg.model.reference_path and cfg.model.reference_path != cfg.model.path:
            check_same_architecture(cfg.model.reference_path, cfg.model)
            self.reference_params = load_params(
                cfg.model.reference_path, cfg.model, self.abstract_params, self.param_sharding
            )
        self.eval_key = jax.random.key(cfg.trainer.seed + 1)  # every evaluation's sampling key
        self.log = MetricsLog(
            run_dir, cfg.logging.tensorboard, cfg.logging.wandb_project if cfg.logging.wandb else None, to_dict(cfg)
        )

    def encoded(self, split: str, limit: int | None = None) -> dict[str, np.ndarray]:
        """A split (its first ``limit`` rows) as static-shape arrays (:meth:`encode_rows`). Encoded once per
        (split, limit); the pipeline's splits (``sft``, ``train``) are read row by row from ``data.spill_dir``."""
        if (split, limit) in self._encoded:
            return self._encoded[split, limit]
        rows, source = self.splits.rows[split][:limit], self.splits.names[split]
        arrays = self.encode_rows(split, rows, source, split, self.splits.reports.get(split))
        if self.cfg.data.spill_dir and split in ("sft", "train"):
            arrays = spill(arrays, self.cfg.data.spill_dir, split)
        self._encoded[split, limit] = arrays
        return arrays

    def encode_rows(
        self, split: str, rows: list[Any], source: str, key: str, report: DataReport | None = None
    ) -> dict[str, np.ndarray]:
        """``rows`` of ``split`` as the objective encodes them (``sft``: the warm start's; else the preference
        objective's: pairs or lists); bad rows handled by ``data.on_bad_row``. What was kept and skipped, by reason,
        is reported (``source``; ``report``: its reader's so far) under ``key`` in RUN_DIR/data_report.json."""
        objective = build_objective(self.cfg, "sft" if split == "sft" else "preference")
        encode = objective.encode(self.tokenizer, split)
        arrays, report = encode_screened(rows, encode, source, self.cfg.data.on_bad_row, report)
        self.data_reports[key] = report
        if is_writer():
            write_reports(list(self.data_reports.values()), self.run_dir / "data_report.json")
        if report.skipped:
            log.warning(
                "%s: skipped %d of %d rows: %s", report.source, report.rows - report.kept, report.rows, report.skipped
            )
        return arrays

    def pair_scorer(self, graphdef: nnx.GraphDef) -> PairScorer:
        """One pair scorer (one compile per chunk width) per model graph: the full model, or a LoRA view's."""
        if graphdef not in self._scorers:
            self._scorers[graphdef] = PairScorer(graphdef, self.mesh, self.cfg.mesh.rules, self.cfg.trainer.batch_size)
        return self._scorers[graphdef]

    def host_context(self, reference: Any) -> HostContext:
        """What the objective's host-side preparations read, with the frozen ``reference`` params."""
        pairs = self.encoded("eval", self.cfg.eval.num_pairs)
        return HostContext(self.cfg, self.tokenizer, self.graphdef, self.mesh, reference, pairs, self.pair_scorer)

    def evaluator(self, graphdef: nnx.GraphDef) -> Evaluator:
        """The held-out evaluator for models of ``graphdef`` (LoRA: the adapted graph, dropout off)."""
        cfg, splits = self.cfg, self.splits
        pairs = self.encoded("eval", cfg.eval.num_pairs)
        prompts = prompts_of(splits.rows["eval"][: cfg.eval.num_prompts])
        tokens, valid = encode_prompts(prompts, self.tokenizer, cfg.data.max_prompt_length, keep_end=True)
        return Evaluator(
            cfg,
            self.mesh,
            graphdef,
            self.tokenizer,
            pairs,
            (tokens, valid, prompts),
            splits.gold_rewards,
            splits.dimensions,
        )


def open_run(cfg: Config, config_name: str) -> Run:
    """Checks and creates the run directory, builds the :class:`Run`; the writer saves config.yaml and the tokenizer.

    An existing ``checkpoints/`` folder is an error unless ``checkpoint.resume`` (never overwrites an earlier run).
    """
    run_dir = resolve_run_dir(cfg, config_name)
    checkpoint_root = run_dir / "checkpoints"
    if not cfg.checkpoint.resume and checkpoint_root.exists():
        raise RunDirError(
            f"{checkpoint_root}: holds checkpoints of an earlier run; set checkpoint.resume=true to "
            "continue it or choose another run_dir"
        )
    barrier("jaxspo: run directory checked")  # before any process creates checkpoints there
    run_dir.mkdir(parents=True, exist_ok=True)
    run = Run(cfg, run_dir)
    if is_writer():
        dump_yaml(run.cfg, run_dir / "config.yaml")
        run.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    return run
