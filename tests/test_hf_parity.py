"""Ports vs transformers (PyTorch): every architecture, loaded from an HF folder onto a (2, 2, 2) mesh.

Each batch mixes right- and left-padded rows. float32: the residual stream after the embeddings and
after every layer, and the logits, agree to 1e-4 (reached: below 1e-5); sequence log-probs agree to
1e-4. bfloat16 (the documented tolerance): a bf16 checkpoint computed in bf16 is within 0.15 of
PyTorch bf16 on O(1) logits, and no further from the float32 model than PyTorch's own bf16 is (× 2).
"""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxspo.models import ModelConfig
from jaxspo.models.hf_config import model_config_from_hf
from jaxspo.models.hf_io import load_params
from jaxspo.sharding import DEFAULT_RULES, make_mesh
from jaxspo.train.logprobs import sequence_logps
from jaxspo.train.state import abstract_model, param_shardings
from tests import hf_tiny

BF16_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def load(folder, mesh, dtype="float32", param_dtype="float32"):
    """(graphdef, params, ModelConfig) of the HF folder, sharded over ``mesh``."""
    cfg = model_config_from_hf(folder, ModelConfig(dtype=dtype, param_dtype=param_dtype))
    graphdef, abstract = abstract_model(cfg)
    return graphdef, load_params(folder, cfg, abstract, param_shardings(abstract, mesh, DEFAULT_RULES)), cfg


@pytest.fixture(scope="module", params=hf_tiny.ARCHS)
def arch(request, tmp_path_factory, mesh):
    """One tiny architecture: the PyTorch model, its float32 folder, and our model loaded from it."""
    hf = hf_tiny.build_hf(request.param)
    folder = hf_tiny.save(hf, tmp_path_factory.mktemp(request.param))
    graphdef, params, cfg = load(folder, mesh)
    return request.param, hf, folder, graphdef, params, cfg


def test_hidden_states_and_logits_match_pytorch(arch):
    name, hf, _, graphdef, params, cfg = arch
    assert cfg.arch == hf.config.model_type
    tokens, valid, positions = hf_tiny.batch()
    expected_logits, expected_hidden = hf_tiny.hf_forward(hf, tokens, valid, positions)
    logits, hidden = jax.jit(lambda p: nnx.merge(graphdef, p).hidden_states(tokens, positions, valid))(params)
    logits, hidden = np.asarray(logits), np.asarray(hidden)

    assert hidden.shape == expected_hidden.shape == (cfg.num_layers + 1, 6, 7, cfg.hidden_size)
    assert expected_logits[valid].std() > 0.5  # the comparison is not between near-zero numbers
    for layer in range(cfg.num_layers + 1):
        np.testing.assert_allclose(
            hidden[layer][valid], expected_hidden[layer][valid], atol=1e-4, rtol=0, err_msg=f"{name} layer {layer}"
        )
    np.testing.assert_allclose(logits[valid], expected_logits[valid], atol=1e-4, rtol=0, err_msg=name)


def test_sequence_logps_match_pytorch(arch):
    """Sum of log p(response token | prefix) over a (prompt, response) pair, as the loss sees it."""
    _, hf, _, graphdef, params, _ = arch
    tokens, valid, positions = hf_tiny.batch(seed=1)
    first = valid.argmax(axis=1)
    loss_mask = valid & (np.arange(7)[None] >= (first + 1)[:, None])  # everything after the first token is "response"
    ours, count = jax.jit(lambda p: sequence_logps(graphdef, p, tokens, valid, loss_mask))(params)

    logits, _ = hf_tiny.hf_forward(hf, tokens, valid, positions)
    logp = torch.log_softmax(torch.from_numpy(logits[:, :-1]), dim=-1)
    picked = torch.gather(logp, 2, torch.from_numpy(tokens[:, 1:]).long()[..., None])[..., 0].numpy()
    expected = (picked * loss_mask[:, 1:]).sum(axis=1)
    np.testing.assert_array_equal(np.asarray(count), loss_mask[:, 1:].sum(axis=1))
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-4, rtol=0)


def test_bfloat16_checkpoint(arch, tmp_path, mesh):
    name, hf, _, _, _, _ = arch
    tokens, valid, positions = hf_tiny.batch()
    torch32 = hf_tiny.hf_forward(hf, tokens, valid, positions)[0][valid]
    folder = hf_tiny.save(hf, tmp_path / "bf16", torch.bfloat16)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, attn_implementation="eager"
    )
    torch16 = hf_tiny.hf_forward(torch_model.eval(), tokens, valid, positions)[0][valid]
    graphdef, params, _ = load(folder, mesh, dtype="bfloat16", param_dtype="bfloat16")
    assert all(p.dtype == jax.numpy.bfloat16 for p in jax.tree.leaves(params))
    ours16 = np.asarray(jax.jit(lambda p: nnx.merge(graphdef, p)(tokens, positions, valid))(params))[valid]

    assert np.abs(ours16 - torch16).max() <= BF16_TOLERANCE, name
    assert np.abs(ours16 - torch32).max() <= 2 * np.abs(torch16 - torch32).max(), name
