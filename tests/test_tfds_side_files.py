"""Files that sit beside a dataset's preference pairs (red-team attempts, ratings, …) and pair files lacking
columns are refused with one error line naming what they are."""

import pytest

from tests.test_tfds_rules import RULES, preferred, put, rated


SIDE_FILES = [
    (
        "hh_rlhf",
        "red-team-attempts/red_team_attempts.jsonl.gz",
        [{"transcript": "\n\nHuman: x\n\nAssistant: y", "rating": 0}],
        "HH-RLHF's red-team attempts",
    ),
    (
        "hh_rlhf",
        "helpful-base/train.jsonl",
        [{"transcript": "\n\nHuman: x\n\nAssistant: y", "rating": 0}],
        "HH-RLHF's red-team attempts",
    ),
    ("helpsteer2/preference", "train.jsonl.gz", [rated("P", "R.", 3)], "HelpSteer2's per-response ratings file"),
    ("helpsteer2", "train.jsonl.gz", [preferred(1)], "HelpSteer2's pairwise preference file"),
    (
        "tldr_comparisons",
        "axis_evals/tldraxis1.json",
        [{"info": {"post": "p"}, "summary": {"text": "s", "axes": {"overall": 3}}, "split": "test"}],
        "axis evaluations",
    ),
    (
        "tldr_comparisons",
        "comparisons/batch3.json",
        [{"info": {"post": "p"}, "summary": {"text": "s", "axes": {"overall": 3}}, "split": "test"}],
        "axis evaluations",
    ),
    (
        "ultrafeedback_binarized",
        "data/train_sft-00000-of-00001.parquet",
        RULES["ultrafeedback_binarized"][1][:1],
        "SFT split",
    ),
    (
        "ultrafeedback_binarized",
        "data/train_prefs-00000-of-00001.parquet",
        [{"instruction": "Q", "completions": []}],
        "original openbmb/UltraFeedback",
    ),
]


@pytest.mark.parametrize("name,relative,rows,what", SIDE_FILES)
def test_side_files_are_refused_with_one_error_line(name, relative, rows, what, tmp_path, capsys):
    from jaxspo.cli import main

    put(tmp_path / "manual", relative, rows)
    assert (
        main(["data", "prepare", name, "--manual-dir", str(tmp_path / "manual"), "--data-dir", str(tmp_path / "tfds")])
        == 1
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("jaxspo:")]
    assert len(lines) == 1 and lines[0].startswith(f"jaxspo: data error: {tmp_path / 'manual' / relative}: this is ")
    assert what in lines[0] and "Traceback" not in err


def test_a_file_with_unknown_columns_is_one_error_line_naming_the_missing_ones(tmp_path, capsys):
    from jaxspo.cli import main

    put(tmp_path / "manual", "train.jsonl", [{"question": "Q", "answer": "A"}])
    assert (
        main(
            [
                "data",
                "prepare",
                "pku_safe_rlhf/safer",
                "--manual-dir",
                str(tmp_path / "manual"),
                "--data-dir",
                str(tmp_path / "tfds"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert (
        "lacks the column(s) better_response_id, prompt, response_0, response_1, safer_response_id of pku_safe_rlhf"
        in err
    )
    assert "Traceback" not in err
