"""Run-directory metric sinks: metrics.jsonl (always), TensorBoard and Weights & Biases (optional), a PNG of the
curves."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxspo.distributed import is_writer

PLOTTED = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "eval/rewards/accuracies",
    "eval/logps_accuracy",
    "eval/gold/correctness",
    "eval/kl",
    "perf/tokens_per_second",
    "perf/mfu",
)


def start_wandb(project: str, run_dir: Path, config: dict[str, Any]) -> Any:
    """A W&B run named after the run directory (``wandb`` imported only here; a resumed run continues
    the same W&B run, its id derived from the run directory's absolute path)."""
    try:
        import wandb
    except ImportError:
        raise ImportError("logging.wandb is true but the wandb package is not installed (pip install wandb)") from None
    run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir), config=config)


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors it to TensorBoard and W&B.

    W&B gets ``{"phase/metric": value, "phase/step": step}`` (its own step counter increases across
    phases). In a multi-process run only process 0 writes; on the others every method but reading is a no-op.
    """

    def __init__(
        self, run_dir: Path, tensorboard: bool, wandb_project: str | None = None, config: dict[str, Any] | None = None
    ):
        self.path = run_dir / "metrics.jsonl"
        self.writer = is_writer()
        self._file = self.path.open("a") if self.writer else None
        self._tb = None
        if tensorboard and self.writer:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self._wandb = start_wandb(wandb_project, run_dir, config or {}) if wandb_project and self.writer else None

    def log(self, phase: str, step: int, metrics: dict[str, float]) -> None:
        """Writes ``{"phase", "step", **metrics}``; TensorBoard tags are ``phase/metric``."""
        if not self.writer:
            return
        row: dict[str, Any] = {"phase": phase, "step": step}
        row.update({k: float(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in metrics.items():
                if math.isfinite(float(value)):
                    self._tb.add_scalar(f"{phase}/{name}", float(value), step)
        if self._wandb is not None:
            self._wandb.log(
                {f"{phase}/{name}": float(value) for name, value in metrics.items()} | {f"{phase}/step": step}
            )

    def truncate(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrites metrics.jsonl with only the rows ``keep`` accepts (used when a run resumes).

        The new file replaces the old one atomically, so a reader never sees it half written.
        """
        if not self.writer:
            return
        self._file.close()
        rows = read_metrics(self.path)
        partial = self.path.with_suffix(".jsonl.tmp")
        partial.write_text("".join(json.dumps(r) + "\n" for r in rows if keep(r)))
        os.replace(partial, self.path)
        self._file = self.path.open("a")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def logged_eval(metrics_path: Path, step: int) -> dict[str, float] | None:
    """The evaluation logged at ``step`` by an earlier (interrupted) process of this run, if any."""
    rows = (
        [r for r in read_metrics(metrics_path) if r["phase"] == "eval" and r["step"] == step]
        if metrics_path.exists()
        else []
    )
    return {k: v for k, v in rows[-1].items() if k not in ("phase", "step")} if rows else None


def plot_curves(metrics_path: Path, png_path: Path) -> bool:
    """One panel per metric in :data:`PLOTTED` that was logged, one line per phase; False if none was."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    names = [n for n in PLOTTED if any(n in r for r in rows)]
    if not names:
        return False
    cols = min(3, len(names))
    fig, axes = plt.subplots(
        math.ceil(len(names) / cols), cols, figsize=(4.5 * cols, 3.2 * math.ceil(len(names) / cols)), squeeze=False
    )
    for ax, name in zip(axes.flat, names):
        for phase in dict.fromkeys(r["phase"] for r in rows):
            points = [(r["step"], r[name]) for r in rows if r["phase"] == phase and name in r]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 20 else None, label=phase)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True
