"""Ring attention (``model.context_attention=ring``) under context parallelism equals dense ``xla`` attention and
the all-gather path: outputs and q/k/v gradients (fp32, ≤ 1e-5) on meshes (data, fsdp, tensor, context) =
(2, 1, 1, 4) and (1, 2, 2, 2), causal padded rows and packed pair rows, GQA and MQA, traced sliding windows and
soft-cap, time shards of several blocks; in bf16 as accurate as the gather path; the ring program passes blocks
(no all-gather); the DPO step equals one device."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.models.attention import MaskSpec, xla_attention
from jaxspo.models.context import context_attention
from jaxspo.sharding import make_mesh
from tests.context_checks import MESHES, assert_matches, dpo_outputs, on_mesh, one_device_outputs
from tests.test_splash_packed import packed_rows, reference_mask

SCALE = 0.4

# (mesh, layout, kv heads, window, soft-cap): every mesh meets both layouts; GQA and MQA, windows and soft-cap spread
RING_CASES = [
    pytest.param("2-1-1-4", "padded", 2, 5, 0.0, id="2-1-1-4-padded-gqa-sliding"),
    pytest.param("2-1-1-4", "packed", 2, 0, 1.5, id="2-1-1-4-packed-gqa-softcap"),
    pytest.param("1-2-2-2", "packed", 1, 5, 1.5, id="1-2-2-2-packed-mqa-sliding-softcap"),
    pytest.param("1-2-2-2", "padded", 2, 0, 0.0, id="1-2-2-2-padded-gqa"),
]
PAIRS = {  # row width: (prompt, chosen, rejected) per pair per row; pairs straddle the time shards
    64: [[(7, 9, 11), (5, 6, 8), (4, 3, 2)], [(20, 13, 17)]],
    32: [[(3, 5, 6), (2, 4, 3), (1, 2, 3)], [(9, 6, 10)]],
}


def ring_case(mesh_name: str, layout: str, kv_heads: int, window: int):
    """q/k/v, the MaskSpec and the dense masks (sliding off/on) of 2 rows of 16 slots per time shard."""
    t = 16 * MESHES[mesh_name]["context"]
    rng = np.random.default_rng(t + kv_heads + window)
    valid, segments, positions = packed_rows(PAIRS[t], t)
    if layout == "padded":
        valid = np.arange(t)[None] < np.asarray([[t], [t - 11]])  # row 1 right-padded over its last shard
        positions = np.broadcast_to(np.arange(t), valid.shape)
        spec = MaskSpec(jnp.arange(t), jnp.asarray(valid), window=window)
        segments = np.zeros_like(segments)
    else:
        spec = MaskSpec(jnp.arange(t), jnp.asarray(valid), jnp.asarray(segments), jnp.asarray(positions), window)
    masks = {s: reference_mask(valid, segments, positions, window if s else 0) for s in (False, True)}
    q = jnp.asarray(rng.normal(size=(2, t, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, t, kv_heads, 8)), jnp.float32) for _ in range(2))
    return q, k, v, spec, masks, jnp.asarray(rng.normal(size=q.shape), jnp.float32)


def _context_loss(spec: MaskSpec, softcap: float, context: str):
    def loss(q, k, v, sliding, weights):
        out = context_attention(
            q, k, v, spec, sliding, scale=SCALE, softcap=softcap, implementation="chunked", block=8, context=context
        )
        return jnp.sum(out * weights), out

    return loss


def xla_loss(softcap: float):
    def loss(q, k, v, mask, weights):
        out = xla_attention(q, k, v, mask, SCALE, softcap)
        return jnp.sum(out * weights), out

    return loss


@pytest.mark.parametrize("mesh_name, layout, kv_heads, window, softcap", RING_CASES)
def test_ring_equals_xla_and_the_gather_path(mesh_name, layout, kv_heads, window, softcap):
    """Shards of 16 slots in blocks of 8: steps above the diagonal, blocks of other pairs and out of the window
    are skipped, the rest merge through their log-sum-exps."""
    q, k, v, spec, masks, weights = ring_case(mesh_name, layout, kv_heads, window)
    mesh = make_mesh(MESHES[mesh_name])
    ring = on_mesh(_context_loss(spec, softcap, "ring"), mesh)
    gather = on_mesh(_context_loss(spec, softcap, "gather"), mesh)
    reference = on_mesh(xla_loss(softcap), mesh)
    for sliding in (False, True) if window else (False,):
        seen = masks[sliding].any(-1)  # xla averages v where a query sees nothing: leave those out
        w = weights * seen[:, :, None, None]
        (_, out), grads = ring(q, k, v, jnp.asarray(sliding), w)
        for (_, expected), expected_grads in (
            reference(q, k, v, jnp.asarray(masks[sliding]), w),
            gather(q, k, v, jnp.asarray(sliding), w),
        ):
            assert_matches(out, grads, expected, expected_grads, seen, sliding)
    if window:
        assert not np.array_equal(masks[True], masks[False])


def test_ring_passes_blocks_and_never_gathers_them():
    q, k, v, spec, _, weights = ring_case("2-1-1-4", "packed", 2, 0)
    mesh = make_mesh(MESHES["2-1-1-4"])
    programs = {
        context: str(jax.make_jaxpr(on_mesh(_context_loss(spec, 0.0, context), mesh))(q, k, v, False, weights))
        for context in ("ring", "gather")
    }
    assert "ppermute" in programs["ring"] and "all_gather" not in programs["ring"]
    assert "all_gather" in programs["gather"] and "ppermute" not in programs["gather"]


@pytest.mark.parametrize(
    "mesh_name, layout",
    [
        pytest.param("2-1-1-4", "packed", id="2-1-1-4-packed"),
        pytest.param("1-2-2-2", "padded", id="1-2-2-2-padded", marks=pytest.mark.slow),  # same paths; ~30 s CPU
    ],
)
def test_ring_dpo_step_equals_one_device(mesh_name, layout, monkeypatch):
    """The tiny DPO step (policy + resident reference, the gemma2-like model: sliding and global layers, soft-caps)
    with model.context_attention=ring: log-probs, rewards, loss and gradients of one device."""
    from jaxspo.data.layout import pack_pairs
    from jaxspo.models import context

    traced = []
    ring_attention = context.ring_attention
    monkeypatch.setattr(
        context, "ring_attention", lambda *a, **kw: traced.append(kw["shards"]) or ring_attention(*a, **kw)
    )
    from tests.test_fast_logps import GEMMA2_LIKE, assert_trees_close, pairs

    padded = pairs(8)
    batch = padded if layout == "padded" else pack_pairs(padded) | {"soft_label": padded["soft_label"]}
    want = one_device_outputs()  # dense attention on one device over the padded rows of the same pairs
    ring = dataclasses.replace(GEMMA2_LIKE, attention="chunked", attention_block=8, context_attention="ring")
    got = dpo_outputs(batch, MESHES[mesh_name], jax.devices(), ring)
    assert traced and set(traced) == {MESHES[mesh_name]["context"]}  # the layers ran the ring over the context shards
    assert_trees_close(got, want)
    assert abs(want[0]["logps/chosen"] - want[0]["logps/rejected"]) > 0.1 and abs(float(want[1])) > 0


def test_context_attention_setting_is_checked():
    from jaxspo.config import ConfigError, load_config

    assert load_config(None, ["model.context_attention=ring"]).model.context_attention == "ring"
    with pytest.raises(ConfigError, match="model.context_attention must be one of"):
        load_config(None, ["model.context_attention=rings"])


def test_ring_in_bfloat16_is_as_accurate_as_the_gather_path():
    """bf16 q/k/v: the steps merge in float32, so the ring's errors against fp32 xla match the gather path's."""
    q, k, v, spec, masks, weights = ring_case("2-1-1-4", "packed", 2, 0)
    mesh = make_mesh(MESHES["2-1-1-4"])
    seen = masks[False].any(-1)
    weights = weights * seen[:, :, None, None]
    (_, want), want_grads = on_mesh(xla_loss(0.0), mesh)(q, k, v, jnp.asarray(masks[False]), weights)
    bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v, weights)]
    errors = {}
    for context in ("ring", "gather"):
        (_, out), grads = on_mesh(_context_loss(spec, 0.0, context), mesh)(*bf16[:3], False, bf16[3])
        assert out.dtype == jnp.bfloat16
        errors[context] = [np.abs(np.asarray(out, np.float32) - np.asarray(want))[seen].max()] + [
            np.abs(np.asarray(g, np.float32) - np.asarray(e)).max() for g, e in zip(grads, want_grads)
        ]
    assert all(0 < r <= 1.1 * g for r, g in zip(errors["ring"], errors["gather"])), errors
