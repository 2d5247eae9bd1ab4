"""What every runner shares (standard library only: it is imported inside each system's own venv).

A runner trains ``--steps`` DPO steps on the fixture's pairs in the order given by ``--order`` and prints
ONE JSON line (:func:`emit`) with, per step: wall seconds (synchronised), real (non-pad) tokens, padded
tokens actually computed, padded width, loss; plus the time from process start to the end of step 1
(``BENCH_T0``, set by the harness just before it starts the process), the peak RSS and the glibc allocator
variables the process was started with (``MALLOC_*``, ``GLIBC_TUNABLES``: the heap it really ran under).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

T0 = float(os.environ.get("BENCH_T0", time.time()))


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every runner takes (the harness passes the same values to all of them)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--fixture", type=Path, required=True, help="fixture folder of one shape (model/, train.jsonl, tokens.jsonl)"
    )
    p.add_argument(
        "--order", type=Path, required=True, help="JSON list of row indices, batch_size per step, in training order"
    )
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--b1", type=float, default=0.9)
    p.add_argument("--b2", type=float, default=0.999)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--config", required=True, help="the configuration's name (see benchmarks/peers/configs.py)")
    return p


def read_order(path: Path, steps: int, batch_size: int) -> list[list[int]]:
    """Row indices of each step's batch."""
    flat = json.loads(path.read_text())
    if len(flat) < steps * batch_size:
        raise ValueError(f"{path}: {len(flat)} rows cannot fill {steps} steps of {batch_size}")
    return [flat[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StepLog:
    """Collects one row per step; ``end_step`` is called after the step's results are synchronised."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.first_step_done: float | None = None

    def end_step(self, seconds: float, real_tokens: int, padded_tokens: int, width: int, loss: float) -> None:
        if self.first_step_done is None:
            self.first_step_done = time.time()
        self.rows.append(
            {
                "seconds": float(seconds),
                "real_tokens": int(real_tokens),
                "padded_tokens": int(padded_tokens),
                "width": int(width),
                "loss": float(loss),
            }
        )


def emit(system: str, config: str, log: StepLog, reference_in_step: bool, extra: dict[str, Any] | None = None) -> None:
    """Prints the runner's one JSON line."""
    out = {
        "system": system,
        "config": config,
        "reference_in_step": reference_in_step,
        "steps": log.rows,
        "time_to_first_step": (log.first_step_done - T0) if log.first_step_done is not None else None,
        "peak_rss_mib": peak_rss_mib(),
        "allocator_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"},
    }
    print(json.dumps(out | (extra or {})), flush=True)
