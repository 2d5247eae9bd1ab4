"""Training from HF folders: policy and reference from different folders, the folder's tokenizer, and the
end-of-training export, which transformers loads and which computes the trained policy's logits."""

import json
import math

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxspo import cli
from jaxspo.config import load_config
from jaxspo.models import ModelConfig
from jaxspo.models.hf_config import model_config_from_hf
from jaxspo.models.hf_io import load_params
from jaxspo.sharding import DEFAULT_RULES, make_mesh
from jaxspo.train.loop import train
from jaxspo.train.state import abstract_model, param_shardings
from tests import hf_tiny

TINY_RUN = [
    "data.synthetic.num_sft=32",
    "data.synthetic.num_train=64",
    "data.synthetic.num_eval=16",
    "trainer.sft_steps=0",
    "trainer.steps=3",
    "trainer.batch_size=8",
    "trainer.eval_every=0",
    "eval.num_pairs=8",
    "eval.num_prompts=8",
    "eval.max_new_tokens=4",
    "logging.log_every=1",
    "logging.progress_bar=false",
    "logging.plot=false",
    "logging.tensorboard=false",
    "mesh.data=2",
    "mesh.fsdp=2",
    "mesh.tensor=2",
    "optimizer.learning_rate=1e-2",
    "optimizer.warmup_steps=0",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_train")
    policy = hf_tiny.save(hf_tiny.build_hf("qwen2", seed=0), root / "policy")
    reference = hf_tiny.save(hf_tiny.build_hf("qwen2", seed=1), root / "reference")
    overrides = TINY_RUN + [
        f"run_dir={root / 'run'}",
        f"model.path={policy}",
        f"model.reference_path={reference}",
        f"checkpoint.export_hf_dir={root / 'exported'}",
        "checkpoint.export_dtype=float32",
    ]
    cfg = load_config("configs/demo.yaml", overrides)
    return root, cfg, train(cfg, "hf")


def test_run_uses_the_folders(run):
    root, _, result = run
    saved = load_config(result.run_dir / "config.yaml")
    assert (
        saved.model.arch == "qwen2"
        and saved.model.layer_types[2] == "sliding_attention"
        and saved.model.vocab_size == 64
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(result.run_dir / "tokenizer")
    assert tokenizer.chat_template == hf_tiny.tokenizer().chat_template
    cfg = model_config_from_hf(root / "reference", ModelConfig())
    _, abstract = abstract_model(cfg)
    reference = load_params(
        root / "reference", cfg, abstract, param_shardings(abstract, make_mesh({"data": -1}), DEFAULT_RULES)
    )
    for ours, expected in zip(jax.tree.leaves(result.reference_params), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected))
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "preference"] == [1, 2, 3]


def test_exported_policy_is_the_trained_policy(run):
    root, cfg, result = run
    exported = transformers.AutoModelForCausalLM.from_pretrained(root / "exported", attn_implementation="eager")
    _, info = transformers.AutoModelForCausalLM.from_pretrained(root / "exported", output_loading_info=True)
    assert not any(info.values()), info
    tokens, valid, positions = hf_tiny.batch()
    expected, _ = hf_tiny.hf_forward(exported.eval(), tokens, valid, positions)
    graphdef, _ = abstract_model(load_config(result.run_dir / "config.yaml").model)
    logits = np.asarray(nnx.merge(graphdef, result.params)(tokens, positions, valid))
    np.testing.assert_allclose(logits[valid], expected[valid], atol=1e-4, rtol=0)
    original, _ = hf_tiny.hf_forward(hf_tiny.build_hf("qwen2", seed=0), tokens, valid, positions)
    assert np.abs(original - expected)[valid].max() > 1e-3  # training changed the policy


def test_cli_export_of_the_run_matches_the_end_of_training_export(run, tmp_path):
    root, _, result = run
    assert cli.main(["export", str(result.run_dir), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        root / "exported" / "model.safetensors"
    ).read_bytes()


RECIPES = {
    "llama2_7b": "llama2",
    "llama3_8b": "llama3",
    "mistral_7b": "mistral",
    "qwen2_7b": "qwen2",
    "qwen3_8b": "qwen3",
    "gemma_7b": "gemma",
    "gemma2_9b": "gemma2",
    "gpt2_124m": "gpt2",
}


@pytest.mark.parametrize("recipe, arch", RECIPES.items())
def test_recipe_resolves_against_a_folder_of_its_architecture(recipe, arch, tmp_path):
    path = f"configs/{recipe}.yaml"
    with open(path) as f:
        assert f.readline().startswith(f"# jaxspo train {path}")
    assert load_config(path).model.path.startswith("/path/to/")
    folder = hf_tiny.save(hf_tiny.build_hf(arch), tmp_path / arch)
    cfg = load_config(path, [f"model.path={folder}"])
    model = model_config_from_hf(cfg.model.path, cfg.model)
    assert model.arch == hf_tiny.CONFIGS[arch].model_type and model.dtype == cfg.model.dtype


# config.json of the recipes' real models (abridged: keys that shape the weights).
REAL_CONFIGS = {
    "Llama-2-7b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
    "Llama-3.1-8B": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    "Mistral-7B-v0.1": dict(
        model_type="mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        sliding_window=4096,
    ),
    "Qwen2-7B": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        use_sliding_window=False,
    ),
    "Qwen3-8B": dict(
        model_type="qwen3",
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
    ),
    "gemma-7b": dict(
        model_type="gemma",
        hidden_size=3072,
        intermediate_size=24576,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=256,
        vocab_size=256000,
    ),
    "gemma-2-9b": dict(
        model_type="gemma2",
        hidden_size=3584,
        intermediate_size=14336,
        num_hidden_layers=42,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        vocab_size=256000,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
    ),
    "gpt2": dict(model_type="gpt2"),
}


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_real_size_config_has_the_hf_parameter_count_and_shards(name, tmp_path):
    """Shapes only (nothing allocated): our abstract model of the real config.json vs transformers on the meta
    device."""
    (tmp_path / "config.json").write_text(json.dumps(REAL_CONFIGS[name]))
    with torch.device("meta"):
        expected = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.from_pretrained(tmp_path)
        ).num_parameters()
    _, abstract = abstract_model(model_config_from_hf(tmp_path, ModelConfig()))
    assert sum(math.prod(p.shape) for p in jax.tree.leaves(abstract)) == expected
    shardings = param_shardings(abstract, make_mesh({"data": 1, "fsdp": 4, "tensor": 2}), DEFAULT_RULES)
    for param, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        assert math.prod(param.shape) < 2**20 or any(sharding.spec), param.shape  # every big weight is split
