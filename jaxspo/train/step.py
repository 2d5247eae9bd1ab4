"""The pure, jit-sharded train step: ``(state, frozen, batch) -> (state, metrics)``.

:func:`make_train_step` is the one factory used by the training loop (and by ahead-of-time
compilation): it returns the jitted function together with its in/out shardings and donated args.
Two objectives share it: ``"sft"`` (token-mean NLL on completions) and ``"preference"``
(the configured loss terms on chosen/rejected pairs, both sides in one concatenated forward).

The step's model is a :class:`jaxspo.lora.views.FullModel` (a graph definition: the state's params are the whole model and
``frozen`` is the resident reference's params, or None) or a LoRA model
(:class:`jaxspo.lora.model.AdaptedModel`: the params are the adapters, ``frozen`` holds the base).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspo.losses import PairLogps, get_loss, offset_losses, preference_objective
from jaxspo.sharding import activation_sharding, logical_to_spec
from jaxspo.train import selfsup
from jaxspo.train.kl_regularizer import KL_FIELDS, kl_active, kl_rows, with_kl_regulariser
from jaxspo.train.length_desensitise import desensitising_weights
from jaxspo.train.list_objective import LIST_FIELDS, LIST_RANKS, list_objective_fn, uses_lists
from jaxspo.train.logprobs import sequence_logps
from jaxspo.lora.views import as_model
from jaxspo.train.packed import PACKED_RANKS, is_packed, packed_pair_logps, real_tokens
from jaxspo.data.layout import PACKED_FIELDS
from jaxspo.data.pair_packing import ROW_FIELDS
from jaxspo.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, tuple[jax.Array, jax.Array]]
# objective(params, frozen, micro_batch, rng, head_params) -> (loss sum, metrics as (sum, count));
# rng: key data [2] uint32 (LoRA dropout); head_params: selfsup's classify head (or None)
Objective = Callable[..., tuple[jax.Array, Metrics]]

PREFERENCE_FIELDS = (
    "chosen_tokens",
    "chosen_valid",
    "chosen_loss_mask",
    "rejected_tokens",
    "rejected_valid",
    "rejected_loss_mask",
    "soft_label",
)
SFT_FIELDS = ("tokens", "valid", "loss_mask")
TIME_FIELDS = frozenset(
    SFT_FIELDS + PREFERENCE_FIELDS[:-1] + ROW_FIELDS
)  # [B, T] rows whose time axis is split over context


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A compiled-on-first-call step with the shardings it was built for."""

    fn: Callable[[TrainState, Any, Batch], tuple[TrainState, dict[str, jax.Array]]]
    state_sharding: TrainState
    reference_sharding: Any
    batch_sharding: dict[str, NamedSharding]
    donate_argnums: tuple[int, ...]


def batch_shardings(
    fields: tuple[str, ...], ranks: dict[str, int], mesh: Mesh, rules, batch_size: int
) -> dict[str, NamedSharding]:
    """Each batch array is split along its leading (pair) axis by the ``batch`` rule, and the token rows
    ``[B, T]`` of :data:`TIME_FIELDS` also along time by the ``length`` rule over ``context`` (every batch
    width divides by ``mesh.context``: config validation and :meth:`MeshConfig.width_multiple`)."""
    out = {}
    for name in fields:
        timed = name in TIME_FIELDS
        names = ("batch",) + ("length",) * timed + (None,) * (ranks[name] - 1 - timed)
        shape = (batch_size,) + (mesh.shape.get("context", 1),) * timed + (1,) * (ranks[name] - 1 - timed)
        out[name] = NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))
    return out


def pair_logps(
    graphdef: nnx.GraphDef, params: nnx.State, batch: Batch, token_weight: jax.Array | None = None
) -> tuple[jax.Array, ...]:
    """Chosen and rejected sequence log-probs from ONE forward over the 2B concatenated rows.

    Returns (chosen [B], rejected [B], chosen_length [B], rejected_length [B]). Packed rows
    (``data.layout: packed``) take :func:`jaxspo.train.packed.packed_pair_logps` instead. ``token_weight``
    ``[2B, T]``: weighted sums (LD-DPO's, :mod:`jaxspo.train.length_desensitise`).
    """
    if is_packed(batch):
        return packed_pair_logps(graphdef, params, batch)
    tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]])  # [2B, T]
    valid = jnp.concatenate([batch["chosen_valid"], batch["rejected_valid"]])
    mask = jnp.concatenate([batch["chosen_loss_mask"], batch["rejected_loss_mask"]])
    logps, lengths = sequence_logps(graphdef, params, tokens, valid, mask, token_weight)  # [2B]
    half = batch["chosen_tokens"].shape[0]
    return logps[:half], logps[half:], lengths[:half], lengths[half:]


