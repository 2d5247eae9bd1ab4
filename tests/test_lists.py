"""Ranked-list rows (soft_spo best-of-n / ranked): encoding best first, rankings from scores, bad rows."""

from __future__ import annotations

import numpy as np
import pytest

from jaxspo.data.lists import encode_list_rows, rank_by_scores
from jaxspo.data.screen import encode_screened
from jaxspo.data.synthetic import SyntheticTaskConfig, build_synthetic_task, labelled_reward
from jaxspo.data.tokenizer import build_task_tokenizer
from jaxspo.errors import DataError

TOKENIZER = build_task_tokenizer()
LENGTH = 16


def encode(rows, need_ranking=True):
    return encode_list_rows(rows, TOKENIZER, LENGTH, need_ranking)


def test_rows_are_encoded_best_first_and_padded_to_the_longest_list():
    rows = [
        {"prompt": "reverse 1 2 3 :", "responses": ["3 2 1", "3 um", "1 2 3"], "ranking": [2, 0, 1]},
        {"prompt": "reverse 4 5 :", "responses": ["5 4", "4"], "ranking": [1, 0]},
    ]
    arrays = encode(rows)
    assert arrays["list_tokens"].shape == (2, 3, LENGTH) and arrays["list_mask"].tolist() == [
        [True, True, True],
        [True, True, False],
    ]
    decoded = lambda i, j: TOKENIZER.decode(arrays["list_tokens"][i, j][arrays["list_loss_mask"][i, j]])  # noqa: E731
    assert [decoded(0, j) for j in range(3)] == ["1 2 3 <eos>", "3 2 1 <eos>", "3 um <eos>"]
    assert decoded(1, 0) == "4 <eos>" and decoded(1, 2) == decoded(1, 0)  # a missing slot repeats the best
    best = encode(
        [{"prompt": "reverse 1 2 3 :", "responses": ["3 2 1", "3 um", "1 2 3"], "best": 1}], need_ranking=False
    )
    assert TOKENIZER.decode(best["list_tokens"][0, 0][best["list_loss_mask"][0, 0]]) == "3 um <eos>"


def test_response_scores_are_encoded_best_first_and_nan_on_a_row_without_scores():
    rows = [
        {"prompt": "reverse 1 2 3 :", "responses": ["3 2 1", "3 um", "1 2 3"], "ranking": [2, 0, 1]},
        {"prompt": "reverse 4 5 :", "responses": ["5 4", "4"], "best": 1, "response_scores": [0.5, -1.0]},
        {"prompt": "reverse 6 :", "responses": ["6", "6 6", "um"], "ranking": [1, 2, 0], "response_scores": [3, 2, 1]},
    ]
    scores = encode(rows, need_ranking=False)["list_scores"]
    assert scores.dtype == np.float32 and np.isnan(scores[0]).all()
    np.testing.assert_array_equal(scores[1:], [[-1.0, 0.5, 0.0], [2.0, 1.0, 3.0]])  # a missing slot scores 0


def test_rankings_from_the_built_in_task_scores():
    task = build_synthetic_task(SyntheticTaskConfig(num_sft=0, num_train=64, num_eval=0, hard_label="argmax"))
    rows = task.splits["train"]
    ranked = rank_by_scores(rows, task.config, seed=0)
    for row in ranked:
        rewards = [labelled_reward(s, task.config.label_weights) for s in row["response_scores"]]
        assert sorted(row["ranking"]) == list(range(len(rewards)))
        assert all(rewards[a] >= rewards[b] for a, b in zip(row["ranking"], row["ranking"][1:]))
    sampled = SyntheticTaskConfig(num_sft=0, num_train=64, num_eval=0, label_temperature=0.1)
    first = rank_by_scores(rows, sampled, seed=3)
    assert first == rank_by_scores(rows, sampled, seed=3) and first != rank_by_scores(rows, sampled, seed=4)
    assert "ranking" not in rows[0]  # the task's rows are not mutated
    arrays = encode_list_rows(ranked, task.tokenizer, 32, True, task.config.label_weights)
    assert arrays["list_tokens"].shape == (64, 4, 32)
    for row, scores in zip(ranked, arrays["list_scores"]):  # each response's labelled reward, best first
        rewards = [labelled_reward(s, task.config.label_weights) for s in row["response_scores"]]
        np.testing.assert_allclose(scores, [rewards[j] for j in row["ranking"]], rtol=1e-6)


