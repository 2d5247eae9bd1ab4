"""Rotary position embeddings in the HF "rotate half" layout, with linear and Llama 3 frequency scaling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxspo.models.config import RopeScaling

_F32 = jnp.float32


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """``[Hd/2]`` float32 inverse frequencies, as transformers computes them for ``scaling.type``."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    inv_freq = inv_freq.astype(np.float32)
    if scaling.type == "linear":
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    if scaling.type != "llama3":
        return inv_freq
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(positions: jax.Array, inv_freq: Sequence[float]) -> tuple[jax.Array, jax.Array]:
    """cos, sin tables ``[B, T, Hd]`` (float32) for integer ``positions [B, T]`` and ``inv_freq [Hd/2]``."""
    angles = positions[..., None].astype(_F32) * jnp.asarray(inv_freq)  # [B, T, Hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, Hd]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x [B, T, N, Hd]`` by the tables ``[B, T, Hd]``."""
    x32 = x.astype(_F32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)
