"""``jaxspo label``: a tiny random HF sequence-classification reward model ported to our decoder, sharded over 8
devices, gives PyTorch's rewards (≤ 1e-4) and p̂ = σ((r_chosen − r_rejected)/τ); bad folders, data and outputs
end in one line."""

import copy
import gzip
import json

import jax
import numpy as np
import pytest
import torch
import transformers

from jaxspo import cli
from jaxspo.reward_model import RewardModel
from tests import hf_tiny

ROWS = [
    {"prompt": "reverse 1 2 3 :", "chosen": " 3 2 1", "rejected": " 3 um 1", "id": 0},
    {
        "prompt": "reverse 4 :",
        "chosen": " 4",
        "rejected": " well 5",
        "soft_label": 0.9,
    },  # an old soft label is replaced
    {
        "prompt": [{"role": "user", "content": "reverse 5 6 :"}],
        "chosen": [{"role": "assistant", "content": "6 5"}],
        "rejected": [{"role": "assistant", "content": "5 6 5 6"}],
    },
    {
        "chosen": [{"role": "user", "content": "again 7 :"}, {"role": "assistant", "content": "7"}],  # implicit prompt
        "rejected": [
            {"role": "user", "content": "again 7 :"},
            {"role": "assistant", "content": "8 8 8 8 8 8 8 8 8 8 8 8 8 8 8 8"},
        ],
    },  # cut at --max-length
    {"prompt": "reverse 9 0 :", "chosen": " 0 9", "rejected": " 9 0"},
]


def reward_folder(folder, arch="llama2", num_labels=1, pickle=False):
    """A tiny random ``*ForSequenceClassification`` folder of ``arch`` (hf_tiny's config) with O(1) weights;
    ``pickle``: its weights only as a pickled ``pytorch_model.bin``."""
    config = copy.deepcopy(hf_tiny.CONFIGS[arch])
    config.num_labels, config.pad_token_id = num_labels, hf_tiny.tokenizer().pad_token_id
    torch.manual_seed(1)
    model = hf_tiny.redraw(
        transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").float().eval()
    )
    model.save_pretrained(folder)
    if pickle:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    hf_tiny.tokenizer().save_pretrained(folder)
    return folder


def write_rows(path, rows):
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


@pytest.mark.parametrize("arch", ["llama2", "qwen2", "gemma2", "gpt2"])
def test_label_gives_pytorchs_rewards_and_their_bradley_terry_probability(arch, tmp_path, capsys):
    assert jax.device_count() == 8
    folder = reward_folder(tmp_path / "rm", arch)
    data, out = write_rows(tmp_path / "pairs.jsonl.gz", ROWS), tmp_path / "labelled.jsonl"
    argv = [
        "label",
        str(data),
        "--reward-model",
        str(folder),
        "--out",
        str(out),
        "--temperature",
        "0.5",
        "--batch-size",
        "4",
        "--max-length",
        "16",
    ]
    assert cli.main(argv) == 0
    assert "labelled 5 pairs (1 responses cut at --max-length 16)" in capsys.readouterr().out
    written = [json.loads(line) for line in out.read_text().splitlines()]

    oracle = RewardModel(folder, batch_size=3, max_length=16)  # PyTorch, padded batches, transformers' last-token rule
    prompts = [r.get("prompt", r["chosen"][:1]) for r in ROWS]
    responses = {side: [r[side] if "prompt" in r else r[side][1:] for r in ROWS] for side in ("chosen", "rejected")}
    for side in ("chosen", "rejected"):
        expected = oracle.score(prompts, [x[0]["content"] if isinstance(x, list) else x for x in responses[side]])
        np.testing.assert_allclose([w[f"{side}_reward"] for w in written], expected, atol=1e-4, rtol=0)
    margins = np.array([w["chosen_reward"] - w["rejected_reward"] for w in written])
    assert np.abs(margins).min() > 1e-3 and np.ptp(margins) > 0.1  # distinct rewards: a mixed-up row would show
    np.testing.assert_allclose([w["soft_label"] for w in written], 1 / (1 + np.exp(-margins / 0.5)), rtol=1e-12)
    assert [{k: w[k] for k in r if k != "soft_label"} for r, w in zip(ROWS, written)] == [
        {k: v for k, v in r.items() if k != "soft_label"} for r in ROWS
    ]


def one_error_line(argv, status, capsys):
    """The command's one error line (its other stderr lines are progress and log lines)."""
    capsys.readouterr()
    assert cli.main(argv) == status
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("jaxspo: ") and " error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_label_refuses_bad_folders_data_and_an_existing_output_in_one_line(tmp_path, capsys):
    data = write_rows(tmp_path / "pairs.jsonl.gz", ROWS[:1])
    good = reward_folder(tmp_path / "good")
    run = lambda folder, out="out.jsonl", rows=data, *extra: [
        "label",
        str(rows),
        "--reward-model",
        str(folder),
        "--out",
        str(tmp_path / out),
        *extra,
    ]  # noqa: E731

    err = one_error_line(run(reward_folder(tmp_path / "pickle", pickle=True)), 1, capsys)
    assert (
        err.startswith("jaxspo: checkpoint error: ")
        and "pytorch_model.bin: refusing to load a pickle checkpoint" in err
    )
    err = one_error_line(run(reward_folder(tmp_path / "two", num_labels=2)), 1, capsys)
    assert err.endswith(
        "config.json: num_labels is 2; a reward model has one output (num_labels=1): give a reward model folder"
    )
    err = one_error_line(run(hf_tiny.save(hf_tiny.build_hf("llama2"), tmp_path / "causal")), 1, capsys)
    assert "architectures ['LlamaForCausalLM'] has no *ForSequenceClassification class" in err
    err = one_error_line(
        run(good, "out.jsonl", write_rows(tmp_path / "bad.jsonl.gz", [{"prompt": "p", "chosen": "c"}])), 1, capsys
    )
    assert err.startswith("jaxspo: data error: ") and "bad.jsonl.gz: row 0: " in err and "rejected" in err
    err = one_error_line(
        run(good, "out.jsonl", write_rows(tmp_path / "num.jsonl.gz", [ROWS[0], {"chosen": "c", "rejected": "r"}])),
        1,
        capsys,
    )
    assert err.endswith(
        "num.jsonl.gz: row 1: field 'prompt' is missing; a reward model scores text or messages, so give it one"
    )
    (tmp_path / "taken.jsonl").write_text("keep me\n")
    err = one_error_line(run(good, "taken.jsonl"), 2, capsys)
    assert err.endswith("taken.jsonl: already exists; give another --out, or --overwrite to replace it")
    assert (tmp_path / "taken.jsonl").read_text() == "keep me\n"
    assert cli.main(run(good, "taken.jsonl", data, "--overwrite")) == 0
    assert json.loads((tmp_path / "taken.jsonl").read_text())["id"] == 0
    err = one_error_line(run(good, "t.jsonl", data, "--temperature", "-1"), 2, capsys)
    assert "argument --temperature: expected a number > 0, got '-1'" in err
