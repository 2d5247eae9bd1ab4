"""The benchmark's headline: jaxspo at its best over the fastest peer configuration, on one shape.

Every configuration runs under every heap (``heaps.py``); a run is one (configuration, heap) pair with its
summary (``stats.config_summary``: median real tokens/s over the rounds, time to the end of step 1, peak RSS).
The headline takes the maximum of real tokens/s over all peer configurations and heaps (TRL and Tunix alike)
and divides jaxspo's best by it, twice: over jaxspo's exact fp32 configurations only, and over any jaxspo
configuration. ``by_peer`` gives the same per peer system.
"""

from __future__ import annotations

from typing import Any

SPEED = "real_tokens_per_second"


def pick(run: dict[str, Any]) -> dict[str, Any]:
    """What the headline shows of one run."""
    return {
        k: run.get(k) for k in ("system", "config", "heap", "precision", SPEED, "time_to_first_step", "peak_rss_mib")
    }


def fastest(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run with the most real tokens/s (None when ``runs`` is empty)."""
    return pick(max(runs, key=lambda r: r[SPEED])) if runs else None


def versus(mine: dict[str, Any] | None, peer: dict[str, Any] | None) -> dict[str, Any]:
    """``{jaxspo_best, fastest_peer, ratio}``; ratio None when either side has no successful run."""
    ratio = mine[SPEED] / peer[SPEED] if mine and peer else None
    return {"jaxspo_best": mine, "fastest_peer": peer, "ratio": ratio}


def shape_headline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``runs``: one summary per successful (configuration, heap) with ``system``, ``config``, ``heap``,
    ``precision`` and real tokens/s. ``exact_fp32`` considers only jaxspo runs of precision float32."""
    jaxspo = [r for r in runs if r["system"] == "jaxspo"]
    peers = [r for r in runs if r["system"] != "jaxspo"]
    best_exact = fastest([r for r in jaxspo if r["precision"] == "float32"])
    best_any, best_peer = fastest(jaxspo), fastest(peers)
    by_peer = {}
    for system in sorted({r["system"] for r in peers}):
        peer = fastest([r for r in peers if r["system"] == system])
        by_peer[system] = {
            "exact_fp32": versus(best_exact, peer)["ratio"],
            "any_config": versus(best_any, peer)["ratio"],
            "fastest": peer,
        }
    return {"exact_fp32": versus(best_exact, best_peer), "any_config": versus(best_any, best_peer), "by_peer": by_peer}
