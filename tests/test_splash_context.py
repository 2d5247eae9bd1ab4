"""Splash attention under context parallelism (time split over ``context``, Pallas interpret mode on CPU) equals
dense ``xla`` attention: outputs and q/k/v gradients on meshes (data, fsdp, tensor, context) = (2, 1, 1, 4) and
(1, 2, 2, 2), padded and packed rows, traced sliding windows and soft-cap; splash really runs (a Pallas call
in the program) except where it cannot (a time shard shorter than a splash block), which runs the chunked
kernel, as exactly."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.data.layout import pack_pairs
from jaxspo.models.attention import MaskSpec, xla_attention
from jaxspo.models.context import context_attention
from jaxspo.models.splash_attention import pallas_interpret
from jaxspo.sharding import make_mesh
from tests.test_compile import TINY as COMPILE_TINY, splash_kernel_calls, tpu_env  # noqa: F401  (fixtures)
from tests.context_checks import MESHES, assert_matches, dpo_outputs, on_mesh, one_device_outputs
from tests.test_splash_packed import packed_rows, reference_mask

SCALE, SOFTCAP = 0.4, 1.5


LENGTHS = {  # row width: (prompt, chosen, rejected) per pair per row
    512: [[(30, 40, 50), (10, 20, 30)], [(60, 70, 90)]],
    256: [[(30, 60, 50)], [(60, 70, 90)]],
    128: [[(10, 20, 30)], [(20, 30, 40)]],
}


def _case(mesh_name: str, layout: str, kv_heads: int, window: int, per_shard: int):
    """q/k/v, the MaskSpec and the dense masks (sliding off/on) of 2 rows of ``per_shard`` slots per time shard."""
    t = per_shard * MESHES[mesh_name]["context"]
    rng = np.random.default_rng(t + kv_heads + window)
    lengths = LENGTHS[t]
    valid, segments, positions = packed_rows(lengths, t)
    if layout == "padded":
        positions = np.broadcast_to(np.arange(t), valid.shape)
        spec = MaskSpec(jnp.arange(t), jnp.asarray(valid), window=window)
        masks = {
            s: reference_mask(valid, np.zeros_like(segments), positions, window if s else 0) for s in (False, True)
        }
    else:
        spec = MaskSpec(jnp.arange(t), jnp.asarray(valid), jnp.asarray(segments), jnp.asarray(positions), window)
        masks = {s: reference_mask(valid, segments, positions, window if s else 0) for s in (False, True)}
    q = jnp.asarray(rng.normal(size=(2, t, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, t, kv_heads, 8)), jnp.float32) for _ in range(2))
    return q, k, v, spec, masks, jnp.asarray(rng.normal(size=q.shape), jnp.float32)


def _steps(spec: MaskSpec, mesh):
    """Jitted ``(q, k, v, sliding or mask, weights) -> ((loss, out), grads)`` of splash under the mesh and of xla."""

    def splash_loss(q, k, v, sliding, weights):
        out = context_attention(
            q, k, v, spec, sliding, scale=SCALE, softcap=SOFTCAP, implementation="splash", block=128
        )
        return jnp.sum(out * weights), out

    def xla_loss(q, k, v, mask, weights):
        out = xla_attention(q, k, v, mask, SCALE, SOFTCAP)
        return jnp.sum(out * weights), out

    return on_mesh(splash_loss, mesh), on_mesh(xla_loss, mesh)


@pytest.mark.parametrize(
    "mesh_name, layout, kv_heads, window, per_shard",
    [
        pytest.param("2-1-1-4", "padded", 2, 5, 128, id="2-1-1-4-padded-sliding"),
        pytest.param("2-1-1-4", "packed", 2, 0, 128, id="2-1-1-4-packed"),
        # MQA: the one kv head whole on each tensor device
        pytest.param("1-2-2-2", "packed", 1, 5, 128, id="1-2-2-2-packed-mqa-sliding"),
        pytest.param("1-2-2-2", "padded", 2, 5, 128, id="1-2-2-2-padded-sliding"),
        pytest.param("1-2-2-2", "packed", 2, 5, 64, id="1-2-2-2-packed-sliding-half-block-runs-chunked"),
    ],
)
def test_splash_under_context_parallelism_equals_xla(mesh_name, layout, kv_heads, window, per_shard):
    """Splash runs when each time shard is a whole number of 128-slot blocks, else the chunked kernel."""
    splash_runs = per_shard % 128 == 0
    q, k, v, spec, masks, weights = _case(mesh_name, layout, kv_heads, window, per_shard)
    mesh = make_mesh(MESHES[mesh_name])
    with pallas_interpret():
        splash, reference = _steps(spec, mesh)
        program = str(jax.make_jaxpr(splash)(q, k, v, jnp.asarray(True), weights))
        assert ("pallas_call" in program) == splash_runs
        for sliding in (False, True) if window else (False,):
            seen = masks[sliding].any(-1)  # xla averages v where a query sees nothing: leave those out
            w = weights * seen[:, :, None, None]
            (_, out), grads = splash(q, k, v, jnp.asarray(sliding), w)
            (_, expected), expected_grads = reference(q, k, v, jnp.asarray(masks[sliding]), w)
            assert_matches(out, grads, expected, expected_grads, seen, sliding)
    if window:
        assert not np.array_equal(masks[True], masks[False])


def test_splash_step_with_context_compiles_for_a_tpu_slice_here(tpu_env, splash_kernel_calls):  # noqa: F811
    """`jaxspo compile` of the tiny DPO step with model.attention=splash and mesh.context=2 on v5p-8: the real
    TPU kernel (not interpreted), its block tables split over the 2 time shards (256 slots, 128 per shard)."""
    from jaxspo.compile import fit_report
    from jaxspo.config import load_config

    overrides = ["mesh.data=1", "mesh.fsdp=2", "mesh.context=2", "model.attention=splash", "data.max_length=256"]
    report = fit_report(load_config("configs/demo.yaml", COMPILE_TINY + overrides), "v5p-8")
    assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1, "context": 2}
    assert report["fits"] and report["xla_flops_per_step_per_device"] > 0
    built = [(call["interpret"], call["q_seq_shards"]) for call in splash_kernel_calls]
    assert (False, 2) in built and not any(interpret for interpret, _ in built)


def _wide_pairs() -> dict[str, np.ndarray]:
    """The 8 pairs of tests/test_fast_logps.py's ``pairs`` in padded rows of 256 slots."""
    from tests.test_fast_logps import pairs

    return {k: np.pad(x, [(0, 0), (0, 256 - x.shape[1])]) if x.ndim == 2 else x for k, x in pairs(8).items()}


