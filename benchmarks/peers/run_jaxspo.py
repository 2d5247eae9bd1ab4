"""jaxspo runner: the preference phase of ``jaxspo train`` on the fixture, SFT and evaluation skipped.

    python benchmarks/peers/run_jaxspo.py --fixture DIR --order ORDER.json --config resident [key=value ...]

The run is built by the same code as ``jaxspo train`` (``jaxspo.train.run`` and ``jaxspo.train.phase``: the HF folder
through jaxspo's loader, the JSONL pairs through jaxspo's data path and screening, the optimiser, state and
``make_train_step``, the precomputed-reference pass when ``loss.reference=precomputed``, the compile of every
bucket width before step 1, and each step through ``Phase.take_step``); only the loop is the runner's own, to
time each step with ``block_until_ready``. The batches come from jaxspo's iterator;
the rows it trained are compared with ``--order`` (the peers' order) and reported as ``same_order``.
Trailing ``key=value`` arguments are jaxspo config overrides applied last (e.g. ``model.dtype=bfloat16``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runner_common
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's jaxspo

from runner_common import StepLog, emit, parser, read_order  # noqa: E402


def base_overrides(args, work: Path) -> list[str]:
    """The benchmark's settings as jaxspo config overrides (DPO, constant lr, plain AdamW, no clipping)."""
    return [
        f"model.path={args.fixture / 'model'}",
        "data.source.kind=jsonl",
        f"data.source.path={args.fixture}/{{split}}.jsonl",
        f"data.max_length={args.max_length}",
        f"data.max_prompt_length={args.max_length // 2}",
        "trainer.sft_steps=0",
        f"trainer.steps={args.steps}",
        f"trainer.batch_size={args.batch_size}",
        "trainer.eval_every=0",
        f"optimizer.learning_rate={args.lr}",
        "optimizer.warmup_steps=0",
        "optimizer.schedule=constant",
        f"optimizer.b1={args.b1}",
        f"optimizer.b2={args.b2}",
        f"optimizer.eps={args.eps}",
        f"optimizer.weight_decay={args.weight_decay}",
        "optimizer.max_grad_norm=0",
        "loss.terms={dpo: 1.0}",
        f"loss.beta={args.beta}",
        "loss.reference=resident",
        f"loss.reference_cache_dir={work / 'reference_cache'}",
        "mesh.data=1",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "logging.plot=false",
        "checkpoint.every_steps=0",
        "checkpoint.save_final=false",
        f"run_dir={work / 'run'}",
    ]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("overrides", nargs="*", help="jaxspo config overrides key=value, applied after the benchmark's")
    args = p.parse_args()
    import jax

    from jaxspo.config import load_config
    from jaxspo import host_memory
    from jaxspo.lora.choose import preference_view
    from jaxspo.objectives import build_objective
    from jaxspo.train.phase import Phase
    from jaxspo.train.run import Run

    order = read_order(args.order, args.steps, args.batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-jaxspo-") as tmp:
        work = Path(tmp)
        cfg = load_config(None, base_overrides(args, work) + list(args.overrides))
        host_memory.install(cfg.trainer.host_heap)  # as ``jaxspo train`` does, before the first device use
        (work / "run").mkdir()
        run = Run(cfg, work / "run")
        cfg = run.cfg
        reference = run.params
        train = run.encoded("train")  # prepared as the loop does (e.g. the reference's log-probs, precomputed)
        arrays = train | build_objective(cfg).prepare(run.host_context(reference), train).fields
        view = preference_view(run, reference)  # the model view the loop trains (full, or LoRA adapters)
        phase = Phase(
            run, "preference", cfg.trainer.steps, cfg.optimizer.learning_rate, cfg.trainer.batch_size, arrays, view
        )
        frozen = view.frozen if phase.step.reference_sharding is not None else None
        phase.precompile(frozen)  # as the loop does before step 1 (trainer.precompile)
        log, trained_rows = StepLog(), []
        for i in range(1, len(order) + 1):
            start = time.perf_counter()
            trained_rows.append(phase.batches.rows(phase.batches.step).tolist())
            metrics, host = phase.take_step(
                i, frozen
            )  # jaxspo's own batching (bucketing or whatever the config selects)
            metrics = jax.block_until_ready(metrics)
            seconds = time.perf_counter() - start
            width = max(int(v.shape[1]) for k, v in host.items() if k.endswith("_tokens"))
            padded = sum(int(v.size) for k, v in host.items() if k.endswith("_tokens"))
            log.end_step(seconds, int(metrics["tokens"]), padded, width, float(metrics["loss"]))
        run.log.close()
    emit(
        "jaxspo",
        args.config,
        log,
        frozen is not None,
        {
            "overrides": list(args.overrides),
            "same_order": trained_rows == order,
            "jax": jax.__version__,
            "devices": len(jax.devices()),
        },
    )


if __name__ == "__main__":
    main()
