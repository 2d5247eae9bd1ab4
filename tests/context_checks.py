"""Shared pieces of the context-parallel tests (splash and ring under ``mesh.context``): the meshes, the
tolerance, a loss's value and q/k/v gradients jitted under a mesh, the comparison with a reference, and the tiny
DPO step's outputs on a mesh with the one-device reference they are held to."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from jaxspo.config import load_config
from jaxspo.lora.views import as_model
from jaxspo.models import ModelConfig
from jaxspo.objectives import build_objective
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh
from jaxspo.train.state import abstract_model, init_params, param_shardings
from tests.test_fast_logps import GEMMA2_LIKE, pairs

ATOL = 1e-5
MESHES = {
    "2-1-1-4": {"data": 2, "fsdp": 1, "tensor": 1, "context": 4},
    "1-2-2-2": {"data": 1, "fsdp": 2, "tensor": 2, "context": 2},
}


def on_mesh(loss: Callable, mesh) -> Callable:
    """Jitted ``(q, k, v, sliding or mask, weights) -> ((loss, out), (dq, dk, dv))`` of ``loss`` under ``mesh``."""

    def run(*args):
        with activation_sharding(mesh, DEFAULT_RULES):
            return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(*args)

    return jax.jit(run)


def assert_matches(out, grads, expected, expected_grads, seen: np.ndarray, sliding: bool) -> None:
    """Outputs ``[B, T, H, D]`` at the queries that ``seen`` (``[B, T]``) and the q/k/v gradients agree within
    :data:`ATOL`; each expected gradient is non-trivial."""
    np.testing.assert_allclose(
        np.asarray(out)[seen], np.asarray(expected)[seen], atol=ATOL, rtol=0, err_msg=f"sliding={sliding}"
    )
    for g, e, name in zip(grads, expected_grads, "qkv"):
        assert np.abs(np.asarray(e)).max() > 0.1, name
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(e), atol=ATOL, rtol=0, err_msg=f"d{name}, sliding={sliding}"
        )


MEANS = ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected")


def dpo_outputs(
    batch: dict[str, np.ndarray], mesh_shape: dict[str, int], devices: list, model: ModelConfig = GEMMA2_LIKE
) -> tuple:
    """(mean log-probs and rewards, DPO loss sum, its gradient) of the policy (gemma2-like by default) against a
    resident reference, on the mesh ``mesh_shape`` of ``devices``; ``batch`` holds padded or packed pair rows."""
    mesh = make_mesh(mesh_shape, devices)
    graphdef, abstract = abstract_model(model)
    shardings = param_shardings(abstract, mesh, DEFAULT_RULES)
    policy, reference = init_params(model, 1, shardings), init_params(model, 2, shardings)
    layout = "packed" if "packed_tokens" in batch else "padded"
    objective = build_objective(load_config(None, ["loss.beta=0.5", f"data.layout={layout}"]))
    shardings = objective.batch_shardings(mesh, DEFAULT_RULES, 8)
    placed = objective.batch({k: jax.device_put(batch[k], s) for k, s in shardings.fields().items()})
    loss_fn = lambda p, r, b: objective.loss(as_model(graphdef), p, r, b)  # noqa: E731

    @jax.jit
    def run(p, r, b):
        with activation_sharding(mesh, DEFAULT_RULES):
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, r, b)
            return {name: metrics[name][0] / metrics[name][1] for name in MEANS}, loss, grads

    return jax.device_get(run(policy, reference, placed))


XLA_GEMMA2_LIKE = dataclasses.replace(GEMMA2_LIKE, attention="xla")
_ONE_DEVICE: dict[str, tuple] = {}  # repr(model) → its outputs (a model config holds lists: not hashable)


def one_device_outputs(model: ModelConfig = XLA_GEMMA2_LIKE) -> tuple:
    """:func:`dpo_outputs` of dense ``xla`` attention on one device over the padded rows of ``pairs(8)``, computed
    once per process: every context-parallel DPO test compares against it, whatever its layout and row width (the
    packed or wider padded rows of the same pairs give the same log-probs, loss and gradients:
    tests/test_fast_logps.py and the context tests' own padded cases)."""
    key = repr(model)
    if key not in _ONE_DEVICE:
        _ONE_DEVICE[key] = dpo_outputs(pairs(8), {"data": 1}, jax.devices()[:1], model)
    return _ONE_DEVICE[key]
