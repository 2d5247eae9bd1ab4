"""The HH-RLHF walkthrough of docs/datasets.md on a tiny model: downloaded files → data prepare → train → eval →
export."""

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
            rows.append(
                {"chosen": prompt + A + f"{(i * 3) % 10} {i % 10}", "rejected": prompt + A + "um " * (1 + i % 3)}
            )
        (folder / "helpful-base").mkdir(parents=True, exist_ok=True)
        (folder / "helpful-base" / f"{split}.jsonl.gz").write_bytes(
            gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
        )


def reward_model(folder):
    """A tiny random Llama sequence classifier with one output: a stand-in for a real reward model folder."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=0,
    )
    transformers.LlamaForSequenceClassification(config).save_pretrained(folder)
    hf_tiny.tokenizer().save_pretrained(folder)


# the tiny run of configs/hh_rlhf_dpo.yaml: float32, two steps, short rows, a small evaluation
TRAIN_OVERRIDES = [
    "model.dtype=float32",
    "model.remat=false",
    "data.max_length=48",
    "data.max_prompt_length=24",
    "data.buckets=[24]",
    "trainer.steps=2",
    "trainer.batch_size=8",
    "eval.num_pairs=8",
    "eval.num_prompts=8",
    "eval.max_new_tokens=4",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]


def prepare_hh(tmp_path, capsys):
    """``jaxspo data prepare hh_rlhf`` of 16 downloaded conversations per split: the TFDS folder."""
    from jaxspo.cli import main

    hh_download(tmp_path / "hh-rlhf", 16)
    tfds = tmp_path / "tfds"
    assert main(["data", "prepare", "hh_rlhf", "--manual-dir", str(tmp_path / "hh-rlhf"), "--data-dir", str(tfds)]) == 0
    assert "| train | 16 |" in capsys.readouterr().out
    return tfds


def train_hh(model, tfds, run):
    """``jaxspo train configs/hh_rlhf_dpo.yaml`` of ``model`` on the prepared rows into ``run``; checks its data
    report and curves."""
    from jaxspo.cli import main

    sources = [f"model.path={model}", f"data.source.path={tfds}", f"run_dir={run}"]
    assert main(["train", "configs/hh_rlhf_dpo.yaml", *sources, *TRAIN_OVERRIDES]) == 0
    report = json.loads((run / "data_report.json").read_text())
    assert [r["source"] for r in report] == ["hh_rlhf:train", "hh_rlhf:test"] and report[0]["kept"] == 16
    assert (run / "curves.png").is_file()


def check_eval_reproduces_the_run(run, tmp_path, capsys):
    """``jaxspo eval RUN_DIR`` reproduces the run's final evaluation; a reward model adds the win rate."""
    from jaxspo.cli import main

    logged = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["phase"] == "eval"][-1]
    reward_model(tmp_path / "rm")
    capsys.readouterr()
    assert main(["eval", str(run), "--reward-model", str(tmp_path / "rm"), "--out", str(tmp_path / "eval")]) == 0
    assert "eval/rm/win_rate" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert {k for k in logged if k.startswith("eval/")} == {k for k in metrics if not k.startswith("eval/rm/")}
    for name, value in logged.items():
        if name.startswith("eval/"):
            assert metrics[name] == pytest.approx(value, abs=1e-6), name
    assert 0.0 <= metrics["eval/rm/win_rate"] <= 1.0
    assert metrics["eval/rm/policy_reward"] != metrics["eval/rm/reference_reward"]  # two different sets of samples
    assert main(["eval", str(tmp_path / "rm")]) == 1  # a folder that is not a run directory


def check_export(run, out):
    """``jaxspo export`` writes a Llama folder that transformers loads, with the model's chat template."""
    import transformers

    from jaxspo.cli import main

    assert main(["export", str(run), "--out", str(out)]) == 0
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == hf_tiny.tokenizer().chat_template


@pytest.mark.slow
def test_hh_rlhf_from_download_to_exported_model(tmp_path, capsys):
    tfds = prepare_hh(tmp_path, capsys)
    model = hf_tiny.save(hf_tiny.build_hf("llama2"), tmp_path / "model")  # its tokenizer has a chat template
    train_hh(model, tfds, tmp_path / "run")
    check_eval_reproduces_the_run(tmp_path / "run", tmp_path, capsys)
    check_export(tmp_path / "run", tmp_path / "exported")
