"""Ranked lists of responses (for ``soft_spo_best_of_n`` and ``soft_spo_ranked``): row format and encoding.

Row format (JSON-able dicts)::

    {"prompt": str, "responses": [str, ...], "ranking": [int, ...]}   # indices into responses, best first
    {"prompt": str, "responses": [str, ...], "best": int}             # only the best one (best-of-n)

``responses`` holds ≥ 2 distinct non-blank strings; ``ranking`` is a permutation of
``range(len(responses))``; a row with both uses ``ranking``. Best-of-n reads ``ranking[0]`` or ``best``;
the ranked (Plackett–Luce) loss needs ``ranking``.

Encoding (:func:`encode_list_rows`) reorders each row best first and pads lists to the largest
``n`` of the rows: ``list_tokens``, ``list_valid``, ``list_loss_mask`` ``[N, n, T]`` (each sequence laid
out as in :mod:`jaxspo.data.encode`) and ``list_mask`` ``[N, n]`` (True where a response exists).
A missing slot repeats the row's best response (so the forward stays finite) with ``list_mask`` False.
``list_scores`` ``[N, n]`` float32 holds each response's score c (for soft winners softmax(c/τ) in the loss), in
the same order, 0 in missing slots, NaN on a row without ``response_scores``.
Bad rows raise ValueError naming the row and field.

``response_scores`` is one number per response, or (the built-in task's rows) one mapping of
per-dimension scores per response, whose score is the labelled reward r = Σ label_weights·scores.
:func:`rank_by_scores` derives the ``ranking`` of such rows from their scores, like the task's pair labels.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxspo.data.chat import prompt_ids, token_ids
from jaxspo.data.encode import check_encode_inputs, pad_sequences, response_sequence, special_token_ids
from jaxspo.data.formats import field as _field, text as _text
from jaxspo.data.synthetic import SyntheticTaskConfig, labelled_reward

LIST_FIELDS = ("list_tokens", "list_valid", "list_loss_mask", "list_mask", "list_scores")


def response_rewards(
    row: Mapping[str, Any], index: int, label_weights: Mapping[str, float] | None
) -> list[float] | None:
    """The row's score per response from ``response_scores`` (None when absent): the numbers as given, or the labelled
    reward of each mapping of per-dimension scores under ``label_weights``. ValueError names the row and field."""
    scores, n = row.get("response_scores"), len(row["responses"])
    if scores is None:
        return None
    where = f"row {index}: field 'response_scores'"
    if not isinstance(scores, (list, tuple)) or len(scores) != n:
        raise ValueError(f"{where} must be a list of one score per response ({n}), got {scores!r}")
    if label_weights is not None and all(isinstance(c, Mapping) for c in scores):
        return [labelled_reward(c, label_weights) for c in scores]
    if not all(isinstance(c, numbers.Real) and not isinstance(c, bool) and np.isfinite(c) for c in scores):
        raise ValueError(f"{where} must hold finite numbers (one per response), got {list(scores)}")
    return [float(c) for c in scores]


def _index(value: Any, n: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) < n:
        raise ValueError(f"{where} must be an index into 'responses' (0..{n - 1}), got {value!r}")
    return int(value)


def _order(row: Mapping[str, Any], index: int, n: int, need_ranking: bool) -> list[int]:
    """Response indices best first: the ranking, or the best one followed by the others in row order."""
    ranking = row.get("ranking")
    if ranking is not None:
        if not isinstance(ranking, (list, tuple)):
            raise ValueError(f"row {index}: field 'ranking' must be a list of indices, got {type(ranking).__name__}")
        order = [_index(v, n, f"row {index}: field 'ranking'") for v in ranking]
        if sorted(order) != list(range(n)):
            raise ValueError(
                f"row {index}: field 'ranking' must be a permutation of 0..{n - 1} (one entry per "
                f"response), got {list(ranking)}"
            )
        return order
    if need_ranking:
        raise ValueError(
            f"row {index}: field 'ranking' is missing; the ranked loss needs every response ranked (a "
            "row with only 'best' serves best-of-n)"
        )
    if row.get("best") is None:
        raise ValueError(f"row {index}: needs field 'ranking' or 'best'")
    best = _index(row["best"], n, f"row {index}: field 'best'")
    return [best] + [j for j in range(n) if j != best]


def encode_list_rows(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    need_ranking: bool,
    label_weights: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """List rows → ``list_tokens/list_valid/list_loss_mask [N, n, T]``, ``list_mask [N, n]`` and ``list_scores [N, n]``,
    best first (``label_weights``: the labelled reward of per-dimension ``response_scores``; None = numbers only)."""
    check_encode_inputs(rows, max_length, "max_length")
    _, eos, pad = special_token_ids(tokenizer)
    ordered: list[list[str]] = []
    scores: list[list[float] | None] = []
    for i, row in enumerate(rows):
        responses = _field(row, i, "responses")
        if not isinstance(responses, (list, tuple)) or len(responses) < 2:
            raise ValueError(f"row {i}: field 'responses' must be a list of at least 2 responses, got {responses!r}")
        texts = [_text(r, f"row {i}: field 'responses[{j}]'") for j, r in enumerate(responses)]
        if len(set(texts)) < len(texts):
            raise ValueError(f"row {i}: field 'responses' has duplicate responses")
        order = _order(row, i, len(texts), need_ranking)
        rewards = response_rewards(row, i, label_weights)
        ordered.append([texts[j] for j in order])
        scores.append(None if rewards is None else [rewards[j] for j in order])
    contexts = prompt_ids(rows, tokenizer)  # [bos] + ids for text prompts, the chat template's for messages
    width = max(map(len, ordered))
    sequences = []
    for i, (context, texts) in enumerate(zip(contexts, ordered)):
        ids = token_ids(tokenizer, texts)
        row_sequences = [
            response_sequence(context, r, eos, max_length, i, f"responses[{j}]") for j, r in enumerate(ids)
        ]
        sequences += row_sequences + [row_sequences[0]] * (width - len(row_sequences))
    tokens, loss_mask, valid = (
        a.reshape(len(rows), width, max_length) for a in pad_sequences(sequences, max_length, pad)
    )
    mask = np.array([[j < len(texts) for j in range(width)] for texts in ordered], dtype=bool)
    list_scores = np.array(
        [[np.nan] * width if c is None else c + [0.0] * (width - len(c)) for c in scores], dtype=np.float32
    ).reshape(len(rows), width)
    return {
        "list_tokens": tokens,
        "list_valid": valid,
        "list_loss_mask": loss_mask,
        "list_mask": mask,
        "list_scores": list_scores,
    }


def rank_by_scores(rows: Sequence[Mapping[str, Any]], task: SyntheticTaskConfig, seed: int) -> list[dict[str, Any]]:
    """Copies of rows with ``ranking`` derived from ``response_scores`` (rows that have one are kept).

    Numeric scores (external data, one number per response) rank by score, best first (ties keep list order).

    The labelled reward r = Σ label_weights·scores; ``hard_label: sampled`` draws a Plackett–Luce ranking
    with weights exp(r/label_temperature) (the list analogue of the task's Bradley–Terry pair labels),
    ``argmax`` sorts by r with ties in random order. Deterministic in ``seed``.
    """
    rng = np.random.default_rng([seed, 0x5350])
    out = []
    for row in rows:
        if (
            not isinstance(row, Mapping)
            or row.get("ranking") is not None
            or not isinstance(row.get("response_scores"), list)
        ):
            out.append(row)
            continue
        scores = row["response_scores"]
        if all(
            isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores
        ):  # external data: one score each
            out.append(dict(row) | {"ranking": [int(j) for j in np.argsort(-np.asarray(scores, float), kind="stable")]})
            continue
        rewards = np.array([labelled_reward(s, task.label_weights) for s in scores])
        noise = rng.gumbel(size=len(rewards))  # Gumbel-max: argsort of r/τ + Gumbel is a Plackett–Luce draw
        if task.hard_label == "sampled":
            order = np.argsort(-(rewards / task.label_temperature + noise), kind="stable")
        else:
            order = np.lexsort((noise, -rewards))  # by reward, ties by the random key
        out.append(dict(row) | {"ranking": [int(j) for j in order]})
    return out
