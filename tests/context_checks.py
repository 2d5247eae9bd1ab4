"""Shared pieces of the context-parallel attention tests (splash and ring under ``mesh.context``): the meshes,
the tolerance, a loss's value and q/k/v gradients jitted under a mesh, and the comparison with a reference."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from jaxspo.sharding import DEFAULT_RULES, activation_sharding

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
