"""The pure, jit-sharded train step: ``(state, frozen, batch) -> (state, metrics)``.

:func:`make_train_step` is the one factory used by the training loop (and by ahead-of-time
compilation): it returns the jitted function together with its in/out shardings and donated args.
It takes an :class:`~jaxspo.objectives.Objective` (:func:`jaxspo.objectives.build_objective`), whose typed
batch gives the batch shardings and whose pure loss it differentiates; it imports no objective.

The step's model is a :class:`jaxspo.lora.views.FullModel` (a graph definition: the state's params are the whole
model and ``frozen`` is the resident reference's params, or None) or a LoRA model
(:class:`jaxspo.lora.model.AdaptedModel`: the params are the adapters, ``frozen`` holds the base).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspo.sharding import activation_sharding
from jaxspo.lora.views import as_model
from jaxspo.train.reference_sync import synced
from jaxspo.train.state import TrainState

if TYPE_CHECKING:
    from jaxspo.objectives.base import Objective


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A compiled-on-first-call step with the shardings it was built for (``batch_sharding``: a typed batch of
    shardings, :meth:`~jaxspo.objectives.Objective.batch_shardings`)."""

    fn: Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, jax.Array]]]
    state_sharding: TrainState
    reference_sharding: Any
    batch_sharding: Any
    donate_argnums: tuple[int, ...]
    objective: Objective

    def place(self, arrays: dict[str, Any]) -> Any:
        """The typed batch of the objective's fields of ``arrays`` (host arrays, the same on every process), placed
        on the step's batch shardings."""
        shardings = self.batch_sharding.fields()
        return self.objective.batch({k: jax.device_put(arrays[k], s) for k, s in shardings.items() if k in arrays})


def _gradients(objective: Objective, view: Any, state: TrainState, frozen: Any, batch: Any, accum: int):
    """(metrics as (sum, count), (policy grads, aux grads), next key data) summed over ``accum`` micro-batches.

    Micro-batch i's loss gets key data ``fold_in(step key, i)`` (LoRA dropout)."""
    micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)
    aux = None if state.head is None else state.head["params"]  # the objective's auxiliary trainable params
    grad_fn = jax.value_and_grad(
        lambda p, a, f, b, k: objective.loss(view, p, f, b, k, a), argnums=(0, 1), has_aux=True
    )
    next_key, step_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    micro_key = lambda i: jax.random.key_data(jax.random.fold_in(step_key, i))  # noqa: E731
    (_, metrics), grads = grad_fn(state.params, aux, frozen, jax.tree.map(lambda x: x[0], micro), micro_key(0))

    def accumulate(carry, xs):
        micro_batch, i = xs
        (_, m), g = grad_fn(state.params, aux, frozen, micro_batch, micro_key(i))
        return jax.tree.map(jnp.add, carry, (g, m)), None

    if accum > 1:
        rest = jax.tree.map(lambda x: x[1:], micro)
        (grads, metrics), _ = jax.lax.scan(accumulate, (grads, metrics), (rest, jnp.arange(1, accum)))
    return metrics, grads, jax.random.key_data(next_key)


def _guarded(state: TrainState, new: TrainState, out: dict[str, jax.Array]) -> TrainState:
    """``new``, or ``state``'s params, moments and aux state where the loss or gradient is non-finite (a
    non-finite update never reaches the parameters or moments); sets ``out["nonfinite"]``."""
    finite = jnp.isfinite(out["loss"]) & jnp.isfinite(out["grad_norm"])
    params, opt_state, head = jax.tree.map(
        lambda a, b: jnp.where(finite, a, b),
        (new.params, new.opt_state, new.head),
        (state.params, state.opt_state, state.head),
    )
    out["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    return new.replace(params=params, opt_state=opt_state, head=head)


def make_train_step(
    cfg,
    mesh: Mesh,
    graphdef: Any,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    state_sharding: TrainState,
    objective: Objective,
    batch_size: int,
) -> TrainStep:
    """Builds the jitted step of ``objective`` for batches of ``batch_size`` pairs (lists, SFT rows).

    Gradients are accumulated exactly over ``cfg.trainer.grad_accum_steps`` micro-batches: each
    micro-batch contributes the gradient of its loss SUM, divided once by the global count
    (``objective.count``). ``graphdef`` is the model's graph definition, or a model object such as a LoRA
    :class:`jaxspo.lora.model.AdaptedModel` (then only the adapters are trained; ``frozen`` holds the base).
    """
    rules, accum, view = cfg.mesh.rules, cfg.trainer.grad_accum_steps, as_model(graphdef)
    batch_sharding = objective.batch_shardings(mesh, rules, batch_size)
    replicated = NamedSharding(mesh, PartitionSpec())

    def step(state: TrainState, frozen: Any, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        frozen = frozen if state.reference is None else state.reference  # loss.reference_sync: the moving one
        with activation_sharding(mesh, rules):
            count = objective.count(batch)
            metrics, grads, next_rng = _gradients(objective, view, state, frozen, batch, accum)
            grads, aux_grads = jax.tree.map(lambda g: g / count, grads)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            head = None if state.head is None else objective.aux.update(state.head, aux_grads, schedule)
        out = {"tokens": metrics.pop("tokens")[0]}  # real (non-pad) tokens in the step: a total
        out.update({name: total / jnp.maximum(n, 1.0) for name, (total, n) in metrics.items()})
        out["grad_norm"] = optax.tree.norm(grads)
        new = TrainState(state.step + 1, params, opt_state, next_rng, head, state.reference)
        new = _guarded(state, new, out)
        if state.reference is not None:
            new = new.replace(reference=synced(state.reference, new.params, new.step, cfg.loss.reference_sync))
        out["learning_rate"] = schedule(state.step)
        return new, out

    carried = state_sharding.reference is not None  # the state holds the reference: the frozen input is None
    reference_sharding = view.frozen_sharding(state_sharding.params, objective.reads_frozen and not carried)
    fn = jax.jit(
        step,
        in_shardings=(state_sharding, reference_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    return TrainStep(fn, state_sharding, reference_sharding, batch_sharding, (0,), objective)
