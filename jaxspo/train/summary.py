"""The before/after table printed at the end of a run (and saved as summary.md)."""

from __future__ import annotations

ROWS = (
    ("eval/logps_accuracy", "held-out preference accuracy, log πθ(y_w) > log πθ(y_l)"),
    ("eval/rewards/accuracies", "held-out implicit-reward accuracy (TRL rewards/accuracies)"),
    ("eval/rewards/margins", "held-out reward margin β·h"),
    ("eval/gold/correctness", "gold correctness of sampled responses"),
    ("eval/gold/brevity", "gold brevity of sampled responses"),
    ("eval/kl", "KL(πθ ‖ π_ref) per sampled response, nats"),
    ("eval/response_tokens", "sampled response length, tokens"),
)


def summary_table(before: dict[str, float], after: dict[str, float], after_name: str) -> str:
    """Markdown table of the metrics present in both evaluations."""
    lines = [f"| metric | before (SFT reference) | after {after_name} |", "|---|---:|---:|"]
    for key, label in ROWS:
        if key in before and key in after:
            lines.append(f"| {label} | {before[key]:.3f} | {after[key]:.3f} |")
    return "\n".join(lines)
