"""TFDS builders on fixture files laid out like the upstream downloads; ArrayRecord, no TensorFlow."""

import gzip
import json
import shutil
import sys
from pathlib import Path

import math

import pytest

from jaxspo.data.prepare import prepare
from jaxspo.data.sources import SourceConfig, read_split

FIXTURES = Path(__file__).parent / "fixtures"


def manual_dir(name, tmp_path):
    """A copy of the fixture folder, with the formats upstream ships: .jsonl.gz for HH-RLHF and
    HelpSteer2, parquet for UltraFeedback."""
    out = tmp_path / "manual"
    shutil.copytree(FIXTURES / name, out)
    if name in ("hh_rlhf", "helpsteer2"):
        for path in list(out.rglob("*.jsonl")):
            path.with_suffix(".jsonl.gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
    if name == "ultrafeedback_binarized":
        import pyarrow as pa
        import pyarrow.parquet as pq

        (out / "data").mkdir()
        for split in ("train_prefs", "test_prefs"):
            rows = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
            pq.write_table(pa.Table.from_pylist(rows), out / "data" / f"{split}-00000-of-00001.parquet")
            (out / f"{split}.jsonl").unlink()
    return out


def sigmoid(x):
    """The soft labels' expected values, at the default temperature τ = 1 (float32 as stored)."""
    return pytest.approx(1 / (1 + math.exp(-x)), rel=1e-6)


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


CASES = {
    "hh_rlhf": (
        {"train": 3, "test": 1},
        {
            "train": {
                "invalid: not a '\\n\\nHuman: … \\n\\nAssistant: …' transcript": 1,
                "tie: chosen and rejected are identical": 1,
                "invalid: empty or whitespace-only response": 1,
            }
        },
        (
            "test",
            0,
            {"prompt": user("Capital of France?"), "chosen": assistant("Paris."), "rejected": assistant("Lyon.")},
        ),
    ),
    "ultrafeedback_binarized": (
        {"train_prefs": 2, "test_prefs": 1},
        {
            "train_prefs": {
                "invalid: field 'chosen' and field 'rejected' share no leading message, so there is no "
                "implicit prompt": 1
            }
        },
        (
            "test_prefs",
            0,
            {
                "prompt": user("Name a prime."),
                "chosen": assistant("7"),
                "rejected": assistant("8"),
                "chosen_scores": {"rating": 10.0},
                "rejected_scores": {"rating": 1.0},
                "prompt_id": "b1",
                "soft_label": sigmoid(9.0),
            },
        ),
    ),
    "pku_safe_rlhf/better": (
        {"train": 2, "test": 1},
        {"train": {"tie: chosen and rejected are identical": 1}},
        (
            "test",
            0,
            {
                "prompt": user("Is stealing okay?"),
                "chosen": assistant("No, it harms others."),
                "rejected": assistant("Sometimes."),
                "chosen_scores": {"better": 1.0, "safer": 1.0, "safe": 1.0},
                "rejected_scores": {"better": 0.0, "safer": 0.0, "safe": 0.0},
            },
        ),
    ),
    "pku_safe_rlhf/safer": (
        {"train": 2, "test": 1},
        {"train": {"tie: chosen and rejected are identical": 1}},
        None,
    ),
    "tldr_comparisons": (
        {"train": 2, "validation": 2},
        {
            "train": {
                "invalid: choice is not 0 or 1 between two summaries": 1,
                "invalid: a CNN/DM article comparison, not a TL;DR post": 1,
            }
        },
        (
            "validation",
            None,
            {
                "prompt": "SUBREDDIT: r/AskReddit\n\nTITLE: Title t3_4\n\nPOST: Roommate never cleans.\n\nTL;DR:",
                "chosen": " roommate never cleans, what do?",
                "rejected": " roommate messy",
                "post_id": "t3_4",
                "soft_label": sigmoid(2.0),
            },
        ),  # choice 1 at confidence 7: two steps past the scale's midpoint 5
    ),
    "helpsteer2": (
        {"train": 2, "validation": 1},
        {"train": {"tie: equal helpfulness": 1, "invalid: a response without a second response to the same prompt": 1}},
        (
            "validation",
            0,
            {
                "prompt": user("Name a colour."),
                "chosen": assistant("Blue."),
                "rejected": assistant("Colour."),
                "chosen_scores": {
                    "helpfulness": 4.0,
                    "correctness": 4.0,
                    "coherence": 4.0,
                    "complexity": 0.0,
                    "verbosity": 1.0,
                },
                "rejected_scores": {
                    "helpfulness": 0.0,
                    "correctness": 0.0,
                    "coherence": 2.0,
                    "complexity": 0.0,
                    "verbosity": 0.0,
                },
                "soft_label": sigmoid(4.0),
            },
        ),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_builder_on_fixture_files(name, tmp_path):
    rows, rejected, example = CASES[name]
    summary = prepare(name, str(manual_dir(name.split("/")[0], tmp_path)), str(tmp_path / "tfds"))
    assert {s: v["rows"] for s, v in summary["splits"].items()} == rows
    assert {s: v["rejected"] for s, v in summary["splits"].items() if v["rejected"]} == rejected
    if example is not None:
        split, index, expected = example
        _, read = read_split(SourceConfig(kind="tfds", name=name, path=str(tmp_path / "tfds")), split)
        found = read[index] if index is not None else next(r for r in read if r.get("post_id") == expected["post_id"])
        assert found == expected
    if name == "pku_safe_rlhf/safer":  # the 'safer' labels flip the second pair of the train split
        _, read = read_split(SourceConfig(kind="tfds", name=name, path=str(tmp_path / "tfds")), "train")
        assert {r["chosen"][0]["content"] for r in read} == {
            "Talk to your neighbour politely.",
            "I can't help you cheat.",
        }
    assert "tensorflow" not in sys.modules  # built and read back without TensorFlow


def test_prepare_command_prints_the_summary_and_names_missing_files(tmp_path, capsys):
    from jaxspo.cli import main

    assert (
        main(
            [
                "data",
                "prepare",
                "helpsteer2",
                "--manual-dir",
                str(manual_dir("helpsteer2", tmp_path)),
                "--data-dir",
                str(tmp_path / "tfds"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| train | 2 |" in out and "1 × tie: equal helpfulness" in out
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "data",
                "prepare",
                "hh_rlhf",
                "--manual-dir",
                str(tmp_path / "empty"),
                "--data-dir",
                str(tmp_path / "tfds2"),
            ]
        )
        == 1
    )
    assert "is not a folder with files; Download the subsets" in capsys.readouterr().err
    (tmp_path / "empty" / "README.txt").write_text("not a data file")
    assert (
        main(
            [
                "data",
                "prepare",
                "hh_rlhf",
                "--manual-dir",
                str(tmp_path / "empty"),
                "--data-dir",
                str(tmp_path / "tfds2"),
            ]
        )
        == 1
    )
    assert "none of the expected files of hh_rlhf" in capsys.readouterr().err
    assert main(["data", "prepare", "nope", "--manual-dir", str(tmp_path)]) == 2  # a usage error
    assert "jaxspo: usage error: jaxspo data prepare nope: unknown dataset 'nope'" in capsys.readouterr().err
