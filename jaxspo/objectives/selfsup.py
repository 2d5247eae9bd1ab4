"""selfsup as an add-on term of the pair objective: forwards of the degraded copies, the degree loss, the classify head.

With ``loss.selfsup.weight`` > 0 the pair objective adds :func:`degree_term` after its loss terms (weight 0
adds no batch field, no forward and no head: the objective is the base objective exactly). Batch fields
(built before training by the objective's preparation, :mod:`jaxspo.objectives.selfsup_data`):
``selfsup_tokens``, ``selfsup_valid``, ``selfsup_loss_mask`` ``[B, S, K, T]``, ``selfsup_level_valid``
``[B, S, K]`` and, with a precomputed reference, ``selfsup_reference_logps`` ``[B, S, K]``; S = 1 or 2 degraded
sides, K levels.

The ``classify`` head (a linear map of the mean-pooled last-layer hidden state to K + 1 level logits) is the
objective's auxiliary state (:class:`ClassifyHead`), kept in ``TrainState.head`` =
``{"params": {"kernel" [D, K+1], "bias" [K+1]}, "opt_state": Adam state}``: it is trained with its own Adam
at the policy's learning-rate schedule (no clipping, no weight decay) [I], checkpointed with the state, and never
exported (it is not part of the policy's parameters).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxspo.losses import PairLogps, get_loss
from jaxspo.losses.selfsup import DEGRADE_SIDES, classify_loss, level_rewards, pairwise_accuracy, ranking_degree_loss
from jaxspo.objectives.base import Metrics
from jaxspo.objectives.batches import SELFSUP_FIELDS, SELFSUP_REFERENCE_FIELD, PairBatch
from jaxspo.objectives.switches import selfsup_active
from jaxspo.train.logprobs import positions_from_valid, sequence_logps


def reward_kind(loss_cfg) -> str:
    """The ranking reward: ``loss.selfsup.reward``, or for ``auto`` log_ratio if the first term reads π_ref, else
    mean_logp."""
    kind = loss_cfg.selfsup.reward
    if kind != "auto":
        return kind
    return "log_ratio" if get_loss(next(iter(loss_cfg.terms))).needs_reference else "mean_logp"


def needs_reference(loss_cfg) -> bool:
    """Whether the degree term needs reference log-probs (ranking on β·log πθ/π_ref with a reference)."""
    return (
        selfsup_active(loss_cfg)
        and loss_cfg.selfsup.mode == "ranking"
        and reward_kind(loss_cfg) == "log_ratio"
        and loss_cfg.reference != "none"
    )


def reference_passes(loss_cfg) -> tuple[str, ...]:
    """``("selfsup",)`` when the step runs the reference over the copies (their reference log-probs not precomputed)."""
    return ("selfsup",) if needs_reference(loss_cfg) and not precomputed(loss_cfg) else ()


def sides(loss_cfg) -> tuple[str, ...]:
    return DEGRADE_SIDES[loss_cfg.selfsup.degrade]


def precomputed(loss_cfg) -> bool:
    """Whether the copies carry reference log-probs scored before training (``loss.reference: precomputed``)."""
    return needs_reference(loss_cfg) and loss_cfg.reference == "precomputed"


def batch_fields(loss_cfg) -> tuple[str, ...]:
    """The selfsup arrays a pair batch holds (none when off)."""
    if not selfsup_active(loss_cfg):
        return ()
    return SELFSUP_FIELDS + ((SELFSUP_REFERENCE_FIELD,) if precomputed(loss_cfg) else ())


def dims(loss_cfg) -> dict[str, int]:
    """The batch dimensions the config fixes: S degraded sides and K levels."""
    return {"sides": len(sides(loss_cfg)), "levels": loss_cfg.selfsup.levels} if selfsup_active(loss_cfg) else {}


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape((-1,) + x.shape[3:])  # [B, S, K, ...] → [B·S·K, ...]


def _originals(logps: PairLogps, names: tuple[str, ...]) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """Policy, reference and length of the undegraded responses, ``[B, S]`` each."""
    policy = jnp.stack([getattr(logps, f"policy_{s}") for s in names], 1)
    reference = (
        None if logps.reference_chosen is None else jnp.stack([getattr(logps, f"reference_{s}") for s in names], 1)
    )
    lengths = jnp.stack([getattr(logps, f"{s}_length") for s in names], 1)
    return policy, reference, lengths


def copy_rewards(
    model: Any,
    params: Any,
    reference_params: Any,
    batch: PairBatch,
    logps: PairLogps,
    loss_cfg,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Implicit rewards of levels 0…K, ``[B, S, K + 1]`` (level 0 from the base objective's log-probs).

    ``model``: a model view (:mod:`jaxspo.lora.views`, e.g. LoRA)."""
    kind, shape = reward_kind(loss_cfg), batch.selfsup_level_valid.shape
    tokens, valid, mask = (_flat(x) for x in (batch.selfsup_tokens, batch.selfsup_valid, batch.selfsup_loss_mask))
    with jax.named_scope("selfsup_policy"):
        policy, lengths = (
            x.reshape(shape) for x in sequence_logps(*model.policy(params, reference_params, rng), tokens, valid, mask)
        )
    reference = None
    if kind == "log_ratio" and batch.selfsup_reference_logps is not None:
        reference = batch.selfsup_reference_logps
    elif kind == "log_ratio" and needs_reference(loss_cfg):
        with jax.named_scope("selfsup_reference"):
            reference = jax.lax.stop_gradient(
                sequence_logps(*model.reference(reference_params), tokens, valid, mask)[0].reshape(shape)
            )
    copies = level_rewards(kind, loss_cfg.beta, policy, reference, lengths)
    original = level_rewards(kind, loss_cfg.beta, *_originals(logps, sides(loss_cfg)))
    return jnp.concatenate([original[..., None], copies], -1)


