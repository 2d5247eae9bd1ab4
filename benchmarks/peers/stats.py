"""Pure parts of the harness: FLOP counting, step statistics, loss agreement and the report.

FLOPs of one training step (documented in docs/benchmarks.md), over the token positions the
system actually computed (``padded_tokens``: rows × padded width, padding included)::

    trained   = padded_tokens · (6·N + 12·L·W·d_attn)
    reference = padded_tokens · (2·N +  4·L·W·d_attn)      only when the reference runs inside the step

``N`` = matmul weights (all decoder projections + the LM head; no embedding lookup, no norms), ``L`` layers,
``W`` the padded width, ``d_attn`` = heads · head_dim. The attention term counts QKᵀ and AV over the full
``W × W`` square (what dense kernels compute, causal or not). Rematerialisation (gradient checkpointing)
is not counted: the figure is useful work, so recomputation shows as a lower fraction of the peak.
"""

from __future__ import annotations

import statistics
from typing import Any


def step_flops(
    padded_tokens: int, width: int, matmul_params: int, num_layers: int, attention_width: int, reference: bool
) -> float:
    """Useful FLOPs of one DPO step (module docstring)."""
    attention = num_layers * width * attention_width
    per_token = 6.0 * matmul_params + 12.0 * attention
    if reference:
        per_token += 2.0 * matmul_params + 4.0 * attention
    return padded_tokens * per_token


def spread(values: list[float]) -> dict[str, float]:
    """min / median / max of ``values``."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def steady(rows: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
    """The steps from number ``first`` on (1-based), i.e. after the warm-up."""
    if len(rows) < first:
        raise ValueError(f"{len(rows)} steps: none left after the warm-up (steady state starts at step {first})")
    return rows[first - 1 :]


def run_summary(result: dict[str, Any], model: dict[str, int], first_steady: int) -> dict[str, float]:
    """One run's steady-state figures: s/step spread, real and padded tokens/s, achieved FLOP/s."""
    rows = steady(result["steps"], first_steady)
    seconds = sum(r["seconds"] for r in rows)
    flops = sum(
        step_flops(
            r["padded_tokens"],
            r["width"],
            model["matmul"],
            model["num_layers"],
            model["attention_width"],
            result["reference_in_step"],
        )
        for r in rows
    )
    return {
        "seconds_per_step": spread([r["seconds"] for r in rows]),
        "real_tokens_per_second": sum(r["real_tokens"] for r in rows) / seconds,
        "padded_tokens_per_second": sum(r["padded_tokens"] for r in rows) / seconds,
        "flops_per_second": flops / seconds,
        "time_to_first_step": result["time_to_first_step"],
        "peak_rss_mib": result["peak_rss_mib"],
    }


def config_summary(runs: list[dict[str, float]], peak: dict[str, float], precision: str) -> dict[str, Any]:
    """Medians over the repeated runs of one configuration; the FLOP rate also as a fraction of ``peak[precision]``."""
    median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    flops = median("flops_per_second")
    return {
        "runs": len(runs),
        "seconds_per_step": {
            "min": min(r["seconds_per_step"]["min"] for r in runs),
            "median": statistics.median(r["seconds_per_step"]["median"] for r in runs),
            "max": max(r["seconds_per_step"]["max"] for r in runs),
        },
        "real_tokens_per_second": median("real_tokens_per_second"),
        "padded_tokens_per_second": median("padded_tokens_per_second"),
        "time_to_first_step": median("time_to_first_step"),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "flops_per_second": flops,
        "peak_precision": precision,
        "fraction_of_peak": flops / peak[precision] if peak.get(precision) else None,
    }


def loss_agreement(losses: dict[str, list[float]], baseline: str, steps: int = 5) -> dict[str, float | None]:
    """Max |loss − baseline's loss| over steps 1..``steps`` for each configuration (None: no baseline run)."""
    if baseline not in losses:
        return {name: None for name in losses}
    base = losses[baseline][:steps]
    return {name: max(abs(a - b) for a, b in zip(values[:steps], base)) for name, values in losses.items()}
