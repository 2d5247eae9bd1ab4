"""The attention kernels inside the tiny HF architectures (each attention variant: GQA and plain heads, sliding
windows, soft-caps, q/k norm): sequence log-probs, DPO loss and parameter gradients of chunked and splash (Pallas
interpret mode), on padded and packed pair rows, equal xla's on a (2, 2, 2) mesh of CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.data.layout import pack_pairs
from jaxspo.losses.dpo_family import logistic_loss
from jaxspo.models import ModelConfig
from jaxspo.models.hf_config import model_config_from_hf
from jaxspo.models.hf_io import load_params
from jaxspo.models.splash_attention import pallas_interpret
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh
from jaxspo.train.state import abstract_model, param_shardings
from jaxspo.objectives.batches import PackedPairBatch, PairBatch
from jaxspo.objectives.pairs import PACKED, PADDED
from tests import hf_tiny

ATOL = 1e-5
BLOCK = 8  # small blocks, so every row spans several blocks and skips some


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
# The architectures whose attention the kernels see differently: sliding windows on every layer (mistral), on some
# layers (qwen2, with biases), q/k norm and a head dim apart from hidden / heads (qwen3), soft-caps, a query scale
# and alternating windows (gemma2), heads without grouping (gpt2). llama2, llama3 and gemma hand the kernels plain
# GQA heads as qwen2's full layers and qwen3 do (their other parts match PyTorch: tests/test_hf_parity.py).
ATTENTION_ARCHS = ("mistral", "qwen2", "qwen3", "gemma2", "gpt2")


def _model_cases() -> list:
    """Each architecture of :data:`ATTENTION_ARCHS` × layout once, with one kernel: the architectures alternate
    which layout runs chunked and which splash, so every architecture meets both kernels and both layouts and every
    layout meets both kernels (all pairs, not the full product: each 8-device DPO step compile costs ~10-20 s on 2
    busy cores)."""
    cases = []
    for arch in ATTENTION_ARCHS:
        index = hf_tiny.ARCHS.index(arch)
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
