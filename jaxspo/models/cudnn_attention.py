"""NVIDIA cuDNN fused attention through ``jax.nn.dot_product_attention(implementation="cudnn")``.

The :class:`~jaxspo.models.attention.MaskSpec` becomes the call's own arguments: ``is_causal`` for the
causal rule (T = S, slots ``0..T-1``), a ``[B, 1, 1, S]`` boolean ``mask`` for key validity, and
``local_window_size=(window - 1, 0)`` on sliding layers (a traced per-layer flag picks one of two calls with
``lax.cond``). Packed rows pass their ``[B, 1, T, S]`` mask (cuDNN's segment support cannot express "own
segment or the prompt"). The same arguments are valid for ``implementation="xla"`` (how CPU tests check them).

cuDNN refuses soft-capping (Gemma 2), float32 inputs and head dims that are not a multiple of 8 up to 128
(:func:`cudnn_refusal`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxspo.models.mask_spec import MaskSpec


def cudnn_refusal(platform: str, softcap: float, dtype: str, head_dim: int) -> str | None:
    """Why cuDNN attention cannot run this model on ``platform`` (one clause), or None."""
    if platform != "gpu":
        return f"needs an NVIDIA GPU (this backend is {platform})"
    if softcap:
        return "cuDNN has no attention soft-capping (model.attn_softcap > 0)"
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"cuDNN attention takes bfloat16/float16 only (model.dtype={dtype})"
    if head_dim % 8 or head_dim > 128:
        return f"cuDNN attention needs head_dim a multiple of 8 up to 128 (got {head_dim})"
    return None


def cudnn_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec,
    sliding: bool | jax.Array,
    *,
    scale: float,
    implementation: str = "cudnn",
) -> jax.Array:
    """Attention of q ``[B, T, H, Hd]`` over k/v ``[B, T, K, Hd]`` under ``spec`` -> ``[B, T, H, Hd]``.

    ``implementation`` is passed to ``jax.nn.dot_product_attention`` (``"xla"`` runs the same call on any backend).
    """
    if k.shape[1] != q.shape[1]:
        raise ValueError("model.attention=cudnn: takes self-attention rows only (T = S)")
    if spec.segments is None:
        mask = jnp.asarray(spec.key_valid)[:, None, None, :]  # [B, 1, 1, S]
    else:
        mask = spec.dense(False)[:, None]  # [B, 1, T, S]; the window below applies over positions via a second mask

    def call(window: int) -> jax.Array:
        local = (window - 1, 0) if window and spec.segments is None else None
        masked = mask if not window or spec.segments is None else spec.dense(True)[:, None]
        return jax.nn.dot_product_attention(
            q, k, v, mask=masked, scale=scale, is_causal=True, local_window_size=local, implementation=implementation
        )

    if not spec.window or sliding is False:
        return call(0)
    if sliding is True:
        return call(spec.window)
    return jax.lax.cond(sliding, lambda: call(spec.window), lambda: call(0))
