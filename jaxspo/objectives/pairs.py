"""The pair objective: the configured loss terms on chosen/rejected pairs, both sides in one forward.

The batch type chooses the layout: :class:`~jaxspo.objectives.batches.PairBatch` (padded chosen and rejected
rows, one concatenated forward over ``[2B, T]``) or :class:`~jaxspo.objectives.batches.PackedPairBatch`
(``data.layout: packed``, :mod:`jaxspo.data.layout`: one forward over rows holding the prompt once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspo.data.layout import ROLES
from jaxspo.losses import PairLogps, preference_objective
from jaxspo.objectives.base import Metrics
from jaxspo.objectives.batches import PackedPairBatch, PairBatch
from jaxspo.sharding import with_logical_constraint
from jaxspo.train.length_desensitise import desensitising_weights
from jaxspo.train.logprobs import head_outputs, sequence_logps

PairLogpsFn = Callable[[nnx.GraphDef, nnx.State, Any], tuple[jax.Array, ...]]


def padded_pair_logps(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: PairBatch,
    token_weight: jax.Array | None = None,
    aligned: bool = False,
) -> tuple[jax.Array, ...]:
    """(chosen [B], rejected [B], chosen_length [B], rejected_length [B]) from ONE forward over the 2B rows.
    ``token_weight [2B, T]``: weighted sums (LD-DPO's, :mod:`jaxspo.train.length_desensitise`); ``aligned``: also
    the chosen and rejected rows' WPO means ``[B]`` each (:func:`~jaxspo.train.logprobs.aligned_mean`)."""
    tokens = jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens])  # [2B, T]
    valid = jnp.concatenate([batch.chosen_valid, batch.rejected_valid])
    mask = jnp.concatenate([batch.chosen_loss_mask, batch.rejected_loss_mask])
    rows = sequence_logps(graphdef, params, tokens, valid, mask, token_weight, aligned)  # [2B] each
    half = batch.chosen_tokens.shape[0]
    return tuple(x for row in rows for x in (row[:half], row[half:]))


def packed_pair_logps(
    graphdef: nnx.GraphDef, params: nnx.State, batch: PackedPairBatch, aligned: bool = False
) -> tuple[jax.Array, ...]:
    """(chosen [N], rejected [N], chosen_length [N], rejected_length [N]) from packed rows ``[R, W]``: one pair
    per row (N = R), or with ``packed_pair`` (``data.pack_pairs``) each slot's pair among the ``N = len(soft_label)``;
    ``aligned``: also the chosen and rejected responses' WPO means ``[N]`` each.

    Token t's log-prob reads the output at slot ``packed_source[t]`` (its predecessor in its own sequence).
    """
    model = nnx.merge(graphdef, params)
    features = model.features(
        batch.packed_tokens, batch.packed_positions, batch.packed_valid, batch.packed_segments
    )  # [R, W, D]
    predictors = jnp.take_along_axis(features, batch.packed_source[..., None], axis=1)  # [R, W, D]
    predictors = with_logical_constraint(predictors, ("batch", "length", "embed"))
    outs = head_outputs(model, predictors, batch.packed_tokens, aligned)  # [R, W] each
    chosen, rejected = (m.astype(jnp.float32) for m in (batch.packed_chosen_mask, batch.packed_rejected_mask))
    per_slot = (outs[0] * chosen, outs[0] * rejected, chosen, rejected)  # [R, W] each
    if aligned:  # WPO: log p − log Σ_v p(v)² summed per response, divided by its length below
        per_slot += ((outs[0] - outs[1]) * chosen, (outs[0] - outs[1]) * rejected)
    if batch.packed_pair is None:
        sums = tuple(x.sum(-1) for x in per_slot)
    else:
        pairs, pair = batch.soft_label.shape[0], batch.packed_pair.reshape(-1)
        sums = tuple(jax.ops.segment_sum(x.reshape(-1), pair, num_segments=pairs) for x in per_slot)
    means = tuple(jax.lax.stop_gradient(s / jnp.maximum(n, 1.0)) for s, n in zip(sums[4:], sums[2:4]))
    return sums[:4] + means


def padded_tokens(batch: PairBatch) -> jax.Array:
    """Non-pad tokens of the chosen and rejected rows (the prompt in both), float32."""
    return (batch.chosen_valid.sum() + batch.rejected_valid.sum()).astype(jnp.float32)


def packed_tokens(batch: PackedPairBatch) -> jax.Array:
    """Non-pad tokens as the padded layout counts them (the shared prompt twice), float32."""
    prompt = (batch.packed_valid & (batch.packed_segments % ROLES == 0)).sum()
    return (batch.packed_valid.sum() + prompt).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class PairLayout:
    """How a pair batch type is read: its sequence log-probs and its real-token count."""

    batch_type: type
    logps: PairLogpsFn
    tokens: Callable[[Any], jax.Array]


PADDED = PairLayout(PairBatch, padded_pair_logps, padded_tokens)
PACKED = PairLayout(PackedPairBatch, packed_pair_logps, packed_tokens)

# an add-on term: (view, params, frozen, batch, logps, rng, aux, loss sum, metrics) -> (loss sum, metrics)
PairTerm = Callable[..., tuple[jax.Array, Metrics]]


def pair_loss(layout: PairLayout, loss_cfg: Any, reference: str, term: PairTerm | None = None):
    """The preference loss of ``loss_cfg.terms`` on a micro-batch of pairs.

    ``reference``: ``"step"`` (the frozen reference's forward in the step), ``"precomputed"`` (batch fields) or
    ``"none"``; ``term``: an add-on pair term (selfsup's degree loss) given the pairs' log-probs."""

    def loss(view, params: nnx.State, frozen: Any, batch: Any, rng: jax.Array | None = None, aux: Any = None):
        weight = ()  # LD-DPO (loss.ld_alpha < 1, padded rows): tokens past the pair's shared length weigh α
        if loss_cfg.ld_alpha < 1.0:
            weight = (desensitising_weights(batch.chosen_loss_mask, batch.rejected_loss_mask, loss_cfg.ld_alpha),)
        wpo = loss_cfg.wpo_weighting  # WPO: each pair's loss weighs exp(its two responses' aligned means)
        with jax.named_scope("policy"):
            policy = layout.logps(*view.policy(params, frozen, rng), batch, *weight, aligned=wpo)
        chosen, rejected, chosen_len, rejected_len = policy[:4]
        ref_chosen = ref_rejected = None
        if reference == "precomputed":
            ref_chosen, ref_rejected = batch.reference_chosen_logps, batch.reference_rejected_logps
        elif reference == "step":
            with jax.named_scope("reference"):
                ref = layout.logps(*view.reference(frozen), batch, *weight)
            ref_chosen, ref_rejected = jax.lax.stop_gradient(ref[0]), jax.lax.stop_gradient(ref[1])
        logps = PairLogps(
            chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, batch.soft_label, batch.offset
        )
        pair_weight = jnp.exp(policy[4] + policy[5]) if wpo else None
        loss_sum, metrics = preference_objective(logps, loss_cfg, jnp.ones_like(chosen), pair_weight)
        if term is not None:
            loss_sum, metrics = term(view, params, frozen, batch, logps, rng, aux, loss_sum, metrics)
        metrics["tokens"] = (layout.tokens(batch), jnp.float32(1.0))
        return loss_sum, metrics

    return loss


def pair_count(batch: Any) -> jax.Array:
    """The step's denominator: pairs (a packed row may hold several)."""
    return jnp.float32(batch.soft_label.shape[0])
