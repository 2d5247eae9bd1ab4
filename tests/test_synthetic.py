"""The built-in synthetic preference task: determinism, splits, gold rewards, labels, config checks, JSONL."""

import dataclasses
import math

import numpy as np
import pytest

from jaxspo.data import read_jsonl, write_jsonl
from jaxspo.data.synthetic import (
    GOLD_DIMENSIONS,
    SyntheticTaskConfig,
    build_synthetic_task,
    gold_rewards,
    labelled_reward,
)

SMALL = SyntheticTaskConfig(num_sft=300, num_train=600, num_eval=100)


@pytest.fixture(scope="module")
def task():
    return build_synthetic_task(SMALL)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_same_seed_same_rows_and_other_seed_other_rows(task):
    again = build_synthetic_task(dataclasses.replace(SMALL))
    other = build_synthetic_task(dataclasses.replace(SMALL, seed=1))
    for split in ("sft", "train", "eval"):
        assert again.splits[split] == task.splits[split]
        assert other.splits[split] != task.splits[split]


def test_splits_have_configured_sizes_and_own_random_streams(task):
    assert {name: len(rows) for name, rows in task.splits.items()} == {"sft": 300, "train": 600, "eval": 100}
    resized = build_synthetic_task(dataclasses.replace(SMALL, num_sft=7))
    assert resized.splits["train"] == task.splits["train"]
    assert resized.splits["eval"] == task.splits["eval"]


def test_eval_prompts_are_distinct_and_unseen_in_sft_and_train(task):
    eval_prompts = [row["prompt"] for row in task.splits["eval"]]
    seen = {row["prompt"] for split in ("sft", "train") for row in task.splits[split]}
    assert len(set(eval_prompts)) == len(eval_prompts)
    assert not seen & set(eval_prompts)


def test_prompt_shape_and_digit_count_range(task):
    for row in task.splits["sft"] + task.splits["train"]:
        words = row["prompt"].split()
        assert words[0] == "reverse" and words[-1] == ":"
        assert SMALL.min_digits <= len(words) - 2 <= SMALL.max_digits


@pytest.mark.parametrize(
    ("response", "correctness", "brevity"),
    [
        ("1 4 1 3", 1.0, 1 - 4 / 12),  # perfect
        ("1 4 2 3", 0.75, 1 - 4 / 12),  # one wrong digit
        ("um 1 4 well 1 so 3", 1.0, 1 - 7 / 12),  # fillers cost brevity only
        ("1 4", 0.5, 1 - 2 / 12),  # truncated: shorter but half wrong
        ("1 4 1 3 3 3 3 3", 0.5, 1 - 8 / 12),  # extra digits dilute correctness
        ("3 1 4 1", 0.0, 1 - 4 / 12),  # the prompt order instead of reversed
        ("hello <unk> 12", 0.0, 1 - 3 / 12),  # garbage words are not digits
        ("", 0.0, 1.0),
        (" ".join(["ok"] * 20), 0.0, 0.0),  # brevity is clipped at 0
    ],
)
def test_gold_rewards_on_hand_written_examples(response, correctness, brevity):
    scores = gold_rewards("reverse 3 1 4 1 :", response)
    assert set(scores) == set(GOLD_DIMENSIONS)
    assert scores["correctness"] == pytest.approx(correctness)
    assert scores["brevity"] == pytest.approx(brevity)


def test_gold_brevity_scale_follows_max_digits():
    assert gold_rewards("reverse 1 2 :", "2 1", max_digits=2)["brevity"] == pytest.approx(0.5)
    small = build_synthetic_task(dataclasses.replace(SMALL, max_digits=4, num_sft=1, num_train=1, num_eval=1))
    assert small.gold_rewards("reverse 1 2 :", "2 1")["brevity"] == pytest.approx(0.75)


@pytest.mark.parametrize("prompt", ["", "reverse :", "reverse 1 2", "revert 1 2 :", "reverse 1 x :", "reverse 12 :"])
def test_gold_rewards_reject_malformed_prompts(prompt):
    with pytest.raises(ValueError, match="not of the form"):
        gold_rewards(prompt, "1")


def test_rows_carry_distinct_scored_responses_including_the_pair(task):
    for row in task.splits["train"] + task.splits["eval"]:
        responses = row["responses"]
        assert len(responses) == len(set(responses)) == SMALL.responses_per_prompt
        assert row["chosen"] != row["rejected"]
        assert row["chosen"] in responses and row["rejected"] in responses
        assert row["response_scores"] == [task.gold_rewards(row["prompt"], r) for r in responses]
        assert row["chosen_scores"] == task.gold_rewards(row["prompt"], row["chosen"])
        assert row["rejected_scores"] == task.gold_rewards(row["prompt"], row["rejected"])


