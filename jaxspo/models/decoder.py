"""Llama-family decoder-only transformer: stacked, scanned layers, logical axis names, KV cache.

Shapes: B batch, T query length, S key/cache length, D hidden, H query heads, K key/value heads,
Hd head dim, F MLP width, V vocab, L layers. Every parameter is annotated with logical axis names
(see :mod:`jaxspo.sharding`); the per-layer parameters carry a leading ``layers`` axis of size L.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxspo.sharding import with_logical_constraint

AxisNames = tuple[str | None, ...]

_F32 = jnp.float32


@dataclasses.dataclass
class ModelConfig:
    """Architecture and numerics of a :class:`Decoder`. ``head_dim`` 0 means ``hidden_size // num_heads``."""

    vocab_size: int = 0
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = True
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: bool = False
    init_std: float = 0.02

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})"
            )
        if self.head_dim < 0:
            raise ValueError(f"model.head_dim must be >= 0 (0 = hidden_size // num_heads), got {self.head_dim}")
        if self.head_dim == 0 and self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}) "
                "when head_dim is 0"
            )
        if self.resolved_head_dim % 2:
            raise ValueError(f"model.head_dim must be even for RoPE, got {self.resolved_head_dim}")
        for name in ("rope_theta", "rms_norm_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.init_std < 0:
            raise ValueError(f"model.init_std must be >= 0, got {self.init_std}")
        for name in ("dtype", "param_dtype"):
            try:
                floating = jnp.issubdtype(jnp.dtype(getattr(self, name)), jnp.floating)
            except TypeError:
                floating = False
            if not floating:
                raise ValueError(f"model.{name} must be a floating dtype name, got {getattr(self, name)!r}")


@struct.dataclass
class KVCache:
    """Per-layer keys/values ``k, v: [L, B, S, K, Hd]`` (compute dtype) and key validity ``valid: [B, S]``."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array


def _param(rngs: nnx.Rngs, init: Callable, shape: tuple[int, ...], names: AxisNames, dtype: str) -> nnx.Param:
    # Logical names are not mesh axes, so eager sharding stays off; the trainer maps them via rules.
    init = nnx.with_partitioning(init, names, eager_sharding=False)
    return nnx.Param(init(rngs.params(), shape, jnp.dtype(dtype)))


class RMSNorm(nnx.Module):
    """RMS normalisation over the last axis, computed in float32, returned in the compute dtype."""

    def __init__(self, size: int, config: ModelConfig, *, rngs: nnx.Rngs):
        self.weight = _param(rngs, nnx.initializers.ones, (size,), ("norm",), config.param_dtype)
        self.eps = config.rms_norm_eps
        self.dtype = config.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(_F32)  # [..., D]
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * self.weight[...].astype(_F32)).astype(self.dtype)


def _rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin tables ``[B, T, Hd]`` (float32) for integer ``positions [B, T]``, HF rotate-half layout."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=_F32) / head_dim)  # [Hd/2]
    angles = positions[..., None].astype(_F32) * inv_freq  # [B, T, Hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, Hd]
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x [B, T, N, Hd]`` by the tables ``[B, T, Hd]``."""
    x32 = x.astype(_F32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention. q ``[B, T, H, Hd]``, k/v ``[B, S, K, Hd]``, mask ``[B, T, S]`` -> ``[B, T, H, Hd]``.

    Query head ``h`` reads key/value head ``h // (H // K)`` (HF ``repeat_kv`` order). Softmax in float32.
    """
    b, t, h, hd = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, hd)  # [B, T, K, G, Hd]
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=_F32) * hd**-0.5  # [B, K, G, T, S]
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(_F32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)  # [B, T, K, G, Hd]
    return out.reshape(b, t, h, hd)


class Attention(nnx.Module):
    """Bias-free GQA self-attention with RoPE; optionally reads/writes one layer's KV cache."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kvh, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.resolved_head_dim
        init, pdt = nnx.initializers.normal(config.init_std), config.param_dtype
        self.q_proj = _param(rngs, init, (d, h, hd), ("embed", "heads", "head_dim"), pdt)
        self.k_proj = _param(rngs, init, (d, kvh, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.v_proj = _param(rngs, init, (d, kvh, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.o_proj = _param(rngs, init, (h, hd, d), ("heads", "head_dim", "embed"), pdt)
        self.dtype = config.dtype

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None,
        index: jax.Array | int,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x ``[B, T, D]``, mask ``[B, T, S]``. Without ``kv`` the T new keys are the S keys; with
        ``kv`` (``[B, S, K, Hd]`` each) the new keys are written at slots ``index..index+T-1`` first."""
        q = jnp.einsum("btd,dhk->bthk", x, self.q_proj[...].astype(self.dtype))  # [B, T, H, Hd]
        k = jnp.einsum("btd,dhk->bthk", x, self.k_proj[...].astype(self.dtype))  # [B, T, K, Hd]
        v = jnp.einsum("btd,dhk->bthk", x, self.v_proj[...].astype(self.dtype))  # [B, T, K, Hd]
        q = with_logical_constraint(_apply_rope(q, *rope), ("batch", "length", "heads", "head_dim"))
        k = with_logical_constraint(_apply_rope(k, *rope), ("batch", "length", "kv_heads", "head_dim"))
        v = with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))
        if kv is not None:
            k = jax.lax.dynamic_update_slice(kv[0], k, (0, index, 0, 0))  # [B, S, K, Hd]
            v = jax.lax.dynamic_update_slice(kv[1], v, (0, index, 0, 0))
            kv = (k, v)
        out = _attend(q, k, v, mask)  # [B, T, H, Hd]
        return jnp.einsum("bthk,hkd->btd", out, self.o_proj[...].astype(self.dtype)), kv


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        init, pdt = nnx.initializers.normal(config.init_std), config.param_dtype
        self.gate_proj = _param(rngs, init, (d, f), ("embed", "mlp"), pdt)
        self.up_proj = _param(rngs, init, (d, f), ("embed", "mlp"), pdt)
        self.down_proj = _param(rngs, init, (f, d), ("mlp", "embed"), pdt)
        self.dtype = config.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = x @ self.gate_proj[...].astype(self.dtype)  # [B, T, F]
        up = x @ self.up_proj[...].astype(self.dtype)  # [B, T, F]
        hidden = with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return hidden @ self.down_proj[...].astype(self.dtype)  # [B, T, D]


class Block(nnx.Module):
    """Pre-norm transformer layer: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(config.hidden_size, config, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config.hidden_size, config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None,
        index: jax.Array | int,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """See :meth:`Attention.__call__`; returns the new residual stream ``[B, T, D]`` and ``kv``."""
        h, kv = self.attn(self.attn_norm(x), rope, mask, kv, index)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), kv


def _stacked_blocks(config: ModelConfig, rngs: nnx.Rngs) -> Block:
    """``num_layers`` independently initialised blocks stacked on a leading ``layers`` axis."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> Block:
        return Block(config, rngs=rngs)

    return make(rngs)


def _attention_mask(query_slots: jax.Array, key_valid: jax.Array) -> jax.Array:
    """``[B, T, S]``: query at slot ``query_slots[t]`` sees valid keys at slots ``<=`` its own."""
    key_slots = jnp.arange(key_valid.shape[1])  # [S]
    return (key_slots[None, None, :] <= query_slots[None, :, None]) & key_valid[:, None, :]


class Decoder(nnx.Module):
    """Llama-family causal LM. Params in ``param_dtype``, compute in ``dtype``, logits in float32.

    All state is ``nnx.Param``, so ``nnx.split(model, nnx.Param)`` captures the whole model.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        config.validate()
        init, pdt = nnx.initializers.normal(config.init_std), config.param_dtype
        vocab, d = config.vocab_size, config.hidden_size
        self.embed = _param(rngs, init, (vocab, d), ("vocab", "embed"), pdt)
        self.layers = _stacked_blocks(config, rngs)
        self.final_norm = RMSNorm(d, config, rngs=rngs)
        self.lm_head = None if config.tie_embeddings else _param(rngs, init, (d, vocab), ("embed", "vocab"), pdt)
        self.dtype = config.dtype
        self.rope_theta = config.rope_theta
        self.remat = config.remat

    def __call__(self, tokens: jax.Array, positions: jax.Array, valid: jax.Array) -> jax.Array:
        """Logits ``[B, T, V]`` (float32) for ``tokens/positions [B, T]`` int32 and ``valid [B, T]`` bool.

        Each token attends to valid tokens at or before it in its row; logits at invalid positions are garbage.
        """
        slots = jnp.arange(tokens.shape[1])
        logits, _ = self._forward(tokens, positions, _attention_mask(slots, valid), None, 0)
        return logits

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """Empty cache for ``batch`` rows and ``max_len`` slots (nothing valid yet)."""
        layers, _, kv_heads, head_dim = self.layers.attn.k_proj.shape
        shape = (layers, batch, max_len, kv_heads, head_dim)
        names = ("layers", "batch", "length", "kv_heads", "head_dim")
        return KVCache(
            k=with_logical_constraint(jnp.zeros(shape, self.dtype), names),
            v=with_logical_constraint(jnp.zeros(shape, self.dtype), names),
            valid=with_logical_constraint(jnp.zeros((batch, max_len), bool), ("batch", "length")),
        )

    def decode(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        valid: jax.Array,
        cache: KVCache,
        index: jax.Array | int,
    ) -> tuple[jax.Array, KVCache]:
        """Writes ``t`` new tokens ``[B, t]`` at cache slots ``index..index+t-1``; returns logits ``[B, t, V]``.

        Each new token attends to every valid slot at or before its own (prefill and single steps alike).
        """
        key_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, index))  # [B, S]
        query_slots = index + jnp.arange(tokens.shape[1])  # [t]
        logits, (k, v) = self._forward(
            tokens, positions, _attention_mask(query_slots, key_valid), (cache.k, cache.v), index
        )
        return logits, KVCache(k=k, v=v, valid=key_valid)

    def _forward(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None,
        index: jax.Array | int,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Shared body of :meth:`__call__` and :meth:`decode`: scans the stacked layers once."""
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)  # [B, T, D]
        x = with_logical_constraint(x, ("batch", "length", "embed"))
        head_dim = self.layers.attn.q_proj.shape[-1]
        rope = _rope_tables(positions, head_dim, self.rope_theta)
        graphdef, layer_state = nnx.split(self.layers)

        def layer(x, per_layer):  # one scan step over the leading `layers` axis
            state, layer_kv = per_layer
            return nnx.merge(graphdef, state)(x, rope, mask, layer_kv, index)

        if self.remat:
            layer = jax.checkpoint(layer, prevent_cse=False)
        x, kv = jax.lax.scan(layer, x, (layer_state, kv))  # kv: [L, B, S, K, Hd] each, or None
        x = self.final_norm(x)
        head = self.embed[...].T if self.lm_head is None else self.lm_head[...]  # [D, V]
        logits = jnp.einsum("btd,dv->btv", x, head.astype(self.dtype), preferred_element_type=_F32)
        return with_logical_constraint(logits, ("batch", "length", "vocab")), kv


def param_logical_names(model_or_state: nnx.Module | nnx.State) -> nnx.State:
    """Logical axis names of every parameter: the Param state with each Variable replaced by its tuple.

    Tuples are pytree nodes, so map over the result with ``is_leaf=lambda x: isinstance(x, tuple)``.
    """
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    return jax.tree.map(
        lambda v: tuple(v.get_metadata()["out_sharding"]),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
