"""The zig-zag ring (``model.context_attention=ring_zigzag``): rows in zig-zag order give the outputs and q/k/v
gradients of dense ``xla`` attention in the row's order (fp32, ≤ 1e-5) for padded and packed rows on meshes
(2, 1, 1, 4) and (1, 2, 2, 2); the DPO step equals one device; every device computes the same number of key
blocks on a causal row, where the contiguous ring's last device computes about twice the average."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.models.attention import MaskSpec
from jaxspo.models.context import context_attention
from jaxspo.models.zigzag import zigzag_slots
from jaxspo.sharding import make_mesh
from tests.context_checks import MESHES, assert_matches, on_mesh
from tests.test_ring_attention import SCALE, _case, _xla_loss


def _zigzag_loss(spec: MaskSpec, order: np.ndarray, softcap: float):
    """The ring over rows taken in zig-zag ``order``; output back in the row's order."""
    rows = lambda x: None if x is None else jnp.take(x, order, axis=1)  # noqa: E731
    zig = MaskSpec(
        jnp.asarray(order), rows(spec.key_valid), rows(spec.segments), rows(spec.positions), spec.window, zigzag=True
    )

    def loss(q, k, v, sliding, weights):
        out = context_attention(
            rows(q),
            rows(k),
            rows(v),
            zig,
            sliding,
            scale=SCALE,
            softcap=softcap,
            implementation="chunked",
            block=8,
            context="ring_zigzag",
        )
        out = jnp.take(out, np.argsort(order), axis=1)
        return jnp.sum(out * weights), out

    return loss


@pytest.mark.parametrize(
    "mesh_name, layout, kv_heads, window, softcap",
    [
        pytest.param("2-1-1-4", "padded", 2, 5, 0.0, id="2-1-1-4-padded-gqa-sliding"),
        pytest.param("2-1-1-4", "packed", 2, 0, 1.5, id="2-1-1-4-packed-gqa-softcap"),
        pytest.param("1-2-2-2", "packed", 1, 5, 1.5, id="1-2-2-2-packed-mqa-sliding-softcap"),
        pytest.param("1-2-2-2", "padded", 2, 0, 0.0, id="1-2-2-2-padded-gqa"),
    ],
)
def test_zigzag_ring_equals_xla(mesh_name, layout, kv_heads, window, softcap):
    q, k, v, spec, masks, weights = _case(mesh_name, layout, kv_heads, window)
    shards = MESHES[mesh_name]["context"]
    order = zigzag_slots(q.shape[1], shards)
    mesh = make_mesh(MESHES[mesh_name])
    ring = on_mesh(_zigzag_loss(spec, order, softcap), mesh)
    reference = on_mesh(_xla_loss(softcap), mesh)
    for sliding in (False, True) if window else (False,):
        seen = masks[sliding].any(-1)
        w = weights * seen[:, :, None, None]
        (_, out), grads = ring(q, k, v, jnp.asarray(sliding), w)
        (_, expected), expected_grads = reference(q, k, v, jnp.asarray(masks[sliding]), w)
        assert_matches(out, grads, expected, expected_grads, seen, sliding)
