"""LoRA adapters on the decoder's projections: ``W x + (alpha / r) · B A dropout(x)`` (Hu et al., arXiv 2106.09685).

An adapter of a projection with input axes ``in`` and output axes ``out`` holds ``a [*in, r]`` (small random,
sharded like the projection's input axes) and ``b [r, *out]`` (zeros, sharded like its output axes; the rank
axis is never sharded), so the adapted model equals the base exactly at initialisation. Both are
:class:`LoRAParam` (a subclass of ``nnx.Param``): ``nnx.split(model, LoRAParam, LoRADropoutKey, nnx.Param)``
separates the trainable adapters from the frozen base. Inside the scanned layers the adapters, like the
projections, carry a leading ``layers`` axis.

Projections are chosen by their Hugging Face module names (``lora.targets``), matched like PEFT's
``target_modules`` list: a target matches a module whose name equals it or ends with ``"." + target``
(``q_proj``, ``self_attn.o_proj``, GPT-2's ``c_attn`` / ``attn.c_proj`` / ``mlp.c_fc`` / ``mlp.c_proj``).
GPT-2's fused ``c_attn`` gets one adapter whose output is q, k and v together, as in PEFT.

Stacked sequential stages (``lora.stages: stacked``): stage n's adapter also holds the n − 1 earlier stages'
trained adapters, frozen (:class:`FrozenLoRAParam`, a plain ``nnx.Param`` to the split, so they travel with
the base), as ``frozen_a [S, *in, r]`` and ``frozen_b [S, r, *out]``; they add ``scale · Σ_s x a_s b_s``
(no dropout). A spec with ``trainable=False`` builds only the frozen part: the graph of π_{n−1}.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspo.models.config import ModelConfig
from jaxspo.lora.config import LoRAConfig

AxisNames = tuple[str | None, ...]


class LoRAParam(nnx.Param):
    """A trainable adapter matrix (the base weights stay plain ``nnx.Param``)."""


class FrozenLoRAParam(nnx.Param):
    """Earlier stages' adapters, stacked on a stage axis and frozen (stacked sequential stages)."""


class LoRADropoutKey(nnx.Variable):
    """Raw PRNG key data ``[2]`` uint32 of one adapter's dropout, supplied by the train step each step."""


# (sub-module, projection) → its HF module name inside a layer, per architecture family.
_LLAMA_MODULES = {
    ("attn", "q_proj"): "self_attn.q_proj",
    ("attn", "k_proj"): "self_attn.k_proj",
    ("attn", "v_proj"): "self_attn.v_proj",
    ("attn", "o_proj"): "self_attn.o_proj",
    ("mlp", "gate_proj"): "mlp.gate_proj",
    ("mlp", "up_proj"): "mlp.up_proj",
    ("mlp", "down_proj"): "mlp.down_proj",
}
_GPT2_MODULES = {
    ("attn", "qkv_proj"): "attn.c_attn",  # fused q, k, v
    ("attn", "o_proj"): "attn.c_proj",
    ("mlp", "up_proj"): "mlp.c_fc",
    ("mlp", "down_proj"): "mlp.c_proj",
}


def hf_modules(cfg: ModelConfig) -> dict[tuple[str, str], str]:
    """Adaptable projections of ``cfg``'s architecture and their HF module names within a layer."""
    if cfg.arch == "gpt2":
        return dict(_GPT2_MODULES)
    return {key: name for key, name in _LLAMA_MODULES.items() if key != ("mlp", "gate_proj") or cfg.gated_mlp}


def hf_layer_prefix(cfg: ModelConfig) -> str:
    """HF name of layer ``{i}`` (to be formatted)."""
    return "transformer.h.{i}." if cfg.arch == "gpt2" else "model.layers.{i}."


def chosen_projections(cfg: ModelConfig, lora: LoRAConfig) -> frozenset[tuple[str, str]]:
    """The projections that ``lora.targets`` selects; a target that matches none is an error naming it."""
    modules = hf_modules(cfg)
    chosen = set()
    for target in lora.targets:
        hits = {key for key, name in modules.items() if name == target or name.endswith("." + target)}
        if not hits:
            raise ValueError(
                f"lora.targets: '{target}' matches no projection of a {cfg.arch} model; "
                f"available: {sorted(set(modules.values()))}"
            )
        chosen |= hits
    return frozenset(chosen)


