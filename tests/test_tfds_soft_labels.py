"""The builders' soft labels p̂ = σ(margin / τ) from each dataset's graded preference, on fixtures written per
mapping: values at two temperatures, the midpoint and contrary cases dropped by the existing rules, and a
re-prepare at another temperature refused."""

import math

import pytest

from jaxspo.data.prepare import prepare
from jaxspo.data.sources import SourceConfig, read_split
from tests.test_tfds_rules import conv, preferred, put, rated


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def labels(name, manual, tmp_path, split="train", temperature=1.0):
    """(chosen text, soft label) of each row of ``split`` after preparing at ``temperature``, and the summary."""
    data_dir = tmp_path / f"tfds_{temperature}"
    summary = prepare(name, str(manual), str(data_dir), soft_label_temperature=temperature)
    _, rows = read_split(SourceConfig(kind="tfds", name=name, path=str(data_dir)), split)
    chosen = [r["chosen"] if isinstance(r["chosen"], str) else r["chosen"][-1]["content"] for r in rows]
    return dict(zip(chosen, (r["soft_label"] for r in rows))), summary


def ultrafeedback(chosen, score_chosen, score_rejected):
    return {
        "chosen": conv("Q?", chosen),
        "rejected": conv("Q?", "no"),
        "score_chosen": score_chosen,
        "score_rejected": score_rejected,
        "prompt_id": "",
    }


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_ultrafeedback_soft_label_is_the_score_difference_over_tau(temperature, tmp_path):
    put(
        tmp_path / "m",
        "data/train_prefs-00000-of-00001.parquet",
        [ultrafeedback("a", 8.5, 4.0), ultrafeedback("b", 5.0, 4.75), ultrafeedback("c", 6.0, 6.0)],
    )
    found, summary = labels("ultrafeedback_binarized", tmp_path / "m", tmp_path, "train_prefs", temperature)
    assert found == {
        "a": pytest.approx(sigmoid(4.5 / temperature), rel=1e-6),
        "b": pytest.approx(sigmoid(0.25 / temperature), rel=1e-6),
    }
    assert summary["splits"]["train_prefs"]["rejected"] == {
        "tie: score_chosen equals score_rejected": 1
    }  # p̂ = ½: dropped as before
    assert summary["soft_label"] == {"formula": "σ((score_chosen − score_rejected) / τ)", "temperature": temperature}


def comparison(a, b, choice, confidence="absent"):
    row = {
        "info": {"id": a, "post": "A post.", "title": "T", "subreddit": "s"},
        "summaries": [{"text": a}, {"text": b}],
        "choice": choice,
        "split": "train",
    }
    return row if confidence == "absent" else row | {"extra": {"confidence": confidence}}


def test_tldr_soft_label_is_the_confidence_distance_from_the_midpoint_towards_the_choice(tmp_path):
    rows = [
        comparison(" first sure", " x", 0, 1),
        comparison(" x", " second likely", 1, 7),
        comparison(" first maybe", " x", 0, 4),
        comparison(" no extra", " x", 0),
        comparison(" null extra", " x", 1, None),
        comparison(" torn", " x", 0, 5),
        comparison(" leans away", " x", 0, 8),
        comparison(" off scale", " x", 1, 10),
        comparison(" held out", " x", 0, 3) | {"split": "valid2"},
    ]
    put(tmp_path / "m", "comparisons/batch3.json", rows)
    found, summary = labels("tldr_comparisons", tmp_path / "m", tmp_path)
    expected = {
        " first sure": sigmoid(4),
        " second likely": sigmoid(2),
        " first maybe": sigmoid(1),
        " no extra": 1.0,
        " x": 1.0,
    }
    assert found == {
        k: pytest.approx(v, rel=1e-6) for k, v in expected.items()
    }  # " null extra" chose summaries[1] = " x"
    assert summary["splits"]["train"]["rejected"] == {
        "tie: extra.confidence is 5 (no preference)": 1,
        "contradictory: extra.confidence leans to the summary not chosen": 1,
        "invalid: extra.confidence is not a number from 1 to 9": 1,
    }


def test_helpsteer2_soft_labels_from_the_helpfulness_difference_and_the_preference_strength(tmp_path):
    put(
        tmp_path / "r",
        "train.jsonl",
        [rated("P1", "Good.", 4), rated("P1", "Meh.", 1), rated("P2", "Fine.", 2), rated("P2", "Worse.", 3)],
    )
    found, _ = labels("helpsteer2", tmp_path / "r", tmp_path, temperature=2.0)
    assert found == {
        "Good.": pytest.approx(sigmoid(3 / 2), rel=1e-6),
        "Worse.": pytest.approx(sigmoid(1 / 2), rel=1e-6),
    }
    put(
        tmp_path / "p",
        "preference/preference.jsonl",
        [preferred(-3, r1="A."), preferred(1, r2="B."), preferred(0, r1="C."), preferred(2, split="validation")],
    )
    found, summary = labels("helpsteer2/preference", tmp_path / "p", tmp_path)
    assert found == {"A.": pytest.approx(sigmoid(3), rel=1e-6), "B.": pytest.approx(sigmoid(1), rel=1e-6)}
    assert summary["splits"]["train"]["rejected"] == {"tie: preference_strength is 0": 1}


def test_preparing_again_at_another_temperature_is_refused_in_one_line(tmp_path, capsys):
    from jaxspo.cli import main

    put(tmp_path / "m", "data/train_prefs-00000-of-00001.parquet", [ultrafeedback("a", 8.5, 4.0)])
    argv = [
        "data",
        "prepare",
        "ultrafeedback_binarized",
        "--manual-dir",
        str(tmp_path / "m"),
        "--data-dir",
        str(tmp_path / "tfds"),
    ]
    assert main(argv + ["--soft-label-temperature", "2"]) == 0
    assert "soft_label = σ((score_chosen − score_rejected) / τ), τ = 2" in capsys.readouterr().out
    assert main(argv + ["--soft-label-temperature", "2"]) == 0  # the same mapping again: TFDS reuses the data
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("jaxspo: usage error: jaxspo data prepare ultrafeedback_binarized: ")
        and "not τ = 1.0; give another --data-dir" in err
    )
    assert len(err.splitlines()) == 1
    assert main(argv + ["--soft-label-temperature", "0"]) == 2
    assert "argument --soft-label-temperature: expected a number > 0, got '0'" in capsys.readouterr().err


def test_builders_without_graded_preferences_emit_no_soft_label():
    from jaxspo.data.tfds_builders import BUILDERS

    assert {name for name, builder in BUILDERS.items() if builder.SOFT_LABEL} == {
        "ultrafeedback_binarized",
        "tldr_comparisons",
        "helpsteer2",
    }
