"""The README's HH-RLHF walkthrough on a tiny model: downloaded files → data prepare → train → export."""

import gzip
import json

import pytest

from tests import hf_tiny

H, A = "\n\nHuman: ", "\n\nAssistant: "


def hh_download(folder, n):
    """HH-RLHF's layout (helpful-base/{train,test}.jsonl.gz) with n two-turn conversations per split."""
    for split in ("train", "test"):
        rows = []
        for i in range(n):
            prompt = f"{H}reverse {i % 10} {(i * 3) % 10} :{A}ok{H}again {'1 ' * (i % 5)}:"
            rows.append({"chosen": prompt + A + f"{(i * 3) % 10} {i % 10}", "rejected": prompt + A + "um " * (1 + i % 3)})
        (folder / "helpful-base").mkdir(parents=True, exist_ok=True)
        (folder / "helpful-base" / f"{split}.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))


@pytest.mark.slow
def test_hh_rlhf_from_download_to_exported_model(tmp_path, capsys):
    from jaxspo.cli import main

    hh_download(tmp_path / "hh-rlhf", 16)
    model = hf_tiny.save(hf_tiny.build_hf("llama2"), tmp_path / "model")  # its tokenizer has a chat template
    assert main(["data", "prepare", "hh_rlhf", "--manual-dir", str(tmp_path / "hh-rlhf"), "--data-dir", str(tmp_path / "tfds")]) == 0
    assert "| train | 16 |" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main([
        "train", "configs/hh_rlhf_dpo.yaml", f"model.path={model}", f"data.source.path={tmp_path / 'tfds'}", f"run_dir={run}",
        "model.dtype=float32", "model.remat=false", "data.max_length=48", "data.max_prompt_length=24", "data.buckets=[24]",
        "trainer.steps=2", "trainer.batch_size=8", "eval.num_pairs=8", "eval.num_prompts=8", "eval.max_new_tokens=4",
        "logging.progress_bar=false", "logging.tensorboard=false",
    ]) == 0
    report = json.loads((run / "data_report.json").read_text())
    assert [r["source"] for r in report] == ["hh_rlhf:train", "hh_rlhf:test"] and report[0]["kept"] == 16
    assert (run / "curves.png").is_file()
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    import transformers

    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    assert exported.config.model_type == "llama"
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "exported").chat_template == hf_tiny.tokenizer().chat_template
