"""LD-DPO's token weights: each pair's responses count their first s = min(|y_w|, |y_l|) tokens fully, the rest by α.

LD-DPO (Liu et al., arXiv 2409.06411; TRL's ``ld_alpha``) replaces each sequence log-prob, of the policy and of the
reference alike, by Σ_{t ≤ s} log p(y_t) + α Σ_{t > s} log p(y_t), so the longer response's extra tokens weigh
α ∈ [0, 1] (α = 1: plain DPO). The response lengths the losses divide by stay the token counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def desensitising_weights(chosen_mask: jax.Array, rejected_mask: jax.Array, alpha: float) -> jax.Array:
    """Weights ``[2B, T]`` of the chosen-then-rejected rows from their response masks ``[B, T]`` each (token t of a
    row is a response token where the mask is set): 1 on a response's first s tokens, α on the rest, 0 elsewhere."""
    masks = jnp.concatenate([chosen_mask, rejected_mask]).astype(float)  # float32 (float64 with x64 on)
    position = jnp.cumsum(masks, axis=-1)  # 1-based index of each response token
    lengths = masks.sum(-1)
    half = chosen_mask.shape[0]
    shared = jnp.minimum(lengths[:half], lengths[half:])
    shared = jnp.concatenate([shared, shared])[:, None]
    return jnp.where(position <= shared, 1.0, alpha) * masks