def test_correctness_and_brevity_conflict_in_generated_data(task):
    def conflicts(scores):
        return any(
            (a["correctness"] - b["correctness"]) * (a["brevity"] - b["brevity"]) < 0
            for i, a in enumerate(scores)
            for b in scores[i + 1 :]
        )

    assert sum(conflicts(row["response_scores"]) for row in task.splits["train"]) > 0.2 * len(task.splits["train"])


@pytest.mark.parametrize(
    "overrides",
    [{}, {"label_weights": {"correctness": 1.0, "brevity": 0.5}, "label_temperature": 0.3}],
)
def test_soft_label_is_bradley_terry_probability_of_chosen(overrides):
    cfg = dataclasses.replace(SMALL, num_sft=0, num_train=300, **overrides)
    for row in build_synthetic_task(cfg).splits["train"]:
        margin = labelled_reward(row["chosen_scores"], cfg.label_weights) - labelled_reward(
            row["rejected_scores"], cfg.label_weights
        )
        assert row["soft_label"] == pytest.approx(_sigmoid(margin / cfg.label_temperature), abs=1e-12)
        assert (row["soft_label"] > 0.5) == (margin > 0)


def test_sampled_hard_labels_follow_bradley_terry_frequencies():
    rows = build_synthetic_task(dataclasses.replace(SMALL, num_sft=0, num_train=4000)).splits["train"]
    p_better = np.array([max(r["soft_label"], 1 - r["soft_label"]) for r in rows if r["soft_label"] != 0.5])
    better_won = np.array([r["soft_label"] > 0.5 for r in rows if r["soft_label"] != 0.5])
    assert 0 < better_won.mean() < 1  # the annotator is noisy, not an oracle
    tolerance = 4 * math.sqrt(np.sum(p_better * (1 - p_better))) / len(p_better)
    assert abs(better_won.mean() - p_better.mean()) < tolerance


def test_argmax_hard_labels_always_pick_the_higher_reward():
    cfg = dataclasses.replace(SMALL, num_sft=0, num_train=600, hard_label="argmax")
    rows = build_synthetic_task(cfg).splits["train"]
    chosen = np.array([r["chosen_scores"]["correctness"] for r in rows])
    rejected = np.array([r["rejected_scores"]["correctness"] for r in rows])
    assert np.all(chosen >= rejected)
    assert np.any(chosen == rejected) and np.any(chosen > rejected)
    assert min(r["soft_label"] for r in rows) >= 0.5


def test_teacher_sft_completions_are_mediocre(task):
    scores = [task.gold_rewards(r["prompt"], r["completion"]) for r in task.splits["sft"]]
    mean_correctness = np.mean([s["correctness"] for s in scores])
    assert 0.2 < mean_correctness < 0.9
    assert all(r["completion"].strip() for r in task.splits["sft"])


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"min_digits": 0}, "min_digits"),
        ({"max_digits": 2}, "max_digits"),
        ({"max_error_rate": 1.5}, "max_error_rate"),
        ({"truncate_prob": "0.2"}, "truncate_prob"),
        ({"max_filler": 1.0}, "max_filler"),
        ({"responses_per_prompt": 1}, "responses_per_prompt"),
        ({"num_train": -3}, "num_train"),
        ({"num_eval": 600, "min_digits": 3, "max_digits": 3}, "num_eval"),
        ({"label_weights": {"helpfulness": 1.0}}, "label_weights"),
        ({"label_weights": {"correctness": 0.0}}, "label_weights"),
        ({"label_weights": {"correctness": float("nan")}}, "label_weights"),
        ({"label_temperature": 0.0}, "label_temperature"),
        ({"hard_label": "soft"}, "hard_label"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"SyntheticTaskConfig.{field}"):
        build_synthetic_task(dataclasses.replace(SMALL, **overrides))


def test_too_few_possible_responses_is_a_clear_error():
    cfg = dataclasses.replace(SMALL, max_error_rate=0.0, truncate_prob=0.0, max_filler=0)
    with pytest.raises(ValueError, match="responses_per_prompt"):
        build_synthetic_task(cfg)


def test_jsonl_round_trip_and_bad_line_error(task, tmp_path):
    path = tmp_path / "sub" / "train.jsonl"
    write_jsonl(task.splits["train"], path)
    assert read_jsonl(path) == task.splits["train"]
    path.write_text('{"prompt": "a"}\n\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.jsonl:3: invalid JSON"):
        read_jsonl(path)
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.jsonl:1: expected a JSON object"):
        read_jsonl(path)
    with pytest.raises(ValueError, match="row 1"):
        write_jsonl([{"a": 1.0}, {"a": float("nan")}], path)
