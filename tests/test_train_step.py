"""The sharded train step: mesh invariance, frozen reference, exact gradient accumulation."""

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxspo.config import Config, load_config
from jaxspo.models import ModelConfig
from jaxspo.sharding import make_mesh
from jaxspo.train.state import (
    abstract_model,
    init_params,
    init_state,
    learning_rate_schedule,
    make_optimizer,
    param_shardings,
    state_shardings,
    TrainState,
)
from jaxspo.objectives import build_objective
from jaxspo.lora.views import as_model
from jaxspo.train.step import TrainStep, make_train_step

TINY = ModelConfig(vocab_size=24, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


def tiny_config(**trainer) -> Config:
    cfg = load_config(None, ["loss.beta=0.5", "mesh.data=-1"])
    return dataclasses.replace(cfg, model=TINY, trainer=dataclasses.replace(cfg.trainer, **trainer))


def random_pairs(batch: int, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Pairs sharing a 4-token prompt; responses of random length, right-padded."""
    rng = np.random.default_rng(seed)
    out = {}
    prompt = rng.integers(4, TINY.vocab_size, size=(batch, 4))
    for side in ("chosen", "rejected"):
        tokens = np.zeros((batch, length), np.int32)
        valid = np.zeros((batch, length), bool)
        mask = np.zeros((batch, length), bool)
        for i in range(batch):
            n = 4 + int(rng.integers(2, length - 4))
            tokens[i, :4] = prompt[i]
            tokens[i, 4:n] = rng.integers(4, TINY.vocab_size, size=n - 4)
            valid[i, :n] = True
            mask[i, 4:n] = True
        out |= {f"{side}_tokens": tokens, f"{side}_valid": valid, f"{side}_loss_mask": mask}
    out["soft_label"] = np.ones(batch, np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """The tiny model on a mesh: graph, parameter shardings, the policy's train state, the frozen reference, and
    the optimizer (with its schedule and state shardings) that every step built on it shares."""

    mesh: Any
    graphdef: Any
    shardings: Any
    state: TrainState
    reference: Any
    tx: Any
    schedule: Any
    state_sharding: Any


def tiny_model(cfg: Config, mesh_shape: dict[str, int]) -> TinyModel:
    """``cfg.model`` (policy seed 1, reference seed 2) and ``cfg.optimizer`` on a mesh of ``mesh_shape``."""
    mesh = make_mesh(mesh_shape)
    graphdef, abstract = abstract_model(cfg.model)
    shardings = param_shardings(abstract, mesh, cfg.mesh.rules)
    policy = init_params(cfg.model, 1, shardings)
    reference = init_params(cfg.model, 2, shardings)
    schedule = learning_rate_schedule(cfg.optimizer, 10, 1e-2)
    tx = make_optimizer(cfg.optimizer, schedule, abstract)
    st_sharding = state_shardings(tx, abstract, shardings, mesh)
    state = init_state(tx, policy, 0, st_sharding)
    return TinyModel(mesh, graphdef, shardings, state, reference, tx, schedule, st_sharding)


def train_step(model: TinyModel, cfg: Config, batch_size: int) -> TrainStep:
    """The jitted step of ``cfg`` (its loss, trainer and mesh rules; its model and optimizer are ``model``'s) for
    batches of ``batch_size``. The step donates its state: pass it a copy of ``model.state``."""
    objective = build_objective(cfg)
    return make_train_step(
        cfg, model.mesh, model.graphdef, model.tx, model.schedule, model.state_sharding, objective, batch_size
    )


def fresh_state(model: TinyModel) -> TrainState:
    """A copy of ``model.state`` for a step to donate."""
    return jax.tree.map(jax.numpy.copy, model.state)


def build(cfg: Config, mesh_shape: dict[str, int], batch_size: int):
    model = tiny_model(cfg, mesh_shape)
    step = train_step(model, cfg, batch_size)
    return model.mesh, model.graphdef, model.shardings, model.state, model.reference, step


# (data, fsdp, tensor): parameters split 8 ways by fsdp alone, not split at all (the batch split 8 ways), and split
# over all three axes at once (data with fsdp, and tensor, each of 2)
MESHES = [(1, 8, 1), (8, 1, 1), (2, 2, 2)]


def test_dpo_loss_and_gradients_identical_across_meshes():
    cfg = tiny_config()
    host = random_pairs(8)
    results = []
    for data, fsdp, tensor in MESHES:
        mesh, graphdef, shardings, state, reference, step = build(
            cfg, {"data": data, "fsdp": fsdp, "tensor": tensor}, 8
        )
        batch = step.place(host)
        objective = step.objective
        grad_fn = jax.jit(
            jax.grad(lambda p, r, b: objective.loss(as_model(graphdef), p, r, b)[0]),
            in_shardings=(shardings, shardings, step.batch_sharding),
            out_shardings=shardings,
        )
        grads = grad_fn(state.params, reference, batch)
        sharded = any(len(set(x.sharding.spec) - {None}) for x in jax.tree.leaves(grads))
        assert sharded == (fsdp * tensor > 1)  # parameters (and so gradients) really are split
        _, metrics = step.fn(state, reference, batch)
        results.append((jax.device_get(grads), jax.device_get(metrics)))
    base_grads, base_metrics = results[0]
    assert abs(float(base_metrics["loss"]) - np.log(2.0)) > 1e-3  # policy ≠ reference: a real gradient
    for (grads, metrics), shape in zip(results[1:], MESHES[1:]):
        for name in ("loss", "grad_norm", "rewards/margins", "logps/chosen"):
            np.testing.assert_allclose(
                metrics[name], base_metrics[name], rtol=1e-5, atol=1e-5, err_msg=f"{name} on mesh {shape}"
            )
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"gradient on mesh {shape}")


def test_policy_changes_and_reference_stays_frozen():
    cfg = tiny_config()
    mesh, _, _, state, reference, step = build(cfg, {"data": 2, "fsdp": 2, "tensor": 2}, 8)
    reference_before = jax.device_get(reference)
    policy_before = jax.device_get(state.params)
    for seed in range(3):
        batch = step.place(random_pairs(8, seed=seed))
        state, _ = step.fn(state, reference, batch)
    for a, b in zip(jax.tree.leaves(jax.device_get(reference)), jax.tree.leaves(reference_before)):
        np.testing.assert_array_equal(a, b)
    changed = [
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(policy_before))
    ]
    assert all(changed), "every policy parameter should move"
    assert int(state.step) == 3


def test_gradient_accumulation_is_exact():
    host = random_pairs(8, seed=3)
    model = tiny_model(tiny_config(), {"data": 2, "fsdp": 2, "tensor": 2})  # one policy, a step per accumulation
    outs = []
    for accum in (1, 4):
        step = train_step(model, tiny_config(grad_accum_steps=accum), 8)
        state, metrics = step.fn(fresh_state(model), model.reference, step.place(host))
        outs.append((jax.device_get(metrics), jax.device_get(state.params)))
    for name in ("loss", "grad_norm", "rewards/accuracies", "tokens"):
        np.testing.assert_allclose(outs[0][0][name], outs[1][0][name], rtol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
