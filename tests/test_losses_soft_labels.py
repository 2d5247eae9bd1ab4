"""The ``soft_label`` field: checked per row, pairs with p̂ < ½ swapped, missing only where no loss needs it."""

import math

import numpy as np
import pytest

from jaxspo.config import ConfigError, load_config
from jaxspo.data.soft_labels import orient_pairs
from jaxspo.losses import soft_label_losses


def row(label, **extra):
    base = {
        "prompt": "reverse 1 2 :",
        "chosen": "2 1",
        "rejected": "1 2",
        "chosen_scores": {"c": 1.0},
        "rejected_scores": {"c": 0.0},
    }
    return base | ({} if label is None else {"soft_label": label}) | extra


def test_pairs_below_one_half_are_swapped_with_their_paired_fields():
    rows = [row(0.8), row(0.2), row(0.5), row(0)]
    out = orient_pairs(rows)
    assert [r["soft_label"] for r in out] == pytest.approx([0.8, 0.8, 0.5, 1.0])
    assert out[0]["chosen"] == "2 1" and out[1]["chosen"] == "1 2" and out[1]["rejected"] == "2 1"
    assert out[1]["chosen_scores"] == {"c": 0.0} and out[1]["rejected_scores"] == {"c": 1.0}
    assert out[2]["chosen"] == "2 1"  # exactly ½ is left as given
    assert rows[1]["soft_label"] == 0.2 and rows[1]["chosen"] == "2 1"  # inputs are not mutated


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan, math.inf, "0.7", True])
def test_bad_soft_labels_name_the_row(bad):
    with pytest.raises(ValueError, match="row 1: field 'soft_label'"):
        orient_pairs([row(0.9), row(bad)])


def test_missing_soft_label_is_an_error_only_when_a_loss_needs_it():
    rows = [row(0.9), row(None), row(0.6, soft_label=None)]
    assert "soft_label" not in orient_pairs(rows)[1]
    with pytest.raises(ValueError, match=r"row 1: field 'soft_label' is missing; the loss\(es\) gdpo need"):
        orient_pairs(rows, required_by=soft_label_losses({"dpo": 1.0, "gdpo": 0.5}))


def test_which_losses_need_soft_labels():
    assert soft_label_losses({"dpo": 1.0, "sft": 0.1}) == []
    assert soft_label_losses({"gdpo": 1.0, "gipo": 1.0, "gropo": 1.0, "cdpo_soft": 1.0, "cipo": 1.0, "dpo": 1.0}) == [
        "gdpo",
        "gipo",
        "gropo",
        "cdpo_soft",
        "cipo",
    ]


def test_synthetic_rows_orient_to_p_at_least_one_half():
    from jaxspo.data.synthetic import SyntheticTaskConfig, build_synthetic_task

    rows = build_synthetic_task(SyntheticTaskConfig(num_sft=8, num_train=256, num_eval=8)).splits["train"]
    labels = np.array([r["soft_label"] for r in orient_pairs(rows, required_by=["gdpo"])])
    assert labels.min() >= 0.5 and (np.array([r["soft_label"] for r in rows]) < 0.5).any()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.terms={robust: 1.0}", "loss.label_smoothing=0.5"], "flip rate"),
        (["loss.terms={exo_pair: 1.0}"], "exo_pair"),
        (["loss.label_smoothing=1.0"], r"\[0, 1\)"),
        (["loss.terms={ropo: 1.0}", "loss.params.ropo.alpha=0"], r"loss.params.ropo.alpha must be > 0, got 0"),
        (["loss.terms={gropo: 1.0}", "loss.params.gropo.alpha=-2"], r"loss.params.gropo.alpha must be > 0, got -2"),
        (["loss.terms={gdop: 1.0}"], "did you mean 'gdpo'"),
    ],
)
def test_loss_hyper_parameters_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