@dataclasses.dataclass(frozen=True)
class LoRASpec:
    """What the decoder's layers need to build adapters: the settings, the chosen projections, how many
    earlier stages' frozen adapters each one stacks, and whether it has a trainable adapter."""

    config: LoRAConfig
    projections: frozenset[tuple[str, str]]
    frozen: int = 0
    trainable: bool = True

    @classmethod
    def build(
        cls, model_cfg: ModelConfig, lora: LoRAConfig, frozen: int = 0, trainable: bool = True
    ) -> "LoRASpec | None":
        """None when nothing is adapted (no frozen and no trainable adapter)."""
        if not (frozen or trainable):
            return None
        return cls(lora, chosen_projections(model_cfg, lora), frozen, trainable)


class Adapter(nnx.Module):
    """The low-rank update of one projection: ``delta(x) = scale · dropout(x) ·a ·b`` (+ ``scale · Σ_s x a_s b_s``
    over ``frozen`` earlier stages' adapters; ``trainable=False``: that sum alone).

    ``x [..., *in]`` → ``[..., *out]`` in ``x``'s dtype; ``a [*in, r]``, ``b [r, *out]`` in ``param_dtype``.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        in_names: AxisNames,
        out_names: AxisNames,
        lora: LoRAConfig,
        param_dtype: str,
        *,
        rngs: nnx.Rngs,
        frozen: int = 0,
        trainable: bool = True,
    ):
        dtype = jnp.dtype(param_dtype)
        self.a = self.b = self.key = self.frozen_a = self.frozen_b = None
        if trainable:  # nnx.data: the attributes were set to None (static) just above
            bound = 1.0 / math.sqrt(math.prod(in_shape))  # PEFT: kaiming_uniform(a=√5) on lora_A = U(±1/√fan_in)
            uniform = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
            a_init = nnx.with_partitioning(uniform, in_names + (None,), eager_sharding=False)
            b_init = nnx.with_partitioning(nnx.initializers.zeros, (None,) + out_names, eager_sharding=False)
            self.a = nnx.data(LoRAParam(a_init(rngs.params(), in_shape + (lora.rank,), dtype)))
            self.b = nnx.data(LoRAParam(b_init(rngs.params(), (lora.rank,) + out_shape, dtype)))
            if lora.dropout:
                self.key = nnx.data(
                    LoRADropoutKey(jnp.zeros((2,), jnp.uint32), out_sharding=(None,), eager_sharding=False)
                )
        if frozen:  # filled from the earlier stages' trained adapters (jaxspo.lora.stages)
            frozen_param = lambda shape, names: FrozenLoRAParam(
                jnp.zeros(shape, dtype), out_sharding=names, eager_sharding=False
            )  # noqa: E731
            self.frozen_a = nnx.data(frozen_param((frozen,) + in_shape + (lora.rank,), (None,) + in_names + (None,)))
            self.frozen_b = nnx.data(frozen_param((frozen, lora.rank) + out_shape, (None, None) + out_names))
        self.n_in, self.scale, self.dropout = len(in_shape), lora.scale, lora.dropout
        self.deterministic = False  # Module.eval() sets it: no dropout

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = jnp.asarray(self.scale, x.dtype)
        axes = tuple(range(x.ndim - self.n_in, x.ndim))
        out = None
        if self.frozen_a is not None:  # Σ over earlier stages and ranks in one contraction: [..., S, r] → [..., *out]
            low = jnp.tensordot(x, self.frozen_a[...].astype(x.dtype), axes=(axes, tuple(range(1, self.n_in + 1))))
            out = jnp.tensordot(low, self.frozen_b[...].astype(x.dtype), axes=2) * scale
        if self.a is not None:
            if self.key is not None and not self.deterministic:
                keep = jax.random.bernoulli(jax.random.wrap_key_data(self.key[...]), 1.0 - self.dropout, x.shape)
                x = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
            low = jnp.tensordot(x, self.a[...].astype(x.dtype), axes=(axes, tuple(range(self.n_in))))  # [..., r]
            delta = jnp.tensordot(low, self.b[...].astype(x.dtype), axes=1) * scale
            out = delta if out is None else out + delta  # + exact zeros at a stage's start (b = 0)
        return out


def adapter(
    spec: LoRASpec | None,
    key: tuple[str, str],
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    in_names: AxisNames,
    out_names: AxisNames,
    param_dtype: str,
    rngs: nnx.Rngs,
) -> Adapter | None:
    """An :class:`Adapter` for projection ``key`` if ``spec`` chose it, else None."""
    if spec is None or key not in spec.projections:
        return None
    return Adapter(
        in_shape,
        out_shape,
        in_names,
        out_names,
        spec.config,
        param_dtype,
        rngs=rngs,
        frozen=spec.frozen,
        trainable=spec.trainable,
    )


def add_delta(y: jax.Array, x: jax.Array, lora: Adapter | None) -> jax.Array:
    """``y`` plus the adapter's update of input ``x`` (``y`` unchanged without one)."""
    return y if lora is None else y + lora(x)
