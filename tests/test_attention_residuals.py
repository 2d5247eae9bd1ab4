"""The block-loop attentions keep their memory promise under ``jax.grad`` of the decoder's layer scan: no value
of the differentiated program is as large as the score matrix ``[B, H, T, S]`` (partial evaluation of the scan
used to hoist every block's mask out of the loop as a stacked residual of that size), for ``chunked`` on one
device and ``ring`` / ``gather`` under context parallelism."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.extend import core as jex_core

from jaxspo.models import Decoder, ModelConfig
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh
from tests.context_checks import MESHES

WIDTH, HEADS = 256, 4
MODEL = ModelConfig(
    vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=HEADS, num_kv_heads=HEADS
)


def _largest_value(jaxpr: jex_core.Jaxpr) -> int:
    """Elements of the largest value any equation of ``jaxpr`` (nested ones included) produces."""
    largest = 0
    for eqn in jaxpr.eqns:
        largest = max([largest, *(math.prod(getattr(v.aval, "shape", ())) for v in eqn.outvars)])
        for param in eqn.params.values():
            for inner in param if isinstance(param, tuple | list) else (param,):
                if isinstance(inner, jex_core.ClosedJaxpr | jex_core.Jaxpr):
                    largest = max(largest, _largest_value(getattr(inner, "jaxpr", inner)))
    return largest


def _gradient_program(model: ModelConfig, mesh_shape: dict[str, int] | None) -> jex_core.Jaxpr:
    """The jaxpr of the gradient of the summed logits of two rows of WIDTH tokens through the layer scan."""
    graphdef, params = nnx.split(Decoder(model, rngs=nnx.Rngs(0)))
    tokens = jnp.zeros((2, WIDTH), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(WIDTH), (2, WIDTH))
    valid = positions < jnp.asarray([[WIDTH], [WIDTH - 40]])

    def loss(params):
        return nnx.merge(graphdef, params)(tokens, positions, valid).sum()

    def grad(params):
        if mesh_shape is None:
            return jax.grad(loss)(params)
        with activation_sharding(make_mesh(mesh_shape), DEFAULT_RULES):
            return jax.grad(loss)(params)

    return jax.make_jaxpr(grad)(params).jaxpr


@pytest.mark.parametrize(
    "context, mesh_name",
    [("gather", None), ("ring", "2-1-1-4"), ("gather", "2-1-1-4")],
    ids=["chunked-one-device", "ring", "gather"],
)
def test_no_score_sized_value_under_the_layer_scan(context, mesh_name):
    model = dataclasses.replace(MODEL, attention="chunked", attention_block=32, remat=True, context_attention=context)
    scores = 2 * HEADS * WIDTH * WIDTH
    largest = _largest_value(_gradient_program(model, None if mesh_name is None else MESHES[mesh_name]))
    assert largest < scores // 4, (largest, scores)


def test_the_xla_kernel_is_score_sized():
    """The measure can fail: the dense kernel's scores ``[B, K, G, T, S]`` are found."""
    model = dataclasses.replace(MODEL, attention="xla")
    assert _largest_value(_gradient_program(model, None)) >= 2 * HEADS * WIDTH * WIDTH
