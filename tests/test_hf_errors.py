"""Refusals: every bad HF folder ends in a CheckpointError naming the file (and tensor), never a crash in XLA."""

import dataclasses
import json
import re

import pytest
from safetensors.numpy import save_file
from safetensors import safe_open

from jaxspo.models import ModelConfig
from jaxspo.models.hf_config import CheckpointError, hf_config_from_model, model_config_from_hf
from jaxspo.models.hf_io import load_params
from jaxspo.sharding import DEFAULT_RULES, make_mesh
from jaxspo.train.state import abstract_model, param_shardings
from tests import hf_tiny


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A valid tiny Llama folder; tests copy and damage it."""
    return hf_tiny.save(hf_tiny.build_hf("llama2"), tmp_path_factory.mktemp("llama"))


@pytest.fixture
def copy(folder, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    for file in folder.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def load(path):
    cfg = model_config_from_hf(path, ModelConfig())
    _, abstract = abstract_model(cfg)
    return load_params(path, cfg, abstract, param_shardings(abstract, make_mesh({"data": -1}), DEFAULT_RULES))


def rewrite_tensors(path, edit):
    """Rewrites model.safetensors with ``edit(dict of tensors)`` applied."""
    file = path / "model.safetensors"
    with safe_open(str(file), framework="numpy") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | changes))


def raises(match):
    return pytest.raises(CheckpointError, match=match)


def test_valid_folder_loads(copy):
    assert load(copy)["layers"]["attn"]["q_proj"].shape == (3, 32, 4, 8)


def test_pickle_checkpoint_is_refused_unread(copy):
    (copy / "model.safetensors").unlink()
    (copy / "pytorch_model.bin").write_bytes(b"not even a pickle: it must never be opened")
    with raises(r"pytorch_model\.bin: refusing to load a pickle checkpoint"):
        load(copy)
    with raises(r"pytorch_model\.bin: refusing to load a pickle checkpoint"):
        model_config_from_hf(copy / "pytorch_model.bin", ModelConfig())


def test_folder_without_weights(copy):
    (copy / "model.safetensors").unlink()
    with raises(r"has neither model\.safetensors nor model\.safetensors\.index\.json"):
        load(copy)


@pytest.mark.parametrize("model_type", ["bert", None])
def test_unknown_model_type(copy, model_type):
    edit_config(copy, model_type=model_type)
    with raises(rf"config\.json: model_type {model_type!r} is not supported; supported: llama, mistral"):
        load(copy)


def test_missing_tensor(copy):
    rewrite_tensors(copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with raises(r"model\.safetensors: missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load(copy)


def test_unexpected_tensor(copy):
    rewrite_tensors(copy, lambda t: t.update({"model.layers.0.mlp.extra.weight": t["model.norm.weight"]}))
    with raises(r"model\.safetensors: unexpected tensor 'model\.layers\.0\.mlp\.extra\.weight' for a 'llama' model"):
        load(copy)


def test_stale_rotary_buffers_are_ignored(copy):
    rewrite_tensors(
        copy, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": t["model.norm.weight"][:4]})
    )
    load(copy)


def test_shape_disagrees_with_config(copy):
    edit_config(copy, intermediate_size=48)
    with raises(
        r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \(64, "
        r"32\) but config\.json implies \(48, 32\)"
    ):
        load(copy)


def test_integer_tensor_is_refused(copy):
    rewrite_tensors(copy, lambda t: t.update({"model.norm.weight": t["model.norm.weight"].astype("int32")}))
    with raises(r"tensor 'model\.norm\.weight' has dtype I32"):
        load(copy)


def test_sharded_index_problems(folder, tmp_path):
    sharded = hf_tiny.save(hf_tiny.build_hf("llama2"), tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    name, file = next(iter(index["weight_map"].items()))
    (sharded / file).rename(sharded / "moved.safetensors")
    with raises(rf"model\.safetensors\.index\.json: lists {re.escape(file)}, which does not exist"):
        load(sharded)
    (sharded / "moved.safetensors").rename(sharded / file)
    other = next(f for f in index["weight_map"].values() if f != file)
    index["weight_map"][name] = other
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with raises(
        rf"{re.escape(other)}: tensor '{re.escape(name)}' is listed in model\.safetensors\.index\.json but missing"
    ):
        load(sharded)


def test_unsupported_rope_type(copy):
    edit_config(copy, rope_parameters={"rope_type": "yarn", "rope_theta": 500.0, "factor": 2.0})
    with raises(r"config\.json: rope_type 'yarn' is not supported"):
        load(copy)


def test_legacy_llama3_rope_keys_are_read(copy):
    config = json.loads((copy / "config.json").read_text())
    del config["rope_parameters"]
    legacy = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    (copy / "config.json").write_text(json.dumps(config | {"rope_theta": 100.0, "rope_scaling": legacy}))
    cfg = model_config_from_hf(copy, ModelConfig())
    assert (
        cfg.rope_theta == 100.0
        and cfg.rope_scaling.type == "llama3"
        and cfg.rope_scaling.original_max_position_embeddings == 32
    )


def test_recipe_architecture_must_agree_with_config_json(folder):
    with raises(r"config\.json: hidden_size is 32 but the recipe sets model\.hidden_size=64"):
        model_config_from_hf(folder, ModelConfig(hidden_size=64))
    assert model_config_from_hf(folder, ModelConfig(hidden_size=32, dtype="bfloat16")).dtype == "bfloat16"


def test_export_refuses_a_switch_the_architecture_lacks(folder):
    cfg = dataclasses.replace(model_config_from_hf(folder, ModelConfig()), qk_norm=True)
    with raises(r"model\.qk_norm=True cannot be expressed as a 'llama' config\.json"):
        hf_config_from_model(cfg, "float32", {})
    hf_config_from_model(dataclasses.replace(cfg, arch="qwen3"), "float32", {})
