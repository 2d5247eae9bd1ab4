"""KV-cache sampler: greedy parity with naive decoding, EOS, top-k/top-p, keys, logprobs, sharded params."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxspo.models import Decoder, ModelConfig, param_logical_names
from jaxspo.sampling import left_pad, sample
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh, named_sharding

PAD = 0
NEW = 6
PROMPTS = [[5, 9, 3], [7, 2], [4, 8, 1, 6], [11]]


@pytest.fixture(scope="module")
def split_model():
    config = ModelConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, init_std=0.3
    )
    return nnx.split(Decoder(config, rngs=nnx.Rngs(0)), nnx.Param)


@pytest.fixture(scope="module")
def prompts():
    return tuple(jnp.asarray(a) for a in left_pad(PROMPTS, PAD))


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(graphdef, params, tokens: jax.Array, valid: jax.Array) -> jax.Array:
    """Logits ``[B, T, V]`` of one uncached forward over a left-padded batch."""
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    return nnx.merge(graphdef, params)(tokens, positions, valid)


def _generate(split_model, prompts, seed: int = 0, **kwargs):
    settings = dict(max_new_tokens=NEW, eos_id=-1, pad_id=PAD) | kwargs
    return sample(*split_model, *prompts, jax.random.key(seed), **settings)


def _naive_greedy(split_model, prompts, steps: int) -> np.ndarray:
    """Greedy tokens ``[B, steps]``, re-running the full forward for every step.

    The sequence lives in a fixed ``[B, P + steps]`` buffer (one compilation); not-yet-generated
    slots are invalid and, being later in the row, cannot influence earlier logits.
    """
    prompt_tokens, prompt_valid = prompts
    tokens = jnp.concatenate([prompt_tokens, jnp.full((len(PROMPTS), steps), PAD, jnp.int32)], axis=1)
    valid = jnp.concatenate([prompt_valid, jnp.zeros((len(PROMPTS), steps), bool)], axis=1)
    width = prompt_tokens.shape[1]
    for step in range(steps):
        next_token = _full_logits(*split_model, tokens, valid)[:, width + step - 1].argmax(-1)
        tokens = tokens.at[:, width + step].set(next_token)
        valid = valid.at[:, width + step].set(True)
    return np.asarray(tokens[:, width:])


def test_left_pad():
    tokens, valid = left_pad([[1, 2], [3], []], pad_id=9)
    np.testing.assert_array_equal(tokens, [[1, 2], [9, 3], [9, 9]])
    np.testing.assert_array_equal(valid, [[True, True], [False, True], [False, False]])
    assert tokens.dtype == np.int32 and valid.dtype == bool


def test_greedy_matches_naive_decoding(split_model, prompts):
    out = _generate(split_model, prompts, temperature=0.0)
    expected = _naive_greedy(split_model, prompts, NEW)
    assert out.tokens.shape == out.valid.shape == out.logprobs.shape == (len(PROMPTS), NEW)
    assert out.tokens.dtype == jnp.int32 and out.logprobs.dtype == jnp.float32 and bool(out.valid.all())
    np.testing.assert_array_equal(out.tokens, expected)
    assert len(np.unique(expected)) > 2  # a non-degenerate model, so the comparison means something


def test_eos_stops_each_row(split_model, prompts):
    reference = np.asarray(_generate(split_model, prompts, temperature=0.0).tokens)
    eos = int(reference[0, 1])  # row 0 stops after its second token; other rows wherever eos occurs
    out = _generate(split_model, prompts, temperature=0.0, eos_id=eos)
    hit = reference == eos
    first_eos = np.where(hit.any(axis=1), hit.argmax(axis=1), NEW)
    expected_valid = np.arange(NEW)[None] <= first_eos[:, None]
    np.testing.assert_array_equal(out.valid, expected_valid)
    np.testing.assert_array_equal(out.tokens, np.where(expected_valid, reference, PAD))
    assert not np.asarray(out.logprobs)[~expected_valid].any()
    assert (~expected_valid).any()


def test_top_k_one_and_tiny_top_p_are_greedy(split_model, prompts):
    greedy = _generate(split_model, prompts, temperature=0.0).tokens
    np.testing.assert_array_equal(_generate(split_model, prompts, temperature=1.0, top_k=1).tokens, greedy)
    np.testing.assert_array_equal(_generate(split_model, prompts, temperature=1.0, top_p=1e-6).tokens, greedy)


def test_same_key_reproduces_and_different_keys_differ(split_model, prompts):
    first = _generate(split_model, prompts, seed=1).tokens
    np.testing.assert_array_equal(_generate(split_model, prompts, seed=1).tokens, first)
    assert not np.array_equal(_generate(split_model, prompts, seed=2).tokens, first)


def _step_logits(split_model, prompts, generated: jax.Array) -> np.ndarray:
    """Full-forward logits ``[B, NEW, V]`` predicting each generated token."""
    tokens = jnp.concatenate([prompts[0], generated], axis=1)
    valid = jnp.concatenate([prompts[1], jnp.ones_like(generated, bool)], axis=1)
    return np.asarray(_full_logits(*split_model, tokens, valid))[:, -NEW - 1 : -1]


def test_top_k_sampling_and_logprobs_match_full_forward(split_model, prompts):
    out = _generate(split_model, prompts, seed=3, temperature=2.0, top_k=3)
    logits = _step_logits(split_model, prompts, out.tokens)
    chosen = np.asarray(out.tokens)[..., None]
    rank = (logits > np.take_along_axis(logits, chosen, axis=-1)).sum(-1)  # 0 = most likely token
    assert 0 < rank.max() < 3
    # Log-probs are under the unfiltered temperature-1 distribution, whatever the sampling settings.
    expected = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, axis=-1)), chosen, axis=-1)[..., 0]
    np.testing.assert_allclose(out.logprobs, expected, atol=1e-5)


def test_sharded_params_give_same_samples(split_model, prompts):
    graphdef, params = split_model
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = jax.tree.map(
        lambda names, p: jax.device_put(p, named_sharding(names, p.shape, mesh, DEFAULT_RULES)),
        param_logical_names(params),
        params,
        is_leaf=lambda x: isinstance(x, tuple),
    )
    assert sharded["embed"].get_value().sharding.spec == jax.P("tensor", "fsdp")
    assert sharded["layers"]["attn"]["q_proj"].get_value().sharding.spec == jax.P(None, "fsdp", "tensor", None)

    reference = _generate(split_model, prompts, seed=5)
    with activation_sharding(mesh, DEFAULT_RULES):
        out = _generate((graphdef, sharded), prompts, seed=5)
    np.testing.assert_array_equal(out.tokens, reference.tokens)
    np.testing.assert_array_equal(out.valid, reference.valid)
    np.testing.assert_allclose(out.logprobs, reference.logprobs, atol=1e-5)
