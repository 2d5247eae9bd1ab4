"""Run-directory metric sinks: metrics.jsonl (always), TensorBoard (optional), a PNG of the curves."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxspo.distributed import is_writer

PLOTTED = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "eval/rewards/accuracies",
    "eval/logps_accuracy", "eval/gold/correctness", "eval/kl", "tokens_per_second",
)


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors it to TensorBoard.

    In a multi-process run only process 0 writes; on the others every method but reading is a no-op.
    """

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = run_dir / "metrics.jsonl"
        self.writer = is_writer()
        self._file = self.path.open("a") if self.writer else None
        self._tb = None
        if tensorboard and self.writer:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(4.5 * cols, 3.2 * math.ceil(len(names) / cols)), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for phase in dict.fromkeys(r["phase"] for r in rows):
            points = [(r["step"], r[name]) for r in rows if r["phase"] == phase and name in r]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 20 else None, label=phase)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True
