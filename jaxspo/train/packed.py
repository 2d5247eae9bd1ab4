"""Sequence log-probs of chosen and rejected from packed pair rows (:mod:`jaxspo.data.layout`): one forward, prompt once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspo.data.layout import ROLES
from jaxspo.data.pair_packing import PAIR_FIELD, ROW_FIELDS
from jaxspo.sharding import with_logical_constraint
from jaxspo.train.logprobs import target_logps

PACKED_RANKS = {name: 2 for name in ROW_FIELDS}


def is_packed(batch: dict[str, jax.Array]) -> bool:
    """Whether ``batch`` carries packed pair rows."""
    return "packed_tokens" in batch


def packed_pair_logps(graphdef: nnx.GraphDef, params: nnx.State, batch: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
    """(chosen [N], rejected [N], chosen_length [N], rejected_length [N]) from packed rows ``[R, W]``: one pair
    per row (N = R), or with ``packed_pair`` (``data.pack_pairs``) each slot's pair among the ``N = len(soft_label)``.

    Token t's log-prob reads the output at slot ``packed_source[t]`` (its predecessor in its own sequence).
    """
    model = nnx.merge(graphdef, params)
    features = model.features(
        batch["packed_tokens"], batch["packed_positions"], batch["packed_valid"], batch["packed_segments"]
    )  # [B, W, D]
    predictors = jnp.take_along_axis(features, batch["packed_source"][..., None], axis=1)  # [B, W, D]
    predictors = with_logical_constraint(predictors, ("batch", "length", "embed"))
    logps = target_logps(model, predictors, batch["packed_tokens"])  # [B, W]
    chosen, rejected = (batch[f"packed_{side}_mask"].astype(jnp.float32) for side in ("chosen", "rejected"))
    per_slot = (logps * chosen, logps * rejected, chosen, rejected)  # [R, W] each
    if PAIR_FIELD not in batch:
        return tuple(x.sum(-1) for x in per_slot)
    pairs, pair = batch["soft_label"].shape[0], batch[PAIR_FIELD].reshape(-1)
    return tuple(jax.ops.segment_sum(x.reshape(-1), pair, num_segments=pairs) for x in per_slot)


def real_tokens(batch: dict[str, jax.Array]) -> jax.Array:
    """Non-pad tokens as the padded layout counts them (chosen + rejected rows, the prompt in both), float32."""
    if is_packed(batch):
        prompt = (batch["packed_valid"] & (batch["packed_segments"] % ROLES == 0)).sum()
        return (batch["packed_valid"].sum() + prompt).astype(jnp.float32)
    return (batch["chosen_valid"].sum() + batch["rejected_valid"].sum()).astype(jnp.float32)
