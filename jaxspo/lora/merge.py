"""Adapters merged into their base: ``W + (alpha / r) · a b`` per adapted projection."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from jaxspo.lora.model import AdaptedModel


def adapter_targets(adapters: nnx.State) -> dict[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Adapter module path (e.g. ``("layers", "attn", "q_lora")``) → the base projection(s) it updates."""
    out = {}
    for path in traverse_util.flatten_dict(nnx.to_pure_dict(adapters)):
        module, name = path[:-2], path[-2]
        projections = ("q_proj", "k_proj", "v_proj") if name == "qkv_lora" else (name.removesuffix("_lora") + "_proj",)
        out[path[:-1]] = tuple((*module, p) for p in projections)
    return out


def adapter_deltas(model: AdaptedModel, adapters: nnx.State) -> dict[tuple[str, ...], jax.Array]:
    """``scale · a b`` per adapter module, float32, stacked over layers: ``[L, *in, *out]``."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(adapters))
    scale = model.lora_cfg.scale
    out = {}
    for module in adapter_targets(adapters):
        a, b = flat[(*module, "a")].astype(jnp.float32), flat[(*module, "b")].astype(jnp.float32)
        out[module] = scale * jax.vmap(lambda x, y: jnp.tensordot(x, y, axes=1))(a, b)
    return out


def merged_params(model: AdaptedModel, adapters: nnx.State, base: nnx.State) -> nnx.State:
    """Base params with every adapted projection replaced by ``W + (alpha / r) · a b`` (computed in float32,
    stored in the base's dtype), on the base's shardings. A new copy: the base is left as it is."""

    @functools.partial(jax.jit, out_shardings=model.base_sharding)
    def merge(adapters: nnx.State, base: nnx.State) -> nnx.State:
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(base))
        targets = adapter_targets(adapters)
        for module, delta in adapter_deltas(model, adapters).items():
            parts = targets[module]
            pieces = jnp.unstack(delta, axis=2) if len(parts) > 1 else [delta]  # fused qkv: [L, D, 3, H, Hd]
            for path, piece in zip(parts, pieces):
                flat[path] = (flat[path].astype(jnp.float32) + piece).astype(flat[path].dtype)
        merged = jax.tree.map(lambda leaf: leaf, base)
        nnx.replace_by_pure_dict(merged, traverse_util.unflatten_dict(flat))
        return merged

    return merge(adapters, base)
