"""Train state pytree, optimizer, and sharded parameter initialisation."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspo.models import Decoder, ModelConfig, param_logical_names
from jaxspo.sharding import Rules, named_sharding


@struct.dataclass
class TrainState:
    """Everything that changes during training (donated to, and returned by, the step)."""

    step: jax.Array  # [] int32, optimizer steps taken
    params: nnx.State  # trainable policy parameters
    opt_state: optax.OptState
    rng: jax.Array  # key for stochastic parts of the step, split visibly each step
    head: Any = None  # auxiliary trainable head with its own optimizer state (selfsup classify); never exported
    reference: Any = None  # the moving reference of loss.reference_sync (jaxspo.train.reference_sync), or None


def abstract_model(model_cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and parameter shapes of the policy, without allocating anything."""
    model = nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


def map_with_logical_names(fn: Callable[[Any, tuple], Any], params: nnx.State) -> Any:
    """``fn(leaf, logical_names)`` for every parameter, returned with ``params``' tree structure."""
    names = jax.tree.leaves(param_logical_names(params), is_leaf=lambda x: isinstance(x, tuple))
    leaves, treedef = jax.tree.flatten(params)
    if len(names) != len(leaves):
        raise ValueError(f"{len(names)} logical-name entries for {len(leaves)} parameters")
    return jax.tree.unflatten(treedef, [fn(leaf, n) for leaf, n in zip(leaves, names)])


def param_shardings(abstract_params: nnx.State, mesh: Mesh, rules: Rules) -> Any:
    """NamedSharding per parameter, from its logical axis names and the rule table."""
    return map_with_logical_names(lambda p, n: named_sharding(n, p.shape, mesh, rules), abstract_params)


def init_params(model_cfg: ModelConfig, seed: int, shardings: Any) -> nnx.State:
    """Random parameters created directly on their shards (never gathered on one device)."""

    @functools.partial(jax.jit, out_shardings=shardings)
    def init() -> nnx.State:
        return nnx.split(Decoder(model_cfg, rngs=nnx.Rngs(seed)), nnx.Param)[1]

    return init()


def learning_rate_schedule(opt, total_steps: int, peak_lr: float) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak_lr``, then cosine/linear decay to ``min_lr_ratio·peak`` or constant."""
    warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if opt.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak_lr, decay_steps, alpha=opt.min_lr_ratio)
    elif opt.schedule == "linear":
        decay = optax.linear_schedule(peak_lr, peak_lr * opt.min_lr_ratio, decay_steps)
    else:
        decay = optax.constant_schedule(peak_lr)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup), decay], [warmup])


def make_optimizer(opt, schedule: optax.Schedule, abstract_params: nnx.State) -> optax.GradientTransformation:
    """AdamW (weight decay skipped on norm scales) after global-norm clipping."""
    decay_mask = map_with_logical_names(lambda _, n: "norm" not in n, abstract_params)
    adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
    if opt.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.max_grad_norm), adamw)
    return adamw


def state_shardings(
    tx: optax.GradientTransformation,
    abstract_params: nnx.State,
    params_sharding: Any,
    mesh: Mesh,
    aux: Any = None,
    schedule: optax.Schedule | None = None,
    reference: bool = False,
) -> TrainState:
    """Shardings of the whole TrainState: optimizer moments follow their parameters; the objective's auxiliary
    state (``aux``, :class:`jaxspo.objectives.base.AuxState`, initialised at ``schedule``) is replicated; a moving
    ``reference`` is sharded as the params."""
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sharding = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        abstract_opt,
        params_sharding,
        transform_non_params=lambda _: replicated,
    )
    head = None if aux is None else jax.tree.map(lambda _: replicated, jax.eval_shape(lambda: aux.init(schedule)))
    return TrainState(
        step=replicated,
        params=params_sharding,
        opt_state=opt_sharding,
        rng=replicated,
        head=head,
        reference=params_sharding if reference else None,
    )


def init_state(
    tx: optax.GradientTransformation,
    params: nnx.State,
    seed: int,
    shardings: TrainState,
    aux: Any = None,
    schedule: optax.Schedule | None = None,
    reference: nnx.State | None = None,
) -> TrainState:
    """Fresh optimizer state for ``params``, the objective's auxiliary state ``aux`` and a copy of a moving
    ``reference`` (placed by ``shardings``, :func:`state_shardings`); the loop and ``jaxspo compile`` (under
    ``jax.eval_shape``) both build it here."""

    @functools.partial(jax.jit, out_shardings=shardings)
    def init(p: nnx.State, r: nnx.State | None) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=jax.tree.map(jnp.copy, p),  # own buffers: the step donates them, the caller keeps p
            opt_state=tx.init(p),
            rng=jax.random.key_data(jax.random.key(seed)),
            head=None if aux is None else aux.init(schedule),
            reference=jax.tree.map(jnp.copy, r),  # own buffers: the step donates them
        )

    return init(params, reference)
