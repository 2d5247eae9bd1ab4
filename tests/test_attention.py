"""Attention kernels (``model.attention``) equal the ``xla`` reference: outputs and q/k/v gradients of single
calls across GQA, soft-cap, traced sliding windows, packed rows, fully masked rows and ragged blocks; then the
tiny HF architectures' sequence log-probs, DPO loss and parameter gradients, padded and packed, on 8 CPU devices."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxspo.data.layout import pack_pairs
from jaxspo.losses.dpo_family import logistic_loss
from jaxspo.config import ConfigError
from jaxspo.models import Decoder, ModelConfig
from jaxspo.models.attention import MaskSpec, attention, resolve_attention
from jaxspo.models.cudnn_attention import cudnn_attention
from jaxspo.models.hf_config import model_config_from_hf
from jaxspo.models.hf_io import load_params
from jaxspo.models.splash_attention import pallas_interpret
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh
from jaxspo.train.state import abstract_model, param_shardings
from jaxspo.objectives.batches import PackedPairBatch, PairBatch
from jaxspo.objectives.pairs import PACKED, PADDED
from tests import hf_tiny

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


# ---------------------------------------------------------------------------------------------------------------
# Model level: every tiny HF architecture, padded and packed pair rows, on a (2, 2, 2) mesh of CPU devices
# ---------------------------------------------------------------------------------------------------------------


def _pairs(batch: int = 8, width: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Padded pair arrays with shared prompts of 2–6 tokens and responses of 1–8 tokens."""
    rng = np.random.default_rng(seed)
    out = {
        f"{s}_{k}": np.zeros((batch, width), d)
        for s in ("chosen", "rejected")
        for k, d in (("tokens", np.int32), ("valid", bool), ("loss_mask", bool))
    }
    for i in range(batch):
        prompt = rng.integers(3, hf_tiny.VOCAB, int(rng.integers(2, 7)))
        for side in ("chosen", "rejected"):
            row = np.concatenate([prompt, rng.integers(3, hf_tiny.VOCAB, int(rng.integers(1, 9)))])
            out[f"{side}_tokens"][i, : len(row)], out[f"{side}_valid"][i, : len(row)] = row, True
            out[f"{side}_loss_mask"][i, len(prompt) : len(row)] = True
    return out


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """name -> the tiny HF model's float32 folder (each saved once per module)."""
    folders = {}

    def folder(name: str):
        if name not in folders:
            folders[name] = hf_tiny.save(hf_tiny.build_hf(name), tmp_path_factory.mktemp(name))
        return folders[name]

    return folder


def _dpo(folder, mesh, implementation: str, batch: PairBatch | PackedPairBatch) -> tuple:
    """(chosen, rejected log-probs, DPO loss) and the loss's parameter gradients, with ``implementation``.

    ``mesh`` (2, 2, 2) puts the 16 rows on 4 batch shards and the heads on 2 tensor shards."""
    cfg = model_config_from_hf(folder, ModelConfig(attention=implementation, attention_block=BLOCK))
    graphdef, abstract = abstract_model(cfg)
    params = load_params(folder, cfg, abstract, param_shardings(abstract, mesh, DEFAULT_RULES))
    reference_margin = jnp.linspace(-1.0, 1.0, 8)  # the batch's 8 pairs

    def loss(p):  # the batch type chooses the layout
        chosen, rejected, _, _ = (PACKED if isinstance(batch, PackedPairBatch) else PADDED).logps(graphdef, p, batch)
        return logistic_loss(0.5 * (chosen - rejected - reference_margin)).mean(), (chosen, rejected)

    with activation_sharding(mesh, DEFAULT_RULES):  # as in the train step: activations pinned, splash under shard_map
        (value, logps), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return (*logps, value), grads


FAST_MODEL_CASES = {("gemma2", "padded"), ("gemma2", "packed")}  # GQA, soft-cap, alternating windows


def _model_cases() -> list:
    """Each architecture × layout once, with one kernel: the architectures alternate which layout runs chunked
    and which splash, so every architecture meets both kernels, every layout meets both kernels with four
    architectures each, and every architecture meets both layouts (all pairs, not the full product: each
    8-device DPO step compile costs ~10-20 s on 2 busy cores)."""
    cases = []
    for index, arch in enumerate(hf_tiny.ARCHS):
        kernels = ("chunked", "splash") if index % 2 == 0 else ("splash", "chunked")
        for layout, kernel in zip(("padded", "packed"), kernels):
            slow = () if (arch, layout) in FAST_MODEL_CASES else pytest.mark.slow
            cases.append(pytest.param(arch, layout, kernel, id=f"{arch}-{layout}-{kernel}", marks=slow))
    return cases


def _model_batch(layout: str) -> PairBatch | PackedPairBatch:
    """The 8 pairs of :func:`_pairs` as padded rows or packed rows (the same pairs either way)."""
    padded = _pairs() | {"soft_label": np.ones(8, np.float32)}  # every pair batch has one (unread here)
    return (PackedPairBatch if layout == "packed" else PairBatch).from_fields(padded | pack_pairs(padded))


@pytest.fixture(scope="module")
def xla_padded(hf_folder, mesh):
    """arch -> the xla kernel's (log-probs, loss) and gradients over the padded rows, computed once per arch."""
    computed = {}

    def reference(arch: str) -> tuple:
        if arch not in computed:
            computed[arch] = _dpo(hf_folder(arch), mesh, "xla", _model_batch("padded"))
        return computed[arch]

    return reference


@pytest.mark.parametrize("arch, layout, kernel", _model_cases())
def test_model_log_probs_loss_and_grads_equal_xla(hf_folder, mesh, xla_padded, arch, layout, kernel):
    """``kernel`` on padded or packed rows against one xla computation of the same pairs in padded rows (the
    packed rows' log-probs, loss and gradients are the padded ones: tests/test_fast_logps.py)."""
    expected, expected_grads = xla_padded(arch)
    assert float(np.abs(expected[0] - expected[1]).max()) > 1.0  # chosen ≠ rejected: the masks matter
    with pallas_interpret():
        got, grads = _dpo(hf_folder(arch), mesh, kernel, _model_batch(layout))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=ATOL, rtol=0, err_msg=kernel)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=ATOL, rtol=0, err_msg=kernel)


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
