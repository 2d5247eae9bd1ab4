"""Model FLOPs of a training step, device peak FLOP/s and MFU (imports no flax; the counting needs no jax).

**What is counted** (model FLOPs, as MaxText and PaLM count them for MFU; a multiply-add is 2 FLOPs):

- Weight matmuls of every computed token slot (padding inside the computed width included; a shorter
  bucket computes fewer): per layer the q, k, v, o projections (grouped-query: k and v have K heads) and
  the MLP (gate, up, down; or up, down), and the LM head on the slots whose logits are computed.
- Attention: per layer and (query, key) pair, ``4·H·Hd`` (QKᵀ and PV). The pairs are those a query may
  see: a padded row counts the causal triangle over its computed width (slot t sees t + 1 keys); a packed
  row ``[prompt, chosen, rejected]`` counts, for each valid token at position p, the p + 1 keys of its own
  view (the prompt and its own response up to it; the other response is never seen; padding slots see
  nothing). On sliding-window layers a query sees at most ``window`` keys.
- Backward = 2 × forward for every pass whose weights train; a pass through frozen weights (LoRA's base)
  computes activation gradients only: 1 × its weight matmuls, 2 × its attention. A reference forward has
  no backward. Norms, RoPE, softmax, biases and LoRA's rank-r adapters are not counted.
- Remat's recomputed forward is hardware work, not model work, so MFU leaves it out; :func:`recomputed_flops`
  gives it for a hardware-FLOPs figure.

**Peak FLOP/s**: :data:`DEVICE_PEAKS` (vendor figures, dense, per device) matched on
``jax.devices()[0].device_kind``; on CPU, :func:`measured_cpu_peak` times a matmul in the compute dtype once
per process. MFU = model FLOPs per second ÷ (peak per device × devices); on CPU every process's devices
share its cores, so the denominator is the measured peak × processes.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

BACKWARDS = ("none", "frozen", "full")


@dataclasses.dataclass(frozen=True)
class Forward:
    """One batched pass of the decoder over some rows, in counts summed over its rows (global batch).

    ``slots``: token slots computed (rows × computed width); ``head_slots``: slots whose logits are
    computed; ``pairs`` / ``window_pairs``: (query, key) pairs seen on full / sliding-window layers;
    ``backward``: "none" (forward only), "frozen" (activation gradients through frozen weights) or "full".
    """

    slots: float
    head_slots: float
    pairs: float
    window_pairs: float
    backward: str = "full"

    def __post_init__(self) -> None:
        if self.backward not in BACKWARDS:
            raise ValueError(f"Forward.backward must be one of {BACKWARDS}, got {self.backward!r}")

    def scaled(self, factor: float) -> "Forward":
        """The counts × ``factor`` (this process's rows → the global batch)."""
        return Forward(
            self.slots * factor,
            self.head_slots * factor,
            self.pairs * factor,
            self.window_pairs * factor,
            self.backward,
        )

    def forward_only(self) -> "Forward":
        """The same rows without a backward (a frozen reference's pass)."""
        return dataclasses.replace(self, backward="none")


def layer_matmul_flops(cfg: Any) -> int:
    """Forward FLOPs per token of one layer's weight matmuls: q/o ``D·H·Hd`` each, k/v ``D·K·Hd`` each, MLP
    ``(3|2)·D·F``."""
    d, h, k, hd, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim, cfg.intermediate_size
    return 2 * (2 * d * h * hd + 2 * d * k * hd + (3 if cfg.gated_mlp else 2) * d * f)


def head_flops(cfg: Any) -> int:
    """Forward FLOPs of the LM head per token: ``2·D·V``."""
    return 2 * cfg.hidden_size * cfg.vocab_size


def attention_pair_flops(cfg: Any) -> int:
    """Forward FLOPs of one layer per (query, key) pair: QKᵀ and PV, ``2·Hd`` each per query head."""
    return 4 * cfg.num_heads * cfg.resolved_head_dim


def _layer_counts(cfg: Any) -> tuple[int, int]:
    """(full-attention layers, sliding-window layers)."""
    sliding = sum(cfg.sliding_layers) if cfg.sliding_window else 0
    return cfg.num_layers - sliding, sliding


def forward_flops(cfg: Any, f: Forward) -> tuple[float, float]:
    """(weight-matmul FLOPs, attention FLOPs) of ``f``'s forward alone."""
    full, sliding = _layer_counts(cfg)
    matmuls = f.slots * cfg.num_layers * layer_matmul_flops(cfg) + f.head_slots * head_flops(cfg)
    attention = (f.pairs * full + f.window_pairs * sliding) * attention_pair_flops(cfg)
    return float(matmuls), float(attention)


def model_flops(cfg: Any, forwards: Iterable[Forward]) -> float:
    """Model FLOPs of the passes: forward, plus their backward (see the module docstring)."""
    total = 0.0
    for f in forwards:
        matmuls, attention = forward_flops(cfg, f)
        weight_factor, attention_factor = {"none": (1, 1), "frozen": (2, 3), "full": (3, 3)}[f.backward]
        total += weight_factor * matmuls + attention_factor * attention
    return total


def recomputed_flops(cfg: Any, forwards: Iterable[Forward]) -> float:
    """FLOPs remat adds: the layers' forward again for passes with a backward (``model.remat``, policy
    ``full``; ``dots_no_batch`` recomputes attention's batched dots only, ``dots`` no matmul)."""
    if not cfg.remat or cfg.remat_policy == "dots":
        return 0.0
    total = 0.0
    for f in forwards:
        if f.backward == "none":
            continue
        matmuls, attention = forward_flops(cfg, f)
        layers = matmuls - f.head_slots * head_flops(cfg)
        total += attention + (layers if cfg.remat_policy == "full" else 0.0)
    return total


def causal_pairs(width: int, window: int = 0) -> int:
    """(query, key) pairs of the causal triangle over ``width`` slots, at most ``window`` keys per query (0: no
    limit)."""
    if not window or window >= width:
        return width * (width + 1) // 2
    return window * (window + 1) // 2 + (width - window) * window


def padded_forward(cfg: Any, rows: int, width: int, head_slots_per_row: int, backward: str) -> Forward:
    """A pass over ``rows`` padded rows of ``width`` slots (causal over the computed width)."""
    return Forward(
        rows * width,
        rows * head_slots_per_row,
        rows * causal_pairs(width),
        rows * causal_pairs(width, cfg.sliding_window),
        backward,
    )


def packed_forward(cfg: Any, positions: np.ndarray, valid: np.ndarray, backward: str) -> Forward:
    """A pass over packed pair rows ``[B, W]`` (:mod:`jaxspo.data.layout`): a valid token at position p
    sees p + 1 keys (its prompt and its own response up to it); the LM head runs on every slot."""
    seen = np.where(valid, np.asarray(positions, np.int64) + 1, 0)  # [B, W] keys per query
    windowed = np.minimum(seen, cfg.sliding_window) if cfg.sliding_window else seen
    return Forward(valid.size, valid.size, float(seen.sum()), float(windowed.sum()), backward)


# Dense peak FLOP/s per device from the vendors' spec sheets: (substring of device_kind, bfloat16, float32).
# float32 is a float32 dot at JAX's default precision: one bf16 pass on TPU, TF32 on NVIDIA tensor cores.
# Sparse figures in NVIDIA's sheets are halved to dense. Order matters: the first substring found wins.
TFLOP = 1e12
DEVICE_PEAKS: tuple[tuple[str, float, float], ...] = (
    (
        "TPU v4",
        275 * TFLOP,
        275 * TFLOP,
    ),  # cloud.google.com/tpu/docs/v4: 275 TFLOPS bf16 per chip (one device per chip)
    ("TPU v5 lite", 197 * TFLOP, 197 * TFLOP),  # v5e, cloud.google.com/tpu/docs/v5e: 197 TFLOPS bf16 per chip
    ("TPU v5e", 197 * TFLOP, 197 * TFLOP),
    ("TPU v5", 459 * TFLOP, 459 * TFLOP),  # v5p ("TPU v5"), cloud.google.com/tpu/docs/v5p: 459 TFLOPS bf16 per chip
    (
        "TPU v6 lite",
        918 * TFLOP,
        918 * TFLOP,
    ),  # v6e (Trillium), cloud.google.com/tpu/docs/v6e: 918 TFLOPS bf16 per chip
    ("TPU v6e", 918 * TFLOP, 918 * TFLOP),
    ("A100", 312 * TFLOP, 156 * TFLOP),  # NVIDIA A100 datasheet: BF16 312, TF32 156 TFLOPS dense (SXM and PCIe)
    ("H100 PCIe", 756 * TFLOP, 378 * TFLOP),  # NVIDIA H100 datasheet, PCIe: BF16 1,513 / TF32 756 sparse
    ("H100 NVL", 835.5 * TFLOP, 417.5 * TFLOP),  # NVIDIA H100 datasheet, NVL: BF16 1,671 / TF32 835 sparse
    ("H100", 989.5 * TFLOP, 494.5 * TFLOP),  # NVIDIA H100 datasheet, SXM: BF16 1,979 / TF32 989 sparse
    ("H200 NVL", 835.5 * TFLOP, 417.5 * TFLOP),  # NVIDIA H200 datasheet, NVL: BF16 1,671 / TF32 835 sparse
    ("H200", 989.5 * TFLOP, 494.5 * TFLOP),  # NVIDIA H200 datasheet, SXM: BF16 1,979 / TF32 989 sparse
    ("B200", 2250 * TFLOP, 1125 * TFLOP),  # NVIDIA HGX B200 sheet: BF16 36 / TF32 18 PFLOPS sparse for 8 GPUs
)
# `jaxspo compile` topology generations → the device_kind their devices report.
TOPOLOGY_DEVICE_KINDS = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5", "v6e": "TPU v6 lite"}


def device_peak(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one device of ``device_kind`` for compute ``dtype`` (None: not in the table)."""
    for name, low, full in DEVICE_PEAKS:
        if name.lower() in device_kind.lower():
            return full if str(dtype) == "float32" else low
    return None


@functools.cache
def measured_cpu_peak(dtype: str, size: int = 512, repeats: int = 10) -> float:
    """FLOP/s of this process's CPU: the best of ``repeats`` jitted ``size``³ matmuls in ``dtype`` (float32
    accumulation, as the model's projections), once per process and dtype (≈ 0.2–0.6 s on 2 cores)."""
    import jax
    import jax.numpy as jnp

    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    a = jnp.ones((size, size), dtype)
    matmul(a, a).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def throughput(
    real_tokens: float, computed_tokens: float, flops: float, seconds: float, steps: int, peak: float | None
) -> dict[str, float]:
    """The ``perf/*`` metrics of ``steps`` steps that took ``seconds`` of wall time: real (non-pad) and computed
    tokens, model FLOPs and MFU against ``peak`` FLOP/s of all devices (no ``perf/mfu`` when it is None)."""
    seconds = max(seconds, 1e-9)
    out = {
        "perf/seconds_per_step": seconds / steps,
        "perf/tokens_per_second": real_tokens / seconds,
        "perf/computed_tokens_per_second": computed_tokens / seconds,
        "perf/model_flops_per_second": flops / seconds,
    }
    return out | ({"perf/mfu": flops / seconds / peak} if peak else {})


def run_peak(dtype: str, per_device: float = 0.0) -> tuple[float | None, str]:
    """(peak FLOP/s of all the run's devices, where it came from). ``per_device`` > 0 (``logging.peak_flops``)
    overrides: × devices on accelerators, × processes on CPU. Otherwise accelerators: table × devices; CPU:
    measured × processes (a process's CPU devices share its cores); (None, kind) for an unknown accelerator."""
    import jax

    device = jax.devices()[0]
    units = jax.process_count() if device.platform == "cpu" else jax.device_count()
    if per_device > 0:
        return per_device * units, "logging.peak_flops"
    if device.platform == "cpu":
        return measured_cpu_peak(str(dtype)) * units, "measured"
    from_table = device_peak(device.device_kind, dtype)
    return (None if from_table is None else from_table * units), device.device_kind