# two 8-device DPO steps of 256-token rows with splash interpreted on CPU: ~25-70 s each on 2 shared cores
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_splash_dpo_step_under_context_equals_xla_on_one_device(layout, splash_kernel_calls):  # noqa: F811
    """The tiny DPO step (policy + resident reference) with model.attention=splash on mesh (1, 2, 2, 2): rows of
    256 slots, so each of the 2 time shards holds one 128-slot splash block; the gemma2-like model (sliding +
    global layers, soft-caps)."""
    from tests.test_fast_logps import GEMMA2_LIKE, assert_trees_close

    wide = _wide_pairs()
    batch = wide if layout == "padded" else pack_pairs(wide, multiple=256) | {"soft_label": wide["soft_label"]}
    want = one_device_outputs()  # dense attention on one device over the same pairs in 16-slot padded rows
    with pallas_interpret():
        got = dpo_outputs(
            batch,
            MESHES["1-2-2-2"],
            jax.devices(),
            dataclasses.replace(GEMMA2_LIKE, attention="splash", attention_block=128),
        )
    assert_trees_close(got, want)
    assert abs(want[0]["logps/chosen"] - want[0]["logps/rejected"]) > 0.1
    shards = {call["q_seq_shards"] for call in splash_kernel_calls}
    assert shards == {2}  # splash ran split over the 2 time shards (not the chunked fallback)
