"""The configurations the harness runs: the issue's peer table and jaxspo's own.

Each entry: ``system`` (runner and venv), ``precision`` (which measured matmul peak its FLOP rate is
compared with; jaxspo's "float32" entries are its exact ones), and for jaxspo the config overrides passed to
``jaxspo.config.load_config`` after the benchmark's own. More jaxspo override sets come from the command line
(``--jaxspo NAME:key=value,key=value``). The heap is not part of a configuration: every one runs under every
heap of ``heaps.py`` (for jaxspo that sets ``trainer.host_heap``, so an override of it is refused).
"""

from __future__ import annotations

from typing import Any

PEERS: dict[str, dict[str, Any]] = {
    "trl_fp32": {"system": "trl", "precision": "float32"},  # reference forward each step, dynamic padding
    "trl_fp32_precomputed": {"system": "trl", "precision": "float32"},  # precompute_ref_log_probs
    "trl_defaults": {"system": "trl", "precision": "bfloat16"},  # bf16 autocast + gradient checkpointing
    "tunix_fp32": {"system": "tunix", "precision": "float32"},  # pads prompt to 64 + response to 64
    "tunix_bf16": {"system": "tunix", "precision": "bfloat16"},  # bf16 weights
}

BUCKETED = [
    "data.layout=packed",
    "data.auto_buckets=4",
]  # prompt once per pair, 4 packed widths chosen from the data (docs/speed.md)
PACKED = BUCKETED + ["model.scan_unroll=8"]  # + the layers unrolled: the fastest exact fp32 setting

JAXSPO: dict[str, list[str]] = {
    "jaxspo_resident": [],  # padded rows, the reference forward inside each step
    "jaxspo_precomputed": ["loss.reference=precomputed"],  # one scoring pass before step 1
    "jaxspo_packed": PACKED,
    "jaxspo_packed_precomputed": PACKED + ["loss.reference=precomputed"],
    "jaxspo_packed_bf16": PACKED + ["model.dtype=bfloat16"],  # bf16 compute, fp32 master weights (not exact)
    "jaxspo_packed_bf16_precomputed": PACKED + ["model.dtype=bfloat16", "loss.reference=precomputed"],
    "jaxspo_packed_remat": BUCKETED
    + ["model.remat=true"],  # rolled layer scan, each layer recomputed: the low-memory exact setting
}

HEAP_KEY = "trainer.host_heap"
LOSS_BASELINE = "trl_fp32"  # steps 1-5 of every configuration are compared with this one's losses


def parse_jaxspo_flag(text: str) -> tuple[str, list[str]]:
    """``NAME:key=value,key=value`` → (name, overrides); a value holding commas can use ``;`` as the separator."""
    name, sep, rest = text.partition(":")
    if not sep or not name or "@" in name:
        raise ValueError(f"--jaxspo {text!r}: expected NAME:key=value[,key=value...] (NAME without '@')")
    parts = [p.strip() for p in rest.split(";" if ";" in rest else ",") if p.strip()]
    bad = [p for p in parts if "=" not in p]
    if bad:
        raise ValueError(f"--jaxspo {text!r}: {bad} are not key=value overrides")
    if any(p.replace(" ", "").startswith(HEAP_KEY + "=") for p in parts):
        raise ValueError(f"--jaxspo {text!r}: {HEAP_KEY} is the harness's heap dimension; choose heaps with --heaps")
    return name if name.startswith("jaxspo") else f"jaxspo_{name}", parts


def jaxspo_precision(overrides: list[str]) -> str:
    """The reduced dtype (e.g. bfloat16) the overrides set for ``model.dtype`` or ``model.param_dtype``, else
    float32 (an exact configuration)."""
    for override in overrides:
        key, _, value = override.replace(" ", "").partition("=")
        if key in ("model.dtype", "model.param_dtype") and value != "float32":
            return value
    return "float32"


def all_configs(extra: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Every configuration by name: the peers, jaxspo's ``JAXSPO`` table and ``extra``."""
    table = dict(PEERS)
    for name, overrides in (JAXSPO | extra).items():
        table[name] = {"system": "jaxspo", "precision": jaxspo_precision(overrides), "overrides": overrides}
    return table
