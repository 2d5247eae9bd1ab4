"""HF → jaxspo → HF: bit-identical tensors for every architecture, and exports transformers loads cleanly."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open

from jaxspo import cli
from jaxspo.config import config_from_dict, dump_yaml
from jaxspo.models import Decoder, ModelConfig
from jaxspo.models.hf_config import model_config_from_hf
from jaxspo.models.hf_io import load_params, load_tokenizer, save_hf
from jaxspo.sharding import DEFAULT_RULES, make_mesh
from jaxspo.checkpoint import save_params
from jaxspo.train.state import abstract_model, param_shardings
from tests import hf_tiny


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def load(folder, mesh, dtype="float32"):
    cfg = model_config_from_hf(folder, ModelConfig(path=str(folder), dtype=dtype, param_dtype=dtype))
    graphdef, abstract = abstract_model(cfg)
    return graphdef, load_params(folder, cfg, abstract, param_shardings(abstract, mesh, DEFAULT_RULES)), cfg


def tensors(folder) -> dict[str, np.ndarray]:
    """Every tensor of an HF folder (single file or shards), as raw numpy."""
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as f:
            out |= {name: f.get_tensor(name) for name in f.keys()}
    return out


def assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("name", hf_tiny.ARCHS)
def test_round_trip_is_bit_identical_and_loads_in_transformers(name, tmp_path, mesh):
    hf = hf_tiny.build_hf(name)
    source = hf_tiny.save(hf, tmp_path / "source")
    graphdef, params, cfg = load(source, mesh)
    out = save_hf(params, cfg, load_tokenizer(source), tmp_path / "out")

    assert_bit_identical(tensors(source), tensors(out))
    exported, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True, attn_implementation="eager"
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights, no errors
    assert type(exported) is type(hf)
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == hf_tiny.tokenizer().chat_template
    eos = hf.config.eos_token_id if hf.config.eos_token_id is not None else hf_tiny.tokenizer().eos_token_id
    assert (
        json.loads((out / "generation_config.json").read_text())["eos_token_id"] == exported.config.eos_token_id == eos
    )

    tokens, valid, positions = hf_tiny.batch()
    expected, _ = hf_tiny.hf_forward(exported.eval(), tokens, valid, positions)
    logits = jax.jit(lambda p: nnx.merge(graphdef, p)(tokens, positions, valid))(params)
    np.testing.assert_allclose(np.asarray(logits)[valid], expected[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "name, dtype", [("llama3", "bfloat16"), ("gemma2", "bfloat16"), ("gpt2", "float16"), ("mistral", "float16")]
)
def test_half_precision_sharded_round_trip(name, dtype, tmp_path, mesh):
    """bf16/fp16 in, sharded index in, sharded index out: still bit-identical."""
    source = hf_tiny.save(hf_tiny.build_hf(name), tmp_path / "source", getattr(torch, dtype), max_shard_size="20KB")
    assert (source / "model.safetensors.index.json").is_file()
    _, params, cfg = load(source, mesh, dtype=dtype)
    out = save_hf(params, cfg, load_tokenizer(source), tmp_path / "out", max_shard_size="20KB")

    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(out.glob("model-*.safetensors"))
    assert len(files) > 1 and set(index["weight_map"].values()) == {f.name for f in files}
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    assert_bit_identical(tensors(source), tensors(out))
    _, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info


def test_export_dtype_converts(tmp_path, mesh):
    source = hf_tiny.save(hf_tiny.build_hf("qwen3"), tmp_path / "source")
    _, params, cfg = load(source, mesh)
    out = save_hf(params, cfg, load_tokenizer(source), tmp_path / "out", dtype="bfloat16")
    expected = {k: v.astype("bfloat16") for k, v in tensors(source).items()}
    assert_bit_identical(expected, tensors(out))


def _run_dir(tmp_path, source, mesh):
    """A run directory as `jaxspo train` leaves it (config.yaml, params/, tokenizer/), policy = ``source``."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _, params, model = load(source, mesh)
    dump_yaml(dataclasses.replace(config_from_dict({}), model=model), run_dir / "config.yaml")
    save_params(params, run_dir / "params")
    load_tokenizer(source).save_pretrained(str(run_dir / "tokenizer"))
    return run_dir


