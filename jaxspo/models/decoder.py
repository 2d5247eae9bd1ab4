"""Decoder-only causal LM for every supported HF architecture: scanned stacked layers, KV cache.

Shapes: B batch, T query length, S key/cache length, D hidden, K key/value heads, Hd head dim, V vocab,
L layers. Per-layer parameters carry a leading ``layers`` axis of size L and are scanned
(``model.scan_unroll`` layers per iteration; the parameters stay stacked either way);
per-layer differences (Gemma 2's alternating sliding window) are scanned inputs. Every parameter and
activation is annotated with logical axis names (see :mod:`jaxspo.sharding`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxspo.models.attention import MaskSpec, resolve_for_target
from jaxspo.models.config import ModelConfig, RopeScaling
from jaxspo.models.layers import KV, Norm, param, stacked_blocks
from jaxspo.lora.adapters import LoRASpec
from jaxspo.models.rope import inverse_frequencies, rope_tables
from jaxspo.models.zigzag import from_zigzag, to_zigzag, zigzag_order
from jaxspo.sharding import with_logical_constraint

__all__ = ["Decoder", "KVCache", "ModelConfig", "RopeScaling", "param_logical_names"]

_F32 = jnp.float32
# model.remat_policy → what a rematerialised layer keeps from its forward (None: nothing, recompute all)
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@struct.dataclass
class KVCache:
    """Per-layer keys/values ``k, v: [L, B, S, K, Hd]`` (compute dtype) and key validity ``valid: [B, S]``."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array


