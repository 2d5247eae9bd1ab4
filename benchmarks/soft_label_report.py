"""The figure of benchmarks/soft_label_study.py: gold correctness, KL and the soft-label edge against T.

PYTHONPATH=. python benchmarks/soft_label_report.py SUMMARY.json FIGURE.png   (prints the tables in Markdown)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from soft_label_study import FAMILY, HARD  # noqa: E402

METHOD_ORDER = HARD + tuple(FAMILY)  # one colour each
PANELS = (
    ("methods", "eval/gold/correctness", "gold correctness of samples"),
    ("methods", "eval/kl", "KL(πθ ‖ π_ref), nats"),
    ("edge", "eval/gold/correctness", "gold correctness: soft − hard (paired)"),
)


def series(report: dict, part: str, key: str) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Method → (T values, means, 95% half-widths) of ``report["by_temperature"][T][part][method][key]``."""
    out: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for temperature, cell in report["by_temperature"].items():
        for method, metrics in cell[part].items():
            if key not in metrics or metrics[key]["mean"] is None:
                continue
            ts, means, halves = out.setdefault(method, ([], [], []))
            ts.append(float(temperature))
            means.append(metrics[key]["mean"])
            halves.append(metrics[key]["ci95"])
    return out


def plot_study(report: dict, path: Path) -> None:
    """Three panels against the label temperature (log axis), mean ± 95% interval over seeds."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4.2))
    for ax, (part, key, title) in zip(axes, PANELS):
        for method, (ts, means, halves) in series(report, part, key).items():
            place = METHOD_ORDER.index(method)
            shifted = [t * (1.0 + 0.03 * (place % 3 - 1)) for t in ts]  # keep overlapping error bars apart
            ax.errorbar(shifted, means, yerr=halves, marker="o", capsize=3, label=method, color=f"C{place}")
        if part == "edge":
            ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("label temperature T (higher = softer labels)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    counts = [m["eval/gold/correctness"]["n"] for c in report["by_temperature"].values() for m in c["methods"].values()]
    seeds = f"{min(counts)}–{max(counts)}" if min(counts) != max(counts) else str(max(counts))
    steps = f"{report['steps']} steps × {report['batch_size']} pairs"
    fig.suptitle(f"Soft labels on the built-in task: mean ± 95% interval over {seeds} seeds per point, {steps}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(stat: dict, digits: int = 3) -> str:
    """``mean ± 95% half-width (n)``, or a dash without values."""
    if stat["mean"] is None:
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f} ({stat['n']})"


def _edge(edge: dict | None, key: str, digits: int) -> list[str]:
    """The paired soft − hard difference of ``key`` and its p-value as two cells (blank for a hard-label loss)."""
    if edge is None:
        return ["", ""]
    p = edge[key]["p_value"]
    return [_cell(edge[key], digits), "" if p is None else f"{p:.2f}"]


def share_table(report: dict) -> str:
    """Per T: mean p̂ and the shares of ties and of labels below each bound, over the study's training pairs."""
    shares = report["label_shares"]
    bounds = [key for key in next(iter(shares.values())) if key.startswith("below_")]
    below = "".join(f" p̂ < {b.removeprefix('below_')} |" for b in bounds)
    lines = ["| T | mean p̂ | p̂ = ½ (equal rewards) |" + below, "|---:|---:|---:|" + "---:|" * len(bounds)]
    for temperature, share in shares.items():
        cells = [f"{share['mean']:.3f}"] + [f"{100 * share[k]:.1f} %" for k in ["tie", *bounds]]
        lines.append(f"| {temperature} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_tables(report: dict) -> str:
    """Per T and method: gold correctness and KL, and per soft method the paired edge in each with its p-value;
    then each soft method's change of edge from the lowest to the highest T."""
    correctness, kl = "eval/gold/correctness", "eval/kl"
    lines = [
        "| T | method | gold correctness ↑ | KL(πθ ‖ π_ref), nats | Δ correctness (soft − hard) | p | Δ KL | p |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
        f"| — | SFT reference | {_cell(report['reference'][correctness])} | 0 | | | | |",
    ]
    for temperature, cell in report["by_temperature"].items():
        for method, metrics in cell["methods"].items():
            edge = cell["edge"].get(method)
            row = [temperature, f"`{method}`", _cell(metrics[correctness]), _cell(metrics[kl], 2)]
            lines.append("| " + " | ".join(row + _edge(edge, correctness, 3) + _edge(edge, kl, 2)) + " |")
    lines += ["", "| method | Δ correctness at highest T − at lowest T (paired) | p |", "|---|---:|---:|"]
    for method, growth in report["edge_growth"].items():
        p = "" if growth["p_value"] is None else f"{growth['p_value']:.2f}"
        lines.append(f"| `{method}` | {_cell(growth)} | {p} |")
    return "\n".join(lines)


if __name__ == "__main__":
    summary = json.loads(Path(sys.argv[1]).read_text())
    plot_study(summary, Path(sys.argv[2]))
    if "label_shares" in summary:
        print(share_table(summary), end="\n\n")
    print(markdown_tables(summary))
