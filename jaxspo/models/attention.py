"""Attention kernels behind one switch (``model.attention``), all driven by a :class:`MaskSpec`.

Shapes: B batch, T query length, S key length, H query heads, K key/value heads (G = H // K queries per
key/value head), Hd head dim. Query head ``h`` reads key/value head ``h // G`` (HF ``repeat_kv`` order).

A :class:`~jaxspo.models.mask_spec.MaskSpec` says which keys each query may see without materialising a
``[B, T, S]`` mask; an implementation builds only what it needs from it (``xla`` the dense mask, block kernels
per block).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

from jaxspo.models.chunked_attention import chunked_attention
from jaxspo.models.config import ModelConfig
from jaxspo.models.mask_spec import MaskSpec
from jaxspo.models.cudnn_attention import cudnn_attention, cudnn_refusal
from jaxspo.models.splash_attention import splash_attention, splash_refusal
from jaxspo.models.projection import project  # the bf16-operand dot of every projection
from jaxspo.models.target import target_platform

_F32 = jnp.float32


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, softcap: float) -> jax.Array:
    """Reference grouped-query attention over a dense mask. q ``[B, T, H, Hd]``, k/v ``[B, S, K, Hd]``,
    mask ``[B, T, S]`` -> ``[B, T, H, Hd]``.

    Scores are multiplied by ``scale``, soft-capped to ``(-softcap, softcap)`` when ``softcap`` > 0, masked and
    softmaxed in float32 (the full ``[B, K, G, T, S]`` score tensor is materialised).
    """

    b, t, h, hd = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, hd)  # [B, T, K, G, Hd]
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=_F32) * scale  # [B, K, G, T, S]
    if softcap:
        scores = softcap * jnp.tanh(scores / softcap)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(_F32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = project("bkgts,bskd->btkgd", probs, v, v.dtype)  # [B, T, K, G, Hd]
    return out.reshape(b, t, h, hd)


IMPLEMENTATIONS = ("xla", "chunked", "splash", "cudnn")
# auto off TPU/GPU: dense up to one block, then 5-10x faster than xla on CPU (benchmarks/attention_memory.py)
CPU_AUTO = "chunked"
DEFAULT_BLOCK = (
    128  # model.attention_block default: the fastest chunked block on CPU at T = 1K-4K (benchmarks/attention_memory.py)
)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec,
    sliding: bool | jax.Array,
    *,
    scale: float,
    softcap: float,
    implementation: str = "xla",
    block: int = DEFAULT_BLOCK,
) -> jax.Array:
    """Attention of q ``[B, T, H, Hd]`` over k/v ``[B, S, K, Hd]`` under ``spec`` -> ``[B, T, H, Hd]``.

    ``sliding`` (possibly traced, per layer under the layer scan) applies ``spec.window``.
    ``implementation`` is a resolved name from :data:`IMPLEMENTATIONS` (never ``auto``); ``block`` is the block
    kernels' block size (queries and keys). Packed rows (``spec.segments``) under ``splash`` run the cascade
    of :mod:`jaxspo.models.splash_cascade`, and ``chunked`` runs the dense ``xla`` kernel when the rows fit in
    one block (T, S <= ``block``).
    """
    if implementation == "chunked" and max(q.shape[1], k.shape[1]) <= block:
        implementation = "xla"  # one block: nothing to stream or skip (and as fast on CPU at T = 128)
    if implementation == "xla":
        return xla_attention(q, k, v, spec.dense(sliding), scale, softcap)
    if implementation == "chunked":
        return chunked_attention(q, k, v, spec, sliding, scale=scale, softcap=softcap, block=block)
    if implementation == "splash":
        return splash_attention(q, k, v, spec, sliding, scale=scale, softcap=softcap, block=block)
    if implementation == "cudnn":
        return cudnn_attention(q, k, v, spec, sliding, scale=scale)
    raise ValueError(f"model.attention: unknown implementation {implementation!r}; valid: {IMPLEMENTATIONS}")


def resolve_attention(setting: str, platform: str, model_config: ModelConfig) -> str:
    """The kernel that ``model.attention=setting`` runs on ``platform`` (``"tpu"``, ``"gpu"``, ``"cpu"``) for
    ``model_config``: one of :data:`IMPLEMENTATIONS`.

    ``auto``: splash on TPU, cuDNN on a GPU when it takes the model, else :data:`CPU_AUTO`. Called once when
    the model is built; ValueError (one line naming the setting and the alternatives) when the chosen kernel
    cannot run here or refuses the model.
    """
    cudnn_reason = cudnn_refusal(
        platform, model_config.attn_softcap, model_config.dtype, model_config.resolved_head_dim
    )
    if setting == "auto":
        if platform == "tpu":
            return "splash"
        return "cudnn" if cudnn_reason is None else CPU_AUTO
    reason = {"splash": splash_refusal(platform), "cudnn": cudnn_reason}.get(setting)
    if setting not in IMPLEMENTATIONS or reason is not None:
        others = ", ".join(name for name in ("auto", *IMPLEMENTATIONS) if name != setting)
        raise ValueError(f"model.attention={setting}: {reason or 'unknown kernel'}; use one of {others}")
    return setting


def resolve_for_target(model_config: ModelConfig) -> str:
    """:func:`resolve_attention` of ``model_config.attention`` on the platform the model is built for, logged once per
    change."""
    from jaxspo.errors import ConfigError  # the CLI prints it as one line

    try:
        resolved = resolve_attention(model_config.attention, target_platform(), model_config)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if _LAST_RESOLVED.get(model_config.attention) != resolved:
        _LAST_RESOLVED[model_config.attention] = resolved
        logging.getLogger("jaxspo").info(
            "model.attention=%s runs the %s kernel on %s", model_config.attention, resolved, target_platform()
        )
    return resolved


_LAST_RESOLVED: dict[str, str] = {}