class Decoder(nnx.Module):
    """Causal LM. Params in ``param_dtype``, compute in ``dtype``, logits in float32.

    All state is ``nnx.Param``, so ``nnx.split(model, nnx.Param)`` captures the whole model. With ``lora``, the
    chosen projections also get adapters (``LoRAParam``, and ``LoRADropoutKey`` with dropout; see
    :mod:`jaxspo.lora.adapters`).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, lora: LoRASpec | None = None):
        config.validate()
        config = dataclasses.replace(config, attention=resolve_for_target(config))
        init, pdt = nnx.initializers.normal(config.init_std), config.param_dtype
        vocab, d = config.vocab_size, config.hidden_size
        self.embed = param(rngs, init, (vocab, d), ("vocab", "embed"), pdt)
        learned = config.positions == "learned"
        positions = (config.max_position_embeddings, d)
        self.pos_embed = param(rngs, init, positions, ("length", "embed"), pdt) if learned else None  # GPT-2
        self.layers = stacked_blocks(config, rngs, lora)
        self.final_norm = Norm(d, config, rngs=rngs)
        self.lm_head = None if config.tie_embeddings else param(rngs, init, (d, vocab), ("embed", "vocab"), pdt)
        self.dtype = config.dtype
        if learned:
            self.inv_freq = None
        else:  # a tuple: static, part of the graph definition
            self.inv_freq = tuple(
                inverse_frequencies(config.resolved_head_dim, config.rope_theta, config.rope_scaling).tolist()
            )
        self.embed_scale = d**0.5 if config.scale_embeddings else None
        self.final_softcap = config.final_softcap
        self.sliding_window = config.sliding_window
        self.sliding_layers = config.sliding_layers if any(config.sliding_layers) else None
        self.remat = config.remat
        self.remat_policy = config.remat_policy
        self.zigzag = config.context_attention == "ring_zigzag"  # rows in zig-zag order under a time split
        self.scan_unroll = min(config.scan_unroll, config.num_layers)
        self.logprob_chunk = config.logprob_chunk

    def __call__(self, tokens: jax.Array, positions: jax.Array, valid: jax.Array) -> jax.Array:
        """Logits ``[B, T, V]`` (float32) for ``tokens/positions [B, T]`` int32 and ``valid [B, T]`` bool.

        Each token attends to valid tokens at or before it in its row; logits at invalid positions are garbage.
        """
        return self.logits(self.features(tokens, positions, valid))

    def features(
        self, tokens: jax.Array, positions: jax.Array, valid: jax.Array, segments: jax.Array | None = None
    ) -> jax.Array:
        """The final-normed residual stream ``[B, T, D]`` (compute dtype) that :meth:`logits` maps to the vocabulary.

        ``segments [B, T]`` int32 (optional): packed rows, a token sees earlier valid tokens of its own
        segment or of segment 0 (see :class:`jaxspo.models.attention.MaskSpec`).
        """
        order = zigzag_order(*tokens.shape) if self.zigzag else None
        if order is None:
            x, _, _ = self._forward(tokens, positions, jnp.arange(tokens.shape[1]), valid, None, 0, False, segments)
            return x
        tokens, positions, valid, segments = to_zigzag(order, tokens, positions, valid, segments)
        x, _, _ = self._forward(tokens, positions, jnp.asarray(order), valid, None, 0, False, segments, zigzag=True)
        return from_zigzag(order, x)

    def logits(self, x: jax.Array) -> jax.Array:
        """LM head: ``x [..., D]`` → float32 logits ``[..., V]`` (soft-capped if configured)."""
        head = self.embed[...].T if self.lm_head is None else self.lm_head[...]  # [D, V]
        logits = jnp.einsum("...d,dv->...v", x, head.astype(self.dtype), preferred_element_type=_F32)
        if self.final_softcap:
            logits = self.final_softcap * jnp.tanh(logits / self.final_softcap)
        return with_logical_constraint(logits, ("batch", "length", "vocab")) if logits.ndim == 3 else logits

    def hidden_states(self, tokens: jax.Array, positions: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Like ``__call__``, plus the residual stream ``[L + 1, B, T, D]``: the scaled embeddings, then each layer's
        output."""
        x, _, hidden = self._forward(tokens, positions, jnp.arange(tokens.shape[1]), valid, None, 0, True)
        return self.logits(x), hidden

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
        x, (k, v), _ = self._forward(tokens, positions, query_slots, key_valid, (cache.k, cache.v), index, False)
        return self.logits(x), KVCache(k=k, v=v, valid=key_valid)

    def _embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """Token (and learned position) embeddings ``[B, T, D]`` in the compute dtype."""
        x = jnp.take(self.embed[...], tokens, axis=0)  # [B, T, D]
        if self.pos_embed is not None:
            x = x + jnp.take(self.pos_embed[...], positions, axis=0)
        x = x.astype(self.dtype)
        if self.embed_scale is not None:  # like HF, the scale is rounded to the dtype it multiplies in
            x = x * jnp.asarray(self.embed_scale, self.dtype)
        return with_logical_constraint(x, ("batch", "length", "embed"))

    def _forward(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        query_slots: jax.Array,
        key_valid: jax.Array,
        kv: KV | None,
        index: jax.Array | int,
        collect: bool,
        segments: jax.Array | None = None,
        zigzag: bool = False,
    ) -> tuple[jax.Array, KV | None, jax.Array | None]:
        """Shared body of the public methods: scans the stacked layers once; returns the final-normed stream ``[B, T,
        D]``.

        ``collect`` also returns the residual stream after the embeddings and after every layer ``[L + 1, B, T, D]``.
        """
        x = self._embed(tokens, positions)
        rope = None if self.inv_freq is None else rope_tables(positions, self.inv_freq)
        window = self.sliding_window if self.sliding_layers else 0
        spec = MaskSpec(
            query_slots, key_valid, segments, None if segments is None else positions, window, zigzag=zigzag
        )
        graphdef, layer_state = nnx.split(self.layers)

        def layer(x, per_layer):  # one scan step over the leading `layers` axis
            state, layer_kv, is_sliding = per_layer
            sliding = False if is_sliding is None else is_sliding
            x, layer_kv = nnx.merge(graphdef, state)(x, rope, spec, sliding, layer_kv, index)
            return x, (layer_kv, x if collect else None)

        if self.remat:
            layer = jax.checkpoint(layer, prevent_cse=False, policy=REMAT_POLICIES[self.remat_policy])
        is_sliding = None if self.sliding_layers is None else jnp.asarray(self.sliding_layers)
        x0 = x
        x, (kv, hidden) = jax.lax.scan(
            layer, x, (layer_state, kv, is_sliding), unroll=self.scan_unroll
        )  # kv: [L, B, S, K, Hd] each, or None
        x = self.final_norm(x)
        if collect:
            hidden = jnp.concatenate([x0[None], hidden])
        return x, kv, hidden


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
