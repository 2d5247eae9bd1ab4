"""Building blocks of the decoder: norms, grouped-query attention, MLP, and the transformer layer.

Shapes: B batch, T query length, S key length, D hidden, H query heads, K key/value heads, Hd head dim,
F MLP width. Every parameter is created with logical axis names (see :mod:`jaxspo.sharding`); norm scales
and biases carry the ``norm`` name (so the optimizer skips weight decay on them).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspo.models.context import context_attention
from jaxspo.models.config import ModelConfig
from jaxspo.models.mask_spec import MaskSpec
from jaxspo.models.projection import project
from jaxspo.lora.adapters import Adapter, LoRASpec, adapter, add_delta
from jaxspo.models.rope import apply_rope
from jaxspo.sharding import with_logical_constraint

AxisNames = tuple[str | None, ...]
KV = tuple[jax.Array, jax.Array]

_F32 = jnp.float32
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


def param(rngs: nnx.Rngs, init: Callable, shape: tuple[int, ...], names: AxisNames, dtype: str) -> nnx.Param:
    """A parameter annotated with logical axis ``names`` (mapped to the mesh later, so no eager sharding)."""
    init = nnx.with_partitioning(init, names, eager_sharding=False)
    return nnx.Param(init(rngs.params(), shape, jnp.dtype(dtype)))


def _optional(enabled: bool, rngs: nnx.Rngs, shape: tuple[int, ...], names: AxisNames, dtype: str) -> nnx.Param | None:
    """A zero-initialised bias, or None when the switch is off."""
    return param(rngs, nnx.initializers.zeros, shape, names, dtype) if enabled else None


def _add(x: jax.Array, bias: nnx.Param | None) -> jax.Array:
    return x if bias is None else x + bias[...].astype(x.dtype)


class Norm(nnx.Module):
    """Normalisation over the last axis, in one of the HF flavours (``config.norm``).

    ``rmsnorm``: ``w · x̂`` with x̂ cast to the compute dtype first (Llama); ``gemma_rmsnorm``: ``(1 + w) · x̂``
    in float32 (Gemma); ``layernorm``: ``w · (x - mean)/std + b`` in float32 (GPT-2).
    """

    def __init__(self, size: int, config: ModelConfig, *, rngs: nnx.Rngs):
        ones_or_zeros = nnx.initializers.zeros if config.norm == "gemma_rmsnorm" else nnx.initializers.ones
        self.weight = param(rngs, ones_or_zeros, (size,), ("norm",), config.param_dtype)
        self.bias = _optional(config.norm == "layernorm", rngs, (size,), ("norm",), config.param_dtype)
        self.kind, self.eps, self.dtype = config.norm, config.rms_norm_eps, config.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(_F32)  # [..., D]
        if self.kind == "layernorm":
            x = x - jnp.mean(x, axis=-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        weight = self.weight[...]
        if self.kind == "rmsnorm":
            return x.astype(self.dtype) * weight.astype(self.dtype)
        if self.kind == "gemma_rmsnorm":
            return (x * (1.0 + weight.astype(_F32))).astype(self.dtype)
        return (x * weight.astype(_F32) + self.bias[...].astype(_F32)).astype(self.dtype)


class Attention(nnx.Module):
    """GQA self-attention with optional biases, q/k norms, RoPE and soft-capping; reads/writes one layer's KV cache."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, lora: LoRASpec | None = None):
        d, h, kvh, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.resolved_head_dim
        init, pdt = nnx.initializers.normal(config.init_std), config.param_dtype
        self.q_proj = param(rngs, init, (d, h, hd), ("embed", "heads", "head_dim"), pdt)
        self.k_proj = param(rngs, init, (d, kvh, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.v_proj = param(rngs, init, (d, kvh, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.o_proj = param(rngs, init, (h, hd, d), ("heads", "head_dim", "embed"), pdt)
        self.q_bias = _optional(config.qkv_bias, rngs, (h, hd), ("heads", "head_dim"), pdt)
        self.k_bias = _optional(config.qkv_bias, rngs, (kvh, hd), ("kv_heads", "head_dim"), pdt)
        self.v_bias = _optional(config.qkv_bias, rngs, (kvh, hd), ("kv_heads", "head_dim"), pdt)
        self.o_bias = _optional(config.out_bias, rngs, (d,), ("embed",), pdt)
        self.q_norm = Norm(hd, config, rngs=rngs) if config.qk_norm else None
        self.k_norm = Norm(hd, config, rngs=rngs) if config.qk_norm else None
        heads, kv_heads = ("heads", "head_dim"), ("kv_heads", "head_dim")
        self.q_lora = adapter(lora, ("attn", "q_proj"), (d,), (h, hd), ("embed",), heads, pdt, rngs)
        self.k_lora = adapter(lora, ("attn", "k_proj"), (d,), (kvh, hd), ("embed",), kv_heads, pdt, rngs)
        self.v_lora = adapter(lora, ("attn", "v_proj"), (d,), (kvh, hd), ("embed",), kv_heads, pdt, rngs)
        # GPT-2's fused c_attn (kv heads = heads): one adapter whose output axis 1 is q, k, v
        self.qkv_lora = adapter(lora, ("attn", "qkv_proj"), (d,), (3, h, hd), ("embed",), (None,) + heads, pdt, rngs)
        self.o_lora = adapter(lora, ("attn", "o_proj"), (h, hd), (d,), heads, ("embed",), pdt, rngs)
        self.scale = (config.query_pre_attn_scalar or hd) ** -0.5
        self.softcap = config.attn_softcap
        self.rope = config.positions == "rope"
        self.dtype = config.dtype
        self.implementation = config.attention  # resolved by the Decoder (never "auto")
        self.block = config.attention_block
        self.context = config.context_attention

    def _project(
        self,
        x: jax.Array,
        proj: nnx.Param,
        bias: nnx.Param | None,
        norm: Norm | None,
        lora: Adapter | None,
        fused: jax.Array | None,
    ) -> jax.Array:
        """``x [B, T, D]`` -> heads ``[B, T, N, Hd]``: projection (+ its LoRA update, or its slice ``fused`` of the
        fused one), bias, then the optional per-head norm."""
        y = add_delta(project("btd,dhk->bthk", x, proj[...], self.dtype), x, lora)
        y = _add(y if fused is None else y + fused, bias)
        return y if norm is None else norm(y)

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        spec: MaskSpec,
        sliding: bool | jax.Array,
        kv: KV | None,
        index: jax.Array | int,
    ) -> tuple[jax.Array, KV | None]:
        """x ``[B, T, D]``; ``spec`` says which of the S keys each query sees (``sliding``: with its window).
        Without ``kv`` the T new keys are the S keys; with ``kv`` (``[B, S, K, Hd]`` each) the new keys are
        written at slots ``index..index+T-1`` first (the KV-cache decode path, always the ``xla`` kernel)."""
        fused = [None] * 3 if self.qkv_lora is None else jnp.unstack(self.qkv_lora(x), axis=2)  # 3 × [B, T, H, Hd]
        q = self._project(x, self.q_proj, self.q_bias, self.q_norm, self.q_lora, fused[0])  # [B, T, H, Hd]
        k = self._project(x, self.k_proj, self.k_bias, self.k_norm, self.k_lora, fused[1])  # [B, T, K, Hd]
        v = self._project(x, self.v_proj, self.v_bias, None, self.v_lora, fused[2])  # [B, T, K, Hd]
        if self.rope:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q = with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        k = with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"))
        v = with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))
        if kv is not None:
            k = jax.lax.dynamic_update_slice(kv[0], k, (0, index, 0, 0))  # [B, S, K, Hd]
            v = jax.lax.dynamic_update_slice(kv[1], v, (0, index, 0, 0))
            kv = (k, v)
        implementation = "xla" if kv is not None else self.implementation
        out = context_attention(
            q,
            k,
            v,
            spec,
            sliding,
            scale=self.scale,
            softcap=self.softcap,
            implementation=implementation,
            block=self.block,
            context="gather" if kv is not None else self.context,
        )
        out = with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        y = add_delta(project("bthk,hkd->btd", out, self.o_proj[...], self.dtype), out, self.o_lora)
        return _add(y, self.o_bias), kv


class MLP(nnx.Module):
    """Gated ``down(act(gate(x)) · up(x))`` (Llama, Gemma) or plain ``down(act(up(x)))`` (GPT-2)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, lora: LoRASpec | None = None):
        d, f = config.hidden_size, config.intermediate_size
        init, pdt, bias = nnx.initializers.normal(config.init_std), config.param_dtype, config.mlp_bias
        self.gate_proj = param(rngs, init, (d, f), ("embed", "mlp"), pdt) if config.gated_mlp else None
        self.up_proj = param(rngs, init, (d, f), ("embed", "mlp"), pdt)
        self.down_proj = param(rngs, init, (f, d), ("mlp", "embed"), pdt)
        self.gate_bias = _optional(bias and config.gated_mlp, rngs, (f,), ("mlp",), pdt)
        self.up_bias = _optional(bias, rngs, (f,), ("mlp",), pdt)
        self.down_bias = _optional(bias, rngs, (d,), ("embed",), pdt)
        self.gate_lora = adapter(lora, ("mlp", "gate_proj"), (d,), (f,), ("embed",), ("mlp",), pdt, rngs)
        self.up_lora = adapter(lora, ("mlp", "up_proj"), (d,), (f,), ("embed",), ("mlp",), pdt, rngs)
        self.down_lora = adapter(lora, ("mlp", "down_proj"), (f,), (d,), ("mlp",), ("embed",), pdt, rngs)
        self.activation = config.activation
        self.dtype = config.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        act = _ACTIVATIONS[self.activation]
        hidden = _add(
            add_delta(project("btd,df->btf", x, self.up_proj[...], self.dtype), x, self.up_lora), self.up_bias
        )  # [B, T, F]
        if self.gate_proj is None:
            hidden = act(hidden)
        else:
            hidden = (
                act(
                    _add(
                        add_delta(project("btd,df->btf", x, self.gate_proj[...], self.dtype), x, self.gate_lora),
                        self.gate_bias,
                    )
                )
                * hidden
            )
        hidden = with_logical_constraint(hidden, ("batch", "length", "mlp"))
        out = add_delta(project("btf,fd->btd", hidden, self.down_proj[...], self.dtype), hidden, self.down_lora)
        return _add(out, self.down_bias)  # [B, T, D]


class Block(nnx.Module):
    """Pre-norm layer ``x + attn(norm(x))``, ``x + mlp(norm(x))``; with ``post_norms`` each branch output is normed
    too."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, lora: LoRASpec | None = None):
        d = config.hidden_size
        self.attn_norm = Norm(d, config, rngs=rngs)
        self.attn = Attention(config, rngs=rngs, lora=lora)
        self.post_attn_norm = Norm(d, config, rngs=rngs) if config.post_norms else None
        self.mlp_norm = Norm(d, config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs, lora=lora)
        self.post_mlp_norm = Norm(d, config, rngs=rngs) if config.post_norms else None

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        spec: MaskSpec,
        sliding: bool | jax.Array,
        kv: KV | None,
        index: jax.Array | int,
    ) -> tuple[jax.Array, KV | None]:
        """See :meth:`Attention.__call__`; returns the new residual stream ``[B, T, D]`` and ``kv``."""
        h, kv = self.attn(self.attn_norm(x), rope, spec, sliding, kv, index)
        x = x + (h if self.post_attn_norm is None else self.post_attn_norm(h))
        h = self.mlp(self.mlp_norm(x))
        x = x + (h if self.post_mlp_norm is None else self.post_mlp_norm(h))
        return with_logical_constraint(x, ("batch", "length", "embed")), kv


def stacked_blocks(config: ModelConfig, rngs: nnx.Rngs, lora: LoRASpec | None = None) -> Block:
    """``num_layers`` independently initialised blocks (with ``lora``'s adapters) stacked on a leading ``layers``
    axis."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> Block:
        return Block(config, rngs=rngs, lora=lora)

    return make(rngs)
