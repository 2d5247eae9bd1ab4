"""The configurations the harness runs: the issue's peer table and jaxspo's own.

Each entry: ``system`` (runner and venv), ``precision`` (which measured matmul peak its FLOP rate is
compared with), optionally ``runner_config`` (the runner's configuration, default the entry's name) and
``env`` (set on top of the harness's allocator settings), and for jaxspo the config overrides passed to
``jaxspo.config.load_config`` after the benchmark's own. More jaxspo override sets come from the command line
(``--jaxspo NAME:key=value,key=value``).
"""

from __future__ import annotations

from typing import Any

from jaxspo.host_memory import held_heap_environment

HELD_HEAP_ENV = held_heap_environment()  # glibc as jaxspo's trainer.host_heap=hold sets it, for a peer by its environment

PEERS: dict[str, dict[str, Any]] = {
    "trl_fp32": {"system": "trl", "precision": "float32"},  # reference forward each step, dynamic padding
    "trl_fp32_held_heap": {"system": "trl", "precision": "float32", "runner_config": "trl_fp32", "env": HELD_HEAP_ENV},
    "trl_fp32_precomputed": {"system": "trl", "precision": "float32"},  # precompute_ref_log_probs
    "trl_defaults": {"system": "trl", "precision": "bfloat16"},  # bf16 autocast + gradient checkpointing
    "tunix_fp32": {"system": "tunix", "precision": "float32"},  # pads prompt to 64 + response to 64
    "tunix_bf16": {"system": "tunix", "precision": "bfloat16"},  # bf16 weights
    "tunix_fp32_held_heap": {"system": "tunix", "precision": "float32", "runner_config": "tunix_fp32", "env": HELD_HEAP_ENV},
}

BUCKETED = ["data.layout=packed", "data.auto_buckets=4"]  # prompt once per pair, 4 packed widths chosen from the data (docs/speed.md)
PACKED = BUCKETED + ["model.scan_unroll=8"]  # + the layers unrolled: the fastest exact fp32 setting

JAXSPO: dict[str, list[str]] = {
    "jaxspo_resident": [],  # padded rows, the reference forward inside each step
    "jaxspo_precomputed": ["loss.reference=precomputed"],  # one scoring pass before step 1
    "jaxspo_packed": PACKED,
    "jaxspo_packed_held": PACKED + ["trainer.host_heap=hold"],  # glibc keeps freed memory mapped, steps paced (faster on CPU)
    "jaxspo_packed_precomputed": PACKED + ["loss.reference=precomputed"],
    "jaxspo_packed_precomputed_held": PACKED + ["loss.reference=precomputed", "trainer.host_heap=hold"],
    "jaxspo_packed_bf16": PACKED + ["model.dtype=bfloat16"],  # bf16 compute, fp32 master weights (not exact)
    "jaxspo_packed_bf16_precomputed": PACKED + ["model.dtype=bfloat16", "loss.reference=precomputed"],
    "jaxspo_packed_remat": BUCKETED + ["model.remat=true"],  # rolled layer scan, each layer recomputed: the low-memory exact setting
}

LOSS_BASELINE = "trl_fp32"  # steps 1-5 of every configuration are compared with this one's losses


def parse_jaxspo_flag(text: str) -> tuple[str, list[str]]:
    """``NAME:key=value,key=value`` → (name, overrides); a value holding commas can use ``;`` as the separator."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise ValueError(f"--jaxspo {text!r}: expected NAME:key=value[,key=value...]")
    parts = [p.strip() for p in rest.split(";" if ";" in rest else ",") if p.strip()]
    bad = [p for p in parts if "=" not in p]
    if bad:
        raise ValueError(f"--jaxspo {text!r}: {bad} are not key=value overrides")
    return name if name.startswith("jaxspo") else f"jaxspo_{name}", parts


def jaxspo_precision(overrides: list[str]) -> str:
    """bfloat16 when the overrides set a bf16 compute dtype, else float32."""
    return "bfloat16" if any(o.replace(" ", "").startswith("model.dtype=bfloat16") for o in overrides) else "float32"


def all_configs(extra: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Every configuration by name: the peers, jaxspo's ``JAXSPO`` table and ``extra``."""
    table = dict(PEERS)
    for name, overrides in (JAXSPO | extra).items():
        table[name] = {"system": "jaxspo", "precision": jaxspo_precision(overrides), "overrides": overrides}
    return table