PRECOMPUTED_FIELDS = ("reference_chosen_logps", "reference_rejected_logps")
OFFSET_FIELD = "offset"  # per-pair [B] float32, read by losses registered with needs_offset


def batch_fields(phase: str, loss_cfg, layout: str = "padded", pack_pairs: bool = False) -> tuple[str, ...]:
    """Names of the arrays a step of ``phase`` reads from its batch (``layout``: ``data.layout``; ``pack_pairs``:
    ``data.pack_pairs``, rows of several pairs and each slot's pair index)."""
    if phase == "sft":
        return SFT_FIELDS
    if uses_lists(loss_cfg):
        return LIST_FIELDS
    offset = (OFFSET_FIELD,) if offset_losses(loss_cfg.terms) else ()
    pairs = (ROW_FIELDS if pack_pairs else PACKED_FIELDS) + ("soft_label",) if layout == "packed" else PREFERENCE_FIELDS
    if needs_reference(loss_cfg) and loss_cfg.reference == "precomputed":
        return pairs + PRECOMPUTED_FIELDS + offset + selfsup.batch_fields(loss_cfg)
    return pairs + offset + selfsup.batch_fields(loss_cfg)


def in_step_reference(loss_cfg) -> bool:
    """Whether the step runs a reference forward itself (resident copy, or the base with adapters off)."""
    return needs_reference(loss_cfg) and loss_cfg.reference in ("resident", "adapter_off")


def needs_reference(loss_cfg) -> bool:
    """Whether any configured loss term uses reference log-probs (and a reference is configured)."""
    uses = any(get_loss(name).needs_reference for name in loss_cfg.terms) or selfsup.needs_reference(loss_cfg)
    return loss_cfg.reference != "none" and uses


def preference_objective_fn(graphdef: Any, loss_cfg) -> Objective:
    """The configured preference loss on a micro-batch of pairs (``graphdef``: a graph definition or a model object)."""
    use_reference = needs_reference(loss_cfg)
    model = as_model(graphdef)

    def objective(
        params: nnx.State, reference_params: Any, batch: Batch, rng: jax.Array | None = None, head_params: Any = None
    ) -> tuple[jax.Array, Metrics]:
        weight = None  # LD-DPO (loss.ld_alpha < 1): tokens past the pair's shared length weigh α
        if loss_cfg.ld_alpha < 1.0:
            weight = desensitising_weights(batch["chosen_loss_mask"], batch["rejected_loss_mask"], loss_cfg.ld_alpha)
        with jax.named_scope("policy"):
            chosen, rejected, chosen_len, rejected_len = pair_logps(
                *model.policy(params, reference_params, rng), batch, weight
            )
        ref_chosen = ref_rejected = None
        if use_reference and loss_cfg.reference == "precomputed":
            ref_chosen, ref_rejected = batch["reference_chosen_logps"], batch["reference_rejected_logps"]
        elif use_reference:
            with jax.named_scope("reference"):
                ref = pair_logps(*model.reference(reference_params), batch, weight)
            ref_chosen, ref_rejected = jax.lax.stop_gradient(ref[0]), jax.lax.stop_gradient(ref[1])
        logps = PairLogps(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            chosen_len,
            rejected_len,
            batch["soft_label"],
            batch.get(OFFSET_FIELD),
        )
        loss_sum, metrics = preference_objective(logps, loss_cfg, jnp.ones_like(chosen))
        if selfsup.active(loss_cfg):  # + λ·degree loss on the degraded copies (docs/methods/selfsup.md)
            degree = selfsup.degree_objective(model, params, reference_params, batch, logps, loss_cfg, rng, head_params)
            loss_sum, metrics = selfsup.add_degree_term(loss_sum, metrics, *degree, loss_cfg.selfsup.weight)
        metrics["tokens"] = (real_tokens(batch), jnp.float32(1.0))
        return loss_sum, metrics

    return objective


def sft_objective_fn(graphdef: Any) -> Objective:
    """Token-level NLL summed over completion tokens (divided by the global token count later)."""
    model = as_model(graphdef)

    def objective(
        params: nnx.State, reference_params: Any, batch: Batch, rng: jax.Array | None = None, head_params: Any = None
    ) -> tuple[jax.Array, Metrics]:
        logps, lengths = sequence_logps(
            *model.policy(params, reference_params, rng), batch["tokens"], batch["valid"], batch["loss_mask"]
        )
        loss_sum = -logps.sum()
        count = lengths.sum()
        return loss_sum, {
            "loss": (loss_sum, count),
            "tokens": (batch["valid"].sum().astype(jnp.float32), jnp.float32(1.0)),
        }

    return objective


