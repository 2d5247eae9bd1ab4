"""Attention kernels (``model.attention``) equal the ``xla`` reference: outputs and q/k/v gradients of single
calls across GQA, soft-cap, traced sliding windows, packed rows, fully masked rows and ragged blocks (the tiny HF
architectures' log-probs, loss and gradients under each kernel: tests/test_attention_models.py); block skipping,
cuDNN's call and kernel resolution."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxspo.config import ConfigError
from jaxspo.models import Decoder, ModelConfig
from jaxspo.models.attention import MaskSpec, attention, resolve_attention
from jaxspo.models.cudnn_attention import cudnn_attention
from jaxspo.models.splash_attention import pallas_interpret

ATOL = 1e-5
BLOCK = 8  # small blocks, so every case spans several blocks and skips some


def _packed(batch: int, length: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """valid, segments, positions ``[B, T]`` of packed pair rows: prompt, chosen, rejected, then padding."""
    valid, segments, positions = (
        np.zeros((batch, length), bool),
        np.zeros((batch, length), np.int32),
        np.zeros((batch, length), np.int32),
    )
    for i in range(batch):
        p, c, r = (int(x) for x in rng.integers(1, length // 3 + 1, 3))
        valid[i, : p + c + r] = True
        segments[i, p : p + c], segments[i, p + c : p + c + r] = 1, 2
        positions[i, : p + c + r] = np.concatenate([np.arange(p + c), p + np.arange(r)])
    return valid, segments, positions


def _padded(batch: int, length: int, rng) -> np.ndarray:
    """valid ``[B, T]``: half the rows right-padded, half left-padded (their first queries see nothing)."""
    lengths = rng.integers(1, length + 1, batch)
    valid = np.arange(length)[None] < lengths[:, None]
    valid[batch // 2 :] = valid[batch // 2 :, ::-1]
    return valid


CASES = {  # name: (T, heads, kv_heads, softcap, window, packed)
    "gqa": (16, 4, 2, 0.0, 0, False),
    "mqa_ragged": (13, 4, 1, 0.0, 0, False),
    "mha_softcap": (16, 2, 2, 1.5, 0, False),
    "sliding_softcap_ragged": (21, 4, 2, 2.0, 4, False),
    "packed": (24, 4, 2, 0.0, 0, True),
    "packed_sliding_softcap_ragged": (23, 4, 2, 1.5, 3, True),
}


def _inputs(rng, b: int, t: int, h: int, kh: int, hd: int, window: int, packed: bool, dtype=jnp.float32):
    """Random q ``[B, T, H, Hd]``, k/v ``[B, T, K, Hd]`` in ``dtype``, a packed or padded MaskSpec, float32 weights like
    q."""
    q = jnp.asarray(rng.normal(size=(b, t, h, hd)), dtype)
    k, v = (jnp.asarray(rng.normal(size=(b, t, kh, hd)), dtype) for _ in range(2))
    if packed:
        valid, segments, positions = _packed(b, t, rng)
        spec = MaskSpec(jnp.arange(t), jnp.asarray(valid), jnp.asarray(segments), jnp.asarray(positions), window)
    else:
        spec = MaskSpec(jnp.arange(t), jnp.asarray(_padded(b, t, rng)), window=window)
    weights = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)
    return q, k, v, spec, weights


def _case(name: str):
    t, h, kh, softcap, window, packed = CASES[name]
    q, k, v, spec, weights = _inputs(np.random.default_rng(len(name)), 4, t, h, kh, 8, window, packed)
    return q, k, v, spec, softcap, weights


def _output_and_grads(implementation: str, q, k, v, spec, softcap):
    """``(sliding, weights) -> (output, d(sum(out · weights))/d(q, k, v))``, jitted once (``sliding`` traced)."""

    def loss(q, k, v, sliding, weights):
        out = attention(q, k, v, spec, sliding, scale=0.4, softcap=softcap, implementation=implementation, block=BLOCK)
        return jnp.sum(out * weights), out

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

    def run(sliding: bool, weights: jax.Array):
        (_, out), grads = step(q, k, v, jnp.asarray(sliding), weights)
        return np.asarray(out), [np.asarray(g) for g in grads]

    return run


@pytest.mark.parametrize("name", list(CASES))
def test_chunked_equals_xla(name):
    q, k, v, spec, softcap, weights = _case(name)
    # xla's fully masked rows average v: the reference loss leaves them out, the chunked one keeps them (gradient 0)
    sees_something = {sliding: np.asarray(spec.dense(sliding).any(-1)) for sliding in (False, True)}  # [B, T]
    assert (
        not sees_something[False].all() or CASES[name][5]
    )  # padded cases include left-padding queries that see nothing
    reference, chunked = (_output_and_grads(kernel, q, k, v, spec, softcap) for kernel in ("xla", "chunked"))
    for sliding, seen in sees_something.items():  # the same compiled steps, the window on and off
        expected, expected_grads = reference(sliding, weights * seen[:, :, None, None])
        out, grads = chunked(sliding, weights)
        assert np.isfinite(out).all() and np.all(out[~seen] == 0)
        np.testing.assert_allclose(out[seen], expected[seen], atol=ATOL, rtol=0, err_msg=f"sliding={sliding}")
        for got, want, what in zip(grads, expected_grads, "qkv"):
            assert np.abs(want).max() > 0.1, what
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"d{what}, sliding={sliding}")
    if CASES[name][4]:  # the window changes the result, so the traced flag is really read
        assert np.abs(chunked(True, weights)[0] - chunked(False, weights)[0]).max() > 0.1


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_chunked_in_bfloat16_is_as_accurate_as_xla(packed):
    """bf16 q/k/v over 8 key blocks (soft-cap, window on and off): the chunked kernel's output and q/k/v
    gradients are within 2x of the ``xla`` kernel's error in bf16 (1.0-1.6x measured), both measured against
    float32 ``xla`` on the same bf16-rounded inputs — its float32 running max, sum and accumulator lose nothing
    to blocking."""
    q, k, v, spec, weights = _inputs(np.random.default_rng(11), 2, 64, 4, 2, 16, 20, packed, jnp.bfloat16)
    exact = _output_and_grads("xla", *(x.astype(jnp.float32) for x in (q, k, v)), spec, 2.0)
    in_bf16 = {kernel: _output_and_grads(kernel, q, k, v, spec, 2.0) for kernel in ("xla", "chunked")}
    for sliding in (False, True):
        seen = np.asarray(spec.dense(sliding).any(-1))  # [B, T] queries that see a key (xla averages v elsewhere)
        masked = weights * seen[:, :, None, None]

        def results(run):
            out, grads = run(sliding, masked)
            return [np.asarray(x, np.float32) for x in (out[seen], *grads)]

        want = results(exact)
        errors = {
            kernel: [np.abs(g - w).max() / np.abs(w).max() for g, w in zip(results(run), want)]
            for kernel, run in in_bf16.items()
        }
        for what, chunked_error, xla_error in zip(["out", "dq", "dk", "dv"], errors["chunked"], errors["xla"]):
            assert 0 < xla_error < 1e-2, (what, sliding)  # bf16-sized: the comparison is not against itself
            assert chunked_error <= 2 * xla_error, (what, sliding, chunked_error, xla_error)


@pytest.mark.parametrize("name", list(CASES))
def test_splash_equals_xla_on_real_queries(name):
    """Pallas interpret mode on CPU. Padding queries read only padding under splash (never read by a loss), so
    both sides weight real queries only; packed rows run the cascade (more cases in tests/test_splash_packed.py)."""
    q, k, v, spec, softcap, weights = _case(name)
    with pallas_interpret():
        splash, reference = (_output_and_grads(kernel, q, k, v, spec, softcap) for kernel in ("splash", "xla"))
        for sliding in (False, True):
            real = np.asarray(spec.key_valid) & np.asarray(spec.dense(sliding).any(-1))  # [B, T]
            (out, grads), (expected, expected_grads) = (
                f(sliding, weights * real[:, :, None, None]) for f in (splash, reference)
            )
            np.testing.assert_allclose(out[real], expected[real], atol=ATOL, rtol=0, err_msg=f"sliding={sliding}")
            for got, want, what in zip(grads, expected_grads, "qkv"):
                assert np.abs(want).max() > 0.1, what
                np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"d{what}, sliding={sliding}")


def _exact_block_table(spec: MaskSpec, sliding: bool, block: int) -> np.ndarray:
    """Whether any row's query of block i sees any key of block j, from the dense mask."""
    dense = np.asarray(spec.dense(sliding)).any(0)
    t, s = dense.shape
    padded = np.zeros((-(-t // block) * block, -(-s // block) * block), bool)
    padded[:t, :s] = dense
    return padded.reshape(padded.shape[0] // block, block, -1, block).any((1, 3))


@pytest.mark.parametrize("name", list(CASES))
def test_block_table_never_skips_a_visible_block(name):
    _, _, _, spec, _, _ = _case(name)
    for sliding in (False, True):
        table, exact = np.asarray(spec.block_visible(BLOCK, BLOCK, sliding)), _exact_block_table(spec, sliding, BLOCK)
        assert table.shape == exact.shape and np.all(table >= exact)


def test_causal_and_packed_blocks_are_skipped():
    """Causal rows skip the blocks above the diagonal; packed rows whose halves line up skip chosen × rejected."""
    t = 32
    causal = MaskSpec(jnp.arange(t), jnp.ones((2, t), bool))
    np.testing.assert_array_equal(causal.block_visible(8, 8), np.tril(np.ones((4, 4), bool)))
    segments = jnp.asarray(np.repeat([0, 1, 2, 2], 8)[None].repeat(2, 0), jnp.int32)  # prompt 8, chosen 8, rejected 16
    positions = jnp.asarray(np.concatenate([np.arange(16), 8 + np.arange(16)])[None].repeat(2, 0), jnp.int32)
    packed = MaskSpec(jnp.arange(t), jnp.ones((2, t), bool), segments, positions)
    table = np.asarray(packed.block_visible(8, 8))
    assert table.sum() == 8 and not table[2:, 1].any()  # the rejected blocks never read the chosen block
    np.testing.assert_array_equal(table, _exact_block_table(packed, False, 8))
    q = jnp.ones((2, t, 2, 8))
    jaxpr = str(
        jax.make_jaxpr(
            lambda q: attention(q, q, q, causal, False, scale=1.0, softcap=0.0, implementation="chunked", block=8)
        )(q)
    )
    assert "cond[" in jaxpr
    one_block = str(
        jax.make_jaxpr(
            lambda q: attention(q, q, q, causal, False, scale=1.0, softcap=0.0, implementation="chunked", block=32)
        )(q)
    )
    assert "cond[" not in one_block and "while[" not in one_block  # a row that fits one block runs the dense kernel


def test_attention_block_must_be_a_multiple_of_8():
    with pytest.raises(ValueError, match=r"model\.attention_block must be a positive multiple of 8, got 12"):
        dataclasses.replace(ModelConfig(vocab_size=8), attention_block=12).validate()


# ---------------------------------------------------------------------------------------------------------------
# cuDNN's call (checked through jax.nn.dot_product_attention's xla implementation) and kernel resolution
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gqa", "sliding_softcap_ragged", "packed_sliding_softcap_ragged"])
def test_cudnn_call_arguments_give_xla_results(name):
    q, k, v, spec, _, weights = _case(name)  # cuDNN has no soft-cap: the cases run without it

    def run(kernel: str, sliding):
        if kernel == "xla":
            return attention(q, k, v, spec, sliding, scale=0.4, softcap=0.0, implementation="xla")
        return cudnn_attention(q, k, v, spec, sliding, scale=0.4, implementation="xla")

    for sliding in (False, True, jnp.asarray(True)):
        real = np.asarray(spec.key_valid) & np.asarray(spec.dense(sliding).any(-1))
        got = jax.jit(lambda s: run("cudnn", s))(sliding) if isinstance(sliding, jax.Array) else run("cudnn", sliding)
        np.testing.assert_allclose(
            np.asarray(got)[real],
            np.asarray(run("xla", sliding))[real],
            atol=ATOL,
            rtol=0,
            err_msg=f"sliding={sliding}",
        )


GEMMA2_LIKE = ModelConfig(vocab_size=8, attn_softcap=50.0, dtype="bfloat16")


@pytest.mark.parametrize(
    "setting, platform, model, expected",
    [
        ("auto", "tpu", ModelConfig(vocab_size=8), "splash"),
        ("auto", "gpu", ModelConfig(vocab_size=8, dtype="bfloat16"), "cudnn"),
        ("auto", "gpu", GEMMA2_LIKE, "chunked"),  # soft-cap: cuDNN refuses
        ("auto", "gpu", ModelConfig(vocab_size=8), "chunked"),  # float32: cuDNN refuses
        ("auto", "cpu", ModelConfig(vocab_size=8), "chunked"),
        ("xla", "tpu", ModelConfig(vocab_size=8), "xla"),
        ("chunked", "cpu", ModelConfig(vocab_size=8), "chunked"),
        ("cudnn", "gpu", ModelConfig(vocab_size=8, dtype="bfloat16"), "cudnn"),
        ("splash", "tpu", GEMMA2_LIKE, "splash"),
    ],
)
def test_resolve_attention(setting, platform, model, expected):
    assert resolve_attention(setting, platform, model) == expected


@pytest.mark.parametrize(
    "setting, platform, model, message",
    [
        (
            "splash",
            "cpu",
            ModelConfig(vocab_size=8),
            "model.attention=splash: needs a TPU (this backend is cpu); use one of auto, xla, chunked, cudnn",
        ),
        (
            "cudnn",
            "tpu",
            ModelConfig(vocab_size=8),
            "model.attention=cudnn: needs an NVIDIA GPU (this backend is tpu); use one of auto, xla, chunked, splash",
        ),
        (
            "cudnn",
            "gpu",
            GEMMA2_LIKE,
            "model.attention=cudnn: cuDNN has no attention soft-capping (model.attn_softcap > 0); use one of",
        ),
        (
            "cudnn",
            "gpu",
            ModelConfig(vocab_size=8),
            "model.attention=cudnn: cuDNN attention takes bfloat16/float16 only (model.dtype=float32)",
        ),
        (
            "cudnn",
            "gpu",
            ModelConfig(vocab_size=8, dtype="bfloat16", hidden_size=1024, num_heads=4),
            "needs head_dim a multiple of 8 up to 128 (got 256)",
        ),
    ],
)
def test_unusable_kernels_are_refused_in_one_line(setting, platform, model, message):
    with pytest.raises(ValueError) as err:
        resolve_attention(setting, platform, model)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_splash_on_cpu_fails_when_the_model_is_built_outside_tests():
    with pytest.raises(
        ConfigError,
        match=r"^model\.attention=splash: needs a TPU \(this backend is cpu\); use one of auto, xla, chunked, cudnn$",
    ):
        Decoder(ModelConfig(vocab_size=8, attention="splash"), rngs=nnx.Rngs(0))
    with pallas_interpret():
        assert (
            Decoder(ModelConfig(vocab_size=8, attention="splash"), rngs=nnx.Rngs(0)).layers.attn.implementation
            == "splash"
        )
    assert (
        Decoder(ModelConfig(vocab_size=8, attention="auto"), rngs=nnx.Rngs(0)).layers.attn.implementation == "chunked"
    )
