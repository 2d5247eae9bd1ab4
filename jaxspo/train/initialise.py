"""A phase's fresh train state and jitted step, built one way for the training loop and for ``jaxspo compile``."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from jaxspo.train.reference_sync import carries_reference
from jaxspo.train.state import TrainState, init_state, learning_rate_schedule, make_optimizer, state_shardings
from jaxspo.train.step import TrainStep, make_train_step


def initialise(
    cfg: Any,
    mesh: Mesh,
    model: Any,
    abstract: Any,
    sharding: Any,
    params: Any,
    objective: Any,
    steps: int,
    peak_lr: float,
    batch_size: int,
    reference: Any = None,
) -> tuple[TrainState, TrainStep]:
    """The train state (optimizer moments and the objective's auxiliary state, e.g. selfsup's classify head) and
    the step of ``objective`` for ``steps`` steps peaking at ``peak_lr``.

    ``model``: a graph definition or a model view (LoRA); ``abstract``/``sharding``: the trained params' shapes
    and shardings; ``params``: their values, or None for an abstract state (``jax.ShapeDtypeStruct``, compiling
    ahead of time); ``reference``: the resident reference, which the state carries (and the step moves) under
    ``loss.reference_sync`` (:mod:`jaxspo.train.reference_sync`)."""
    schedule = learning_rate_schedule(cfg.optimizer, steps, peak_lr)
    tx = make_optimizer(cfg.optimizer, schedule, abstract)
    carried = carries_reference(cfg, objective.reads_frozen)
    shardings = state_shardings(tx, abstract, sharding, mesh, objective.aux, schedule, carried)

    def init(p: Any, r: Any) -> TrainState:
        return init_state(tx, p, cfg.trainer.seed, shardings, objective.aux, schedule, r if carried else None)

    state = jax.eval_shape(init, abstract, abstract) if params is None else init(params, reference)
    return state, make_train_step(cfg, mesh, model, tx, schedule, shardings, objective, batch_size)