def _global_count(phase: str, batch: Batch) -> jax.Array:
    """Denominator of the step's loss: pairs (lists) for preference, completion tokens for SFT."""
    if phase == "sft":
        return batch["loss_mask"][:, 1:].sum().astype(jnp.float32)
    rows = next(
        name for name in ("list_tokens", "soft_label") if name in batch
    )  # one per pair (packed rows may hold several)
    return jnp.float32(batch[rows].shape[0])


def make_train_step(
    cfg,
    mesh: Mesh,
    graphdef: Any,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    state_sharding: TrainState,
    phase: str,
    batch_size: int,
) -> TrainStep:
    """Builds the jitted step for ``phase`` ("sft" or "preference").

    Gradients are accumulated exactly over ``cfg.trainer.grad_accum_steps`` micro-batches: each
    micro-batch contributes the gradient of its loss SUM, divided once by the global count.
    ``graphdef`` is the model's graph definition, or a model object such as a LoRA
    :class:`jaxspo.lora.model.AdaptedModel` (then only the adapters are trained; ``frozen`` holds the base).
    Micro-batch i's objective gets key data ``fold_in(step key, i)`` (LoRA dropout).
    """
    if phase not in ("sft", "preference"):
        raise ValueError(f"unknown phase '{phase}'")
    rules = cfg.mesh.rules
    objective = (
        sft_objective_fn(graphdef)
        if phase == "sft"
        else (list_objective_fn if uses_lists(cfg.loss) else preference_objective_fn)(graphdef, cfg.loss)
    )
    fields = batch_fields(phase, cfg.loss, cfg.data.layout, cfg.data.pack_pairs)
    special_ranks = LIST_RANKS | selfsup.FIELD_RANKS | PACKED_RANKS
    ranks = {
        name: special_ranks.get(name, 2 if name.endswith(("tokens", "valid", "mask", "response")) else 1)
        for name in fields + KL_FIELDS
    }
    batch_sharding = batch_shardings(fields, ranks, mesh, rules, batch_size)
    regularised = phase == "preference" and kl_active(cfg.loss)  # samples arrive as extra batch fields
    if regularised:
        objective = with_kl_regulariser(objective, graphdef, cfg.loss)
        batch_sharding |= batch_shardings(KL_FIELDS, ranks, mesh, rules, kl_rows(cfg.loss))
    accum = cfg.trainer.grad_accum_steps
    replicated = NamedSharding(mesh, PartitionSpec())

    def step(state: TrainState, reference_params: Any, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        with activation_sharding(mesh, rules):
            count = _global_count(phase, batch)
            micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)
            head_params = None if state.head is None else state.head["params"]  # selfsup's classify head
            grad_fn = jax.value_and_grad(lambda p, h, r, b, k: objective(p, r, b, k, h), argnums=(0, 1), has_aux=True)
            next_key, step_key = jax.random.split(jax.random.wrap_key_data(state.rng))
            micro_key = lambda i: jax.random.key_data(jax.random.fold_in(step_key, i))  # noqa: E731
            (_, metrics), grads = grad_fn(
                state.params, head_params, reference_params, jax.tree.map(lambda x: x[0], micro), micro_key(0)
            )

            def accumulate(carry, xs):
                micro_batch, i = xs
                (_, m), g = grad_fn(state.params, head_params, reference_params, micro_batch, micro_key(i))
                return jax.tree.map(jnp.add, carry, (g, m)), None

            if accum > 1:
                rest = jax.tree.map(lambda x: x[1:], micro)
                (grads, metrics), _ = jax.lax.scan(accumulate, (grads, metrics), (rest, jnp.arange(1, accum)))
            grads, head_grads = jax.tree.map(lambda g: g / count, grads)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            head = None if state.head is None else selfsup.update_head(state.head, head_grads, schedule)
        out = {"tokens": metrics.pop("tokens")[0]}  # real (non-pad) tokens in the step: a total
        out.update({name: total / jnp.maximum(n, 1.0) for name, (total, n) in metrics.items()})
        out["grad_norm"] = optax.tree.norm(grads)
        # Numerical guard: a non-finite loss or gradient never reaches the parameters or moments.
        finite = jnp.isfinite(out["loss"]) & jnp.isfinite(out["grad_norm"])
        params, opt_state, head = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old),
            (params, opt_state, head),
            (state.params, state.opt_state, state.head),
        )
        out["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        out["learning_rate"] = schedule(state.step)
        return TrainState(
            step=state.step + 1, params=params, opt_state=opt_state, rng=jax.random.key_data(next_key), head=head
        ), out

    uses_reference = phase == "preference" and (in_step_reference(cfg.loss) or regularised)
    reference_sharding = as_model(graphdef).frozen_sharding(state_sharding.params, uses_reference)
    fn = jax.jit(
        step,
        in_shardings=(state_sharding, reference_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    return TrainStep(fn, state_sharding, reference_sharding, batch_sharding, donate_argnums=(0,))
