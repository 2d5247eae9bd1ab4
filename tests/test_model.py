"""Decoder: HF Llama parity, scanned layers, logical axis names, KV cache, remat, config validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec

from jaxspo.models import Decoder, ModelConfig, param_logical_names
from jaxspo.models.hf_config import model_config_from_hf
from jaxspo.models.hf_io import load_params
from jaxspo.sharding import DEFAULT_RULES, make_mesh
from jaxspo.train.state import abstract_model, param_shardings

ALLOWED_NAMES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", "layers", "length"}


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, init_std=0.2
    )
    return ModelConfig(**(fields | overrides))


def split_model(config: ModelConfig, seed: int = 0):
    return nnx.split(Decoder(config, rngs=nnx.Rngs(seed)), nnx.Param)


def _positions(valid: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)


def _decoder_from_hf(hf: transformers.LlamaForCausalLM, folder) -> Decoder:
    """Saves the HF model and loads it back through the real loader (:mod:`jaxspo.models.hf_io`)."""
    hf.save_pretrained(folder)
    config = model_config_from_hf(folder, ModelConfig())
    graphdef, abstract = abstract_model(config)
    shardings = param_shardings(abstract, make_mesh({"data": 1, "fsdp": 4, "tensor": 2}), DEFAULT_RULES)
    return nnx.merge(graphdef, load_params(folder, config, abstract, shardings))


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_logits_match_hf_llama(tie: bool, padding: str, tmp_path):
    hf_config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config).float().eval()
    with torch.no_grad():  # O(1) logits and non-trivial norm weights, so a wrong mapping shows
        for name, p in hf.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.2)
    model = _decoder_from_hf(hf, tmp_path)
    assert model.lm_head is None if tie else model.lm_head.shape == (32, 64)

    rng = np.random.default_rng(0)
    lengths = np.array([7, 4, 1])
    tokens = rng.integers(0, 64, size=(3, 7)).astype(np.int32)
    valid = np.arange(7)[None] < lengths[:, None]
    if padding == "left":
        valid = valid[:, ::-1].copy()
    positions = _positions(valid)
    with torch.no_grad():
        expected = hf(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(valid).long(),
            position_ids=torch.from_numpy(positions).long(),
        ).logits.numpy()
    logits = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid)))

    assert logits.dtype == np.float32 and logits.shape == (3, 7, 64)
    assert expected[valid].std() > 0.5  # the comparison is not between near-zero numbers
    np.testing.assert_allclose(logits[valid], expected[valid], atol=1e-4, rtol=0)


def _lowered_forward_text(num_layers: int) -> str:
    graphdef, params = abstract_model(tiny_config(num_layers=num_layers))  # shapes suffice to lower
    tokens = jnp.zeros((2, 8), jnp.int32)
    fn = jax.jit(lambda p: nnx.merge(graphdef, p)(tokens, tokens, tokens == 0))
    return fn.lower(params).as_text()


def test_layers_are_scanned_not_unrolled():
    shallow, deep = _lowered_forward_text(2), _lowered_forward_text(8)
    assert shallow.count("stablehlo.while") == deep.count("stablehlo.while") >= 1
    # Unrolling would repeat each layer's ops per layer: 8 layers would be several times the 2-layer text.
    assert len(deep) < 1.1 * len(shallow)


ALL_SWITCHES = dict(
    tie_embeddings=False,
    norm="layernorm",
    positions="learned",
    qkv_bias=True,
    out_bias=True,
    mlp_bias=True,
    qk_norm=True,
    post_norms=True,
)


@pytest.mark.parametrize(
    "overrides, total, stacked_count",
    [
        ({}, 11, 9),  # per layer: 4 attention + 3 MLP + 2 norm weights
        ({"tie_embeddings": False}, 12, 9),
        # + position table; per layer: 4 biases, q/k norms, 2 post norms, 3 MLP biases, a bias per norm
        (ALL_SWITCHES, 31, 26),
    ],
)
def test_every_param_has_allowed_logical_names(overrides, total, stacked_count):
    config = tiny_config(**overrides)
    model = Decoder(config, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    names = param_logical_names(model)
    specs = nnx.get_partition_spec(params)
    seen = []

    def check(axis_names, param, spec):
        assert isinstance(axis_names, tuple) and len(axis_names) == param.ndim
        assert set(axis_names) <= ALLOWED_NAMES and set(axis_names) <= set(DEFAULT_RULES)
        assert spec.get_value() == PartitionSpec(*axis_names)
        stacked = axis_names[0] == "layers"
        assert not stacked or param.shape[0] == config.num_layers
        seen.append((axis_names, stacked))

    jax.tree.map(check, names, params, specs, is_leaf=lambda x: isinstance(x, tuple))
    assert len(seen) == len(jax.tree.leaves(params)) == total
    assert sum(stacked for _, stacked in seen) == stacked_count
    assert param_logical_names(params) == names


EVERY_OTHER_SWITCH = dict(  # what the KV-cache path must honour beyond Llama: sliding window, caps, positions
    norm="layernorm",
    positions="learned",
    max_position_embeddings=16,
    gated_mlp=False,
    qkv_bias=True,
    out_bias=True,
    mlp_bias=True,
    qk_norm=True,
    post_norms=True,
    scale_embeddings=True,
    attn_softcap=1.5,
    final_softcap=2.0,
    layer_types=["sliding_attention", "full_attention"],
    sliding_window=3,
    activation="gelu_new",
)


@pytest.mark.parametrize("overrides", [{}, EVERY_OTHER_SWITCH], ids=["llama", "every_other_switch"])
def test_kv_cache_decode_matches_full_forward(overrides):
    graphdef, params = split_model(tiny_config(**overrides))
    rng = np.random.default_rng(1)
    prompt_len, new = 5, 4
    prompt_lengths = np.array([5, 2, 3])
    prompt_valid = np.arange(prompt_len)[None] >= prompt_len - prompt_lengths[:, None]  # left-padded
    valid = np.concatenate([prompt_valid, np.ones((3, new), bool)], axis=1)
    tokens = rng.integers(0, 64, size=valid.shape).astype(np.int32)
    positions = _positions(valid)

    full = jax.jit(lambda p, *args: nnx.merge(graphdef, p)(*args))(params, tokens, positions, valid)
    decode = jax.jit(lambda p, *args: nnx.merge(graphdef, p).decode(*args))
    cache = nnx.merge(graphdef, params).init_cache(3, prompt_len + new)
    assert cache.k.shape == (2, 3, prompt_len + new, 2, 8) and not cache.valid.any()

    chunks = [(0, prompt_len)] + [(prompt_len + i, prompt_len + i + 1) for i in range(new)]
    for start, stop in chunks:
        columns = slice(start, stop)
        logits, cache = decode(
            params, tokens[:, columns], positions[:, columns], valid[:, columns], cache, jnp.int32(start)
        )
        np.testing.assert_allclose(
            np.asarray(logits)[valid[:, columns]], np.asarray(full)[:, columns][valid[:, columns]], atol=1e-5
        )
    np.testing.assert_array_equal(cache.valid, valid)


def _loss_grad_and_jaxpr(remat: bool):
    graphdef, params = split_model(tiny_config(remat=remat))
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 64, size=(2, 6)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(6), tokens.shape)
    valid = jnp.arange(6)[None] < jnp.array([[6], [3]])

    def loss(p):
        logits = nnx.merge(graphdef, p)(tokens, positions, valid)
        logp = jax.nn.log_softmax(logits[:, :-1])
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(nll * valid[:, 1:]) / jnp.sum(valid[:, 1:])

    return jax.jit(jax.grad(loss))(params), str(jax.make_jaxpr(jax.grad(loss))(params))


def test_remat_gives_same_gradient():
    grads, jaxpr = _loss_grad_and_jaxpr(remat=False)
    remat_grads, remat_jaxpr = _loss_grad_and_jaxpr(remat=True)
    assert "remat" not in jaxpr and "remat" in remat_jaxpr
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, remat_grads)


def test_compute_dtype_and_float32_logits():
    graphdef, params = split_model(tiny_config(dtype="bfloat16"))
    model = nnx.merge(graphdef, params)
    reference = nnx.merge(*split_model(tiny_config()))
    tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
    positions = jnp.broadcast_to(jnp.arange(6), tokens.shape)
    valid = jnp.ones_like(tokens, bool)
    forward = nnx.jit(lambda m: m(tokens, positions, valid))  # one program per model, not op by op
    logits = forward(model)
    assert logits.dtype == jnp.float32 and model.init_cache(2, 4).k.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    np.testing.assert_allclose(logits, forward(reference), atol=0.1)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"num_heads": 3, "num_kv_heads": 1}, "num_heads"),  # 32 % 3 != 0
        ({"num_kv_heads": 3}, "num_kv_heads"),  # 4 % 3 != 0
        ({"head_dim": 5}, "head_dim"),  # odd: RoPE needs pairs
        ({"dtype": "int32"}, "dtype"),
        ({"param_dtype": "float13"}, "param_dtype"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"model\.{field}\b"):
        Decoder(tiny_config(**overrides), rngs=nnx.Rngs(0))
