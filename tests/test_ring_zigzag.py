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
from jaxspo.models.ring_attention import ring_block_counts
from jaxspo.models.zigzag import zigzag_slots
from jaxspo.sharding import make_mesh
from tests.context_checks import MESHES, assert_matches, dpo_outputs, on_mesh, one_device_outputs
from tests.test_ring_attention import RING_CASES, SCALE, ring_case, xla_loss


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


@pytest.mark.parametrize("mesh_name, layout, kv_heads, window, softcap", RING_CASES)
def test_zigzag_ring_equals_xla(mesh_name, layout, kv_heads, window, softcap):
    q, k, v, spec, masks, weights = ring_case(mesh_name, layout, kv_heads, window)
    shards = MESHES[mesh_name]["context"]
    order = zigzag_slots(q.shape[1], shards)
    mesh = make_mesh(MESHES[mesh_name])
    ring = on_mesh(_zigzag_loss(spec, order, softcap), mesh)
    reference = on_mesh(xla_loss(softcap), mesh)
    for sliding in (False, True) if window else (False,):
        seen = masks[sliding].any(-1)
        w = weights * seen[:, :, None, None]
        (_, out), grads = ring(q, k, v, jnp.asarray(sliding), w)
        (_, expected), expected_grads = reference(q, k, v, jnp.asarray(masks[sliding]), w)
        assert_matches(out, grads, expected, expected_grads, seen, sliding)


def test_zigzag_balances_the_causal_ring():
    """A causal row over 8 shards of 4 blocks: contiguous, device i computes 16·i + 10 blocks (the last 1.85× the
    mean); zig-zag, every device the mean. Both compute the same blocks in all."""
    t, shards, block = 4096, 8, 128
    valid = jnp.ones((1, t), bool)
    contiguous = ring_block_counts(MaskSpec(jnp.arange(t), valid), False, shards=shards, block=block)
    order = jnp.asarray(zigzag_slots(t, shards))
    zigzag = ring_block_counts(MaskSpec(order, valid, zigzag=True), False, shards=shards, block=block, zigzag=True)
    assert contiguous == [16 * i + 10 for i in range(shards)]
    assert sum(zigzag) == sum(contiguous) and len(set(zigzag)) == 1


def test_zigzag_slots_give_each_device_an_early_and_a_late_chunk():
    assert zigzag_slots(16, 2).tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7, 8, 9, 10, 11]


@pytest.mark.slow  # ~105 s CPU: two DPO steps on 8 devices; the attention-level tests above cover the kernel fast
def test_zigzag_dpo_step_equals_one_device(monkeypatch):
    """The tiny DPO step (gemma2-like: sliding and global layers, soft-caps, resident reference) with
    model.context_attention=ring_zigzag on (2,1,1,4), packed rows of width 64 (16 slots per device, two chunks of
    8): the decoder reorders the rows, the ring runs zig-zag, log-probs, loss and gradients are one device's."""
    from jaxspo.data.layout import pack_pairs
    from jaxspo.models import context
    from tests.test_fast_logps import GEMMA2_LIKE, assert_trees_close, pairs

    padded = pairs(8)
    packed = pack_pairs(padded) | {"soft_label": padded["soft_label"]}
    packed = {k: np.pad(v, [(0, 0), (0, 64 - v.shape[1])]) if v.ndim == 2 else v for k, v in packed.items()}
    want = one_device_outputs()  # dense attention on one device over the padded rows of the same pairs
    zigzag = dataclasses.replace(GEMMA2_LIKE, attention="chunked", attention_block=8, context_attention="ring_zigzag")
    traced, ring_attention = [], context.ring_attention
    monkeypatch.setattr(
        context, "ring_attention", lambda *a, **kw: traced.append(kw["zigzag"]) or ring_attention(*a, **kw)
    )
    assert_trees_close(dpo_outputs(packed, MESHES["2-1-1-4"], jax.devices(), zigzag), want)
    assert traced and all(traced)  # every layer ran the zig-zag ring
    assert abs(want[0]["logps/chosen"] - want[0]["logps/rejected"]) > 0.1


def test_context_attention_accepts_ring_zigzag():
    from jaxspo.config import load_config

    assert load_config(None, ["model.context_attention=ring_zigzag"]).model.context_attention == "ring_zigzag"