def level_logits(
    model: Any,
    params: Any,
    reference_params: Any,
    head_params: Any,
    batch: PairBatch,
    loss_cfg,
    rng: jax.Array | None = None,
) -> jax.Array:
    """The head's level logits for levels 0…K of each degraded side, ``[B, S, K + 1, K + 1]``."""
    names = sides(loss_cfg)

    def with_original(field: str) -> jax.Array:  # [B, S, K + 1, T]
        original = jnp.stack([getattr(batch, f"{s}_{field}") for s in names], 1)[:, :, None]
        return jnp.concatenate([original, getattr(batch, f"selfsup_{field}")], 2)

    tokens, valid, mask = (with_original(f) for f in ("tokens", "valid", "loss_mask"))
    shape = tokens.shape[:3]
    with jax.named_scope("selfsup_policy"):
        decoder = nnx.merge(*model.policy(params, reference_params, rng))
        flat_valid = _flat(valid)
        _, hidden = decoder.hidden_states(_flat(tokens), positions_from_valid(flat_valid), flat_valid)  # [L+1, N, T, D]
    weights = _flat(mask).astype(jnp.float32)[..., None]  # pool over response positions
    pooled = (hidden[-1].astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)  # [N, D]
    logits = pooled @ head_params["kernel"] + head_params["bias"]
    return logits.reshape(shape + logits.shape[-1:])


def degree_objective(
    model: Any,
    params: Any,
    reference_params: Any,
    batch: PairBatch,
    logps: PairLogps,
    loss_cfg,
    rng: jax.Array | None,
    head_params: Any,
) -> tuple[jax.Array, Metrics]:
    """Per-pair degree loss ``[B]`` and metrics as (sum, count): ``selfsup/loss``, ``selfsup/accuracy``,
    and for ranking ``selfsup/reward_level_k`` (mean implicit reward of level k over valid copies)."""
    cfg = loss_cfg.selfsup
    level_valid = batch.selfsup_level_valid
    valid = jnp.concatenate([jnp.ones(level_valid.shape[:2] + (1,), bool), level_valid], -1)  # [B, S, K + 1]
    metrics: Metrics = {}
    if cfg.mode == "ranking":
        rewards = copy_rewards(model, params, reference_params, batch, logps, loss_cfg, rng)
        degree = ranking_degree_loss(rewards, valid, cfg.ranking)
        right, pairs = pairwise_accuracy(jax.lax.stop_gradient(rewards), valid)
        metrics["selfsup/accuracy"] = (right.sum(), pairs.sum())
        for k in range(rewards.shape[-1]):
            metrics[f"selfsup/reward_level_{k}"] = (
                jnp.where(valid[..., k], jax.lax.stop_gradient(rewards[..., k]), 0.0).sum(),
                valid[..., k].sum().astype(jnp.float32),
            )
    else:
        logits = level_logits(model, params, reference_params, head_params, batch, loss_cfg, rng)
        degree = classify_loss(logits, valid).mean(-1)
        right = (jnp.argmax(logits, -1) == jnp.arange(logits.shape[-1])) & valid
        metrics["selfsup/accuracy"] = (right.sum().astype(jnp.float32), valid.sum().astype(jnp.float32))
    metrics["selfsup/loss"] = (jax.lax.stop_gradient(degree).sum(), jnp.float32(degree.shape[0]))
    return degree, metrics


def degree_term(loss_cfg):
    """The pair objective's add-on term: total = base + λ·Σ_pairs degree; the ``loss`` metric becomes the total,
    the degree metrics are added (``aux``: the classify head's params, or None)."""
    weight = loss_cfg.selfsup.weight

    def term(view, params, frozen, batch, logps, rng, aux, loss_sum, metrics) -> tuple[jax.Array, Metrics]:
        degree, degree_metrics = degree_objective(view, params, frozen, batch, logps, loss_cfg, rng, aux)
        extra = weight * degree.sum()
        total, count = metrics["loss"]
        return loss_sum + extra, metrics | degree_metrics | {"loss": (total + jax.lax.stop_gradient(extra), count)}

    return term


# ---------------------------------------------------------------------------------------------
# The classify head: the objective's auxiliary state, its own parameters and Adam state in TrainState.head
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassifyHead:
    """Zero-initialised ``kernel [D, K+1]`` and ``bias [K+1]`` with their own Adam at the policy's schedule."""

    hidden_size: int
    classes: int

    def init(self, schedule: optax.Schedule) -> dict[str, Any]:
        params = {
            "kernel": jnp.zeros((self.hidden_size, self.classes), jnp.float32),
            "bias": jnp.zeros((self.classes,), jnp.float32),
        }
        return {"params": params, "opt_state": optax.adam(schedule).init(params)}

    def update(self, head: dict[str, Any], grads: Any, schedule: optax.Schedule) -> dict[str, Any]:
        """One Adam step of the head with ``grads`` (already divided by the global pair count)."""
        updates, opt_state = optax.adam(schedule).update(grads, head["opt_state"], head["params"])
        return {"params": optax.apply_updates(head["params"], updates), "opt_state": opt_state}


def classify_head(loss_cfg, hidden_size: int) -> ClassifyHead | None:
    """The head ``classify`` trains (None otherwise)."""
    if not (selfsup_active(loss_cfg) and loss_cfg.selfsup.mode == "classify"):
        return None
    return ClassifyHead(hidden_size, loss_cfg.selfsup.levels + 1)