def test_cli_export_run_dir(tmp_path, mesh, capsys):
    source = hf_tiny.save(hf_tiny.build_hf("gpt2"), tmp_path / "source")
    run_dir = _run_dir(tmp_path, source, mesh)
    out = tmp_path / "exported"
    assert cli.main(["export", str(run_dir), "--out", str(out), "--max-shard-size", "50KB"]) == 0
    assert str(out) in capsys.readouterr().out
    assert (out / "model.safetensors.index.json").is_file()
    assert_bit_identical(tensors(source), tensors(out))


def test_cli_export_names_missing_run_files(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "config.yaml" in capsys.readouterr().err


def test_cli_score_matches_pytorch(tmp_path):
    hf = hf_tiny.build_hf("qwen2")
    source = hf_tiny.save(hf, tmp_path / "source")
    rows = [
        {"prompt": "reverse 1 2 3 :", "chosen": "3 2 1", "rejected": "3 um 1"},
        {"prompt": "reverse 4 :", "chosen": "4", "rejected": "well 5"},
        {"prompt": "reverse 5 6 :", "chosen": "6 5 5 5 5 5 5 5 5 5", "rejected": "6 5"},  # chosen is cut at 12 tokens
    ]
    data, out = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        cli.main(["score", str(source), str(data), "--out", str(out), "--max-length", "12", "--batch-size", "2"]) == 0
    )
    scored = [json.loads(line) for line in out.read_text().splitlines()]

    tok = load_tokenizer(source)
    for row, result in zip(rows, scored):
        assert {k: result[k] for k in row} == row
        for side in ("chosen", "rejected"):
            prompt = [tok.bos_token_id] + tok(row["prompt"], add_special_tokens=False)["input_ids"]
            ids = (prompt + tok(row[side], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:12]
            with torch.no_grad():
                logp = torch.log_softmax(hf(input_ids=torch.tensor([ids])).logits[0, :-1], dim=-1)
            expected = sum(logp[t - 1, ids[t]].item() for t in range(len(prompt), len(ids)))
            assert result[f"{side}_logp"] == pytest.approx(expected, abs=1e-4)
            assert result[f"{side}_length"] == len(ids) - len(prompt)
    assert [r["truncated"] for r in scored] == [False, False, True]


def test_randomly_initialised_model_exports_as_llama(tmp_path):
    """The built-in demo's model (no model.path) exports too, with the task tokenizer."""
    cfg = ModelConfig(
        vocab_size=20, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, init_std=0.3
    )
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    out = save_hf(params, cfg, hf_tiny.tokenizer(), tmp_path / "demo")
    exported, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True, attn_implementation="eager"
    )
    assert not any(info.values()) and isinstance(exported, transformers.LlamaForCausalLM)
    tokens, valid, positions = hf_tiny.batch()
    tokens = tokens % cfg.vocab_size
    expected, _ = hf_tiny.hf_forward(exported.eval(), tokens, valid, positions)
    logits = np.asarray(jax.jit(lambda p: nnx.merge(graphdef, p)(tokens, positions, valid))(params))
    np.testing.assert_allclose(logits[valid], expected[valid], atol=1e-4, rtol=0)


def test_training_and_loading_never_import_torch():
    """torch (≈ 10 s to import on 2 cores) is for exporting and the tests' oracles only: the CLI, the training
    loop, the HF loaders, the scorer and the labeller start without it."""
    import os
    import subprocess
    import sys

    modules = (
        "jaxspo.cli, jaxspo.train.loop, jaxspo.models.hf_io, jaxspo.models.hf_config, "
        "jaxspo.score, jaxspo.label, jaxspo.eval_run"
    )
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