def test_numeric_scores_of_external_rows_rank_best_first():
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "response_scores": [0.5, 2.0, 0.5]}]
    assert rank_by_scores(rows, SyntheticTaskConfig(), seed=0)[0]["ranking"] == [1, 0, 2]


GOOD = {"prompt": "reverse 1 2 3 :", "responses": ["3 2 1", "3 um", "1 2 3"], "ranking": [0, 1, 2]}
BAD_ROWS = [
    ({"responses": ["3 2 1", "3"], "ranking": [0, 1]}, True, "missing field 'prompt'"),
    (GOOD | {"responses": "3 2 1"}, True, "field 'responses' must be a list of at least 2 responses"),
    (GOOD | {"responses": ["3 2 1"], "ranking": [0]}, True, "field 'responses' must be a list of at least 2"),
    (GOOD | {"responses": ["3 2 1", " ", "1"]}, True, "field 'responses[1]' is empty"),
    (GOOD | {"responses": ["3 2 1", 7, "1"]}, True, "field 'responses[1]' must be a str"),
    (GOOD | {"responses": ["3 2 1", "3 2 1", "1"]}, True, "field 'responses' has duplicate responses"),
    (GOOD | {"ranking": [0, 0, 1]}, True, "field 'ranking' must be a permutation of 0..2"),
    (GOOD | {"ranking": [0, 1]}, True, "field 'ranking' must be a permutation of 0..2"),
    (GOOD | {"ranking": [0, 1, 5]}, True, "field 'ranking' must be an index into 'responses' (0..2), got 5"),
    (GOOD | {"ranking": "0 1 2"}, True, "field 'ranking' must be a list of indices"),
    (
        GOOD | {"response_scores": [1.0, 2.0]},
        True,
        "field 'response_scores' must be a list of one score per response (3)",
    ),
    (GOOD | {"response_scores": [1.0, "2", 0.0]}, True, "field 'response_scores' must hold finite numbers"),
    (GOOD | {"response_scores": [1.0, float("nan"), 0.0]}, True, "field 'response_scores' must hold finite numbers"),
    (
        {k: v for k, v in GOOD.items() if k != "ranking"} | {"best": 0},
        True,
        "field 'ranking' is missing; the ranked loss needs",
    ),
    ({k: v for k, v in GOOD.items() if k != "ranking"}, False, "needs field 'ranking' or 'best'"),
    ({k: v for k, v in GOOD.items() if k != "ranking"} | {"best": True}, False, "field 'best' must be an index"),
    (
        {k: v for k, v in GOOD.items() if k != "ranking"} | {"best": 3},
        False,
        "field 'best' must be an index into 'responses' (0..2), got 3",
    ),
]


@pytest.mark.parametrize(("bad", "need_ranking", "message"), BAD_ROWS)
def test_bad_list_rows_name_source_row_and_field(bad, need_ranking, message):
    rows = [GOOD, GOOD, bad, GOOD]
    with pytest.raises(DataError) as err:
        encode_screened(rows, lambda r: encode(r, need_ranking), "lists:train", "error")
    assert str(err.value).startswith("lists:train, row 2: ") and message in str(err.value), str(err.value)
    arrays, report = encode_screened(rows, lambda r: encode(r, need_ranking), "lists:train", "skip")
    assert len(arrays["list_tokens"]) == 3 and report.kept == 3 and sum(report.skipped.values()) == 1
