"""Splash attention on packed pair rows (the cascade of :mod:`jaxspo.models.splash_cascade`, Pallas interpret
mode on CPU) equals dense ``xla`` attention under the packed-row rule: outputs and q/k/v gradients for one
and several pairs per row (``segment = 3·pair + role``), GQA, soft-cap, traced sliding windows over restarting
positions, parts in which a query sees nothing (empty prompts, padding), and under an 8-device mesh."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel

from jaxspo.models.attention import MaskSpec, attention, xla_attention
from jaxspo.models.splash_attention import pallas_interpret
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh

ATOL = 1e-5
SCALE = 0.4


def packed_rows(pairs_per_row: list[list[tuple[int, int, int]]], length: int) -> tuple[np.ndarray, ...]:
    """valid, segments, positions ``[B, T]`` of rows holding the given (prompt, chosen, rejected) lengths."""
    b = len(pairs_per_row)
    valid, segments, positions = (
        np.zeros((b, length), bool),
        np.zeros((b, length), np.int32),
        np.zeros((b, length), np.int32),
    )
    for i, pairs in enumerate(pairs_per_row):
        start = 0
        for pair, (p, c, r) in enumerate(pairs):
            end = start + p + c + r
            valid[i, start:end] = True
            segments[i, start:end] = 3 * pair + np.repeat([0, 1, 2], [p, c, r])
            positions[i, start:end] = np.concatenate([np.arange(p + c), p + np.arange(r)])
            start = end
        assert start <= length
    return valid, segments, positions


def reference_mask(valid: np.ndarray, segments: np.ndarray, positions: np.ndarray, window: int) -> np.ndarray:
    """``[B, T, T]``: a valid, earlier key of the query's own segment or its pair's prompt (within ``window``
    positions when > 0), built from the rule itself."""
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]
    slots = np.arange(valid.shape[1])
    seen = (slots[:, None] >= slots[None, :])[None] & valid[:, None, :] & valid[:, :, None]
    seen &= (k_seg == q_seg) | (k_seg == q_seg - q_seg % 3)
    if window:
        seen &= positions[:, :, None] - positions[:, None, :] < window
    return seen


# name: ((prompt, chosen, rejected) per pair per row, T, heads, kv heads, soft-cap, window)
CASES = {
    "one_pair_gqa": ([[(3, 5, 4)], [(6, 2, 7)], [(1, 1, 1)]], 24, 4, 2, 0.0, 0),
    "pairs_gqa_empty_prompt": (
        [[(3, 2, 4), (0, 3, 2), (2, 1, 3)], [(5, 4, 4), (1, 2, 6)], [(4, 3, 2)]],
        24,
        4,
        2,
        0.0,
        0,
    ),
    "pairs_sliding_softcap": ([[(3, 5, 4), (2, 1, 6)], [(6, 2, 7), (0, 2, 3)], [(1, 9, 9)]], 24, 4, 1, 1.5, 3),
}


def _case(name: str):
    rows, t, h, kh, softcap, window = CASES[name]
    rng = np.random.default_rng(len(name))
    valid, segments, positions = packed_rows(rows, t)
    b, hd = valid.shape[0], 8
    q = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, t, kh, hd)), jnp.float32) for _ in range(2))
    spec = MaskSpec(jnp.arange(t), jnp.asarray(valid), jnp.asarray(segments), jnp.asarray(positions), window)
    masks = {sliding: reference_mask(valid, segments, positions, window if sliding else 0) for sliding in (False, True)}
    weights = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)
    return q, k, v, spec, softcap, masks, weights


def _splash_step(spec: MaskSpec, softcap: float):
    """``(q, k, v, sliding, weights) -> ((loss, out), grads)`` of splash, jitted once (``sliding`` traced)."""

    def loss(q, k, v, sliding, weights):
        out = attention(q, k, v, spec, sliding, scale=SCALE, softcap=softcap, implementation="splash", block=128)
        return jnp.sum(out * weights), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _xla_step(softcap: float):
    def loss(q, k, v, mask, weights):
        out = xla_attention(q, k, v, mask, SCALE, softcap)
        return jnp.sum(out * weights), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _assert_equal_on_seen_queries(got, want, seen: np.ndarray, what: str) -> None:
    (_, out), grads = got
    (_, expected), expected_grads = want
    out = np.asarray(out)
    assert np.isfinite(out).all() and np.all(out[~seen] == 0), what  # a query that sees nothing gets 0
    np.testing.assert_allclose(out[seen], np.asarray(expected)[seen], atol=ATOL, rtol=0, err_msg=what)
    for g, e, name in zip(grads, expected_grads, "qkv"):
        assert np.abs(np.asarray(e)).max() > 0.1, name
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=ATOL, rtol=0, err_msg=f"d{name}, {what}")


@pytest.mark.parametrize("name", list(CASES))
def test_splash_cascade_equals_xla(name):
    """Both sides weight queries that see at least one key (xla averages v over nothing elsewhere)."""
    q, k, v, spec, softcap, masks, weights = _case(name)
    with pallas_interpret():
        splash, reference = _splash_step(spec, softcap), _xla_step(softcap)  # each compiled once, masks traced
        for sliding, mask in masks.items():
            seen = mask.any(-1)  # [B, T]
            w = weights * seen[:, :, None, None]
            got, want = splash(q, k, v, jnp.asarray(sliding), w), reference(q, k, v, jnp.asarray(mask), w)
            _assert_equal_on_seen_queries(got, want, seen, f"sliding={sliding}")
    if CASES[name][5]:
        assert not np.array_equal(masks[True], masks[False])  # the window really cuts keys here
        valid, segments = np.asarray(spec.key_valid), np.asarray(spec.segments)
        slot_window = reference_mask(
            valid, segments, np.broadcast_to(np.arange(valid.shape[1]), valid.shape), spec.window
        )
        assert (
            slot_window != masks[True]
        ).any()  # a window over slots would be wrong: the rejected half needs moved prompt keys


def test_splash_cascade_under_an_8_device_mesh():
    """Rows on the batch axes and heads on ``tensor`` (shard_map), against xla on the same mesh."""
    q, k, v, spec, softcap, masks, weights = _case("pairs_gqa_empty_prompt")
    rows = 8
    tile = lambda x: jnp.concatenate([x] * (rows // x.shape[0] + 1))[:rows]  # noqa: E731
    q, k, v, weights = (tile(x) for x in (q, k, v, weights))
    spec = spec.replace(key_valid=tile(spec.key_valid), segments=tile(spec.segments), positions=tile(spec.positions))
    mask = np.asarray(tile(jnp.asarray(masks[False])))
    seen = mask.any(-1)
    w = weights * seen[:, :, None, None]
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with pallas_interpret(), activation_sharding(mesh, DEFAULT_RULES):
        got = _splash_step(spec, softcap)(q, k, v, jnp.asarray(False), w)
        want = _xla_step(softcap)(q, k, v, jnp.asarray(mask), w)
    _assert_equal_on_seen_queries(got, want, seen, "mesh (2, 2, 2)")


def test_pinned_splash_backward_signature():
    """The cascade calls jax's private splash VJP with its own residuals: this jax must still take them so."""
    names = list(inspect.signature(splash_attention_kernel._splash_attention_bwd).parameters)
    assert names == [
        "save_residuals",
        "mask_value",
        "is_mqa",
        "block_sizes",
        "residual_checkpoint_name",
        "mask_function",
        "attn_logits_soft_cap",
        "interpret",
        "res",
        "do",
    ]
    source = inspect.getsource(splash_attention_kernel._splash_attention_bwd)
    assert (
        "q,\n      k,\n      v,\n      segment_ids,\n      sinks,\n      o,\n      logsumexp,\n  "
        "    dq_mask_info,\n      dkv_mask_info,\n  ) = res" in source
    )
    assert 'di = jnp.einsum("hsd,hsd->hs", o.astype(jnp.float32), do.astype(jnp.float32))' in source
