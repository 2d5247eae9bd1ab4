"""Scored dimensions → per-dimension preference pairs (for ``sequential``'s one-dimension-per-stage data).

Two row layouts hold several scored responses per prompt:

- grouped (the built-in task): ``{"prompt", "responses": [str, ...], "response_scores": [{dim: score}, ...]}``;
- one response per row (HelpSteer2: ``prompt``, ``response``, ``helpfulness``, ``correctness``,
  ``coherence``, ``complexity``, ``verbosity``): :func:`group_responses` turns it into the grouped layout.

:func:`dimension_pairs` then picks one dimension and pairs responses of the same prompt whose scores on it
differ (by at least ``min_gap``; equal scores are dropped), the higher-scored one as ``chosen``. Both are
pure functions of the rows; a bad row raises ValueError naming the row and the field.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Row = dict[str, Any]


def _score(scores: Any, dimension: str, where: str) -> float:
    if not isinstance(scores, Mapping):
        raise ValueError(f"{where} must be a mapping of dimension → score, got {type(scores).__name__}")
    if dimension not in scores:
        raise ValueError(f"{where} has no score for dimension {dimension!r}; it has {sorted(scores)}")
    value = scores[dimension]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{where}[{dimension!r}] must be a finite number, got {value!r}")
    return float(value)


def group_responses(
    rows: Sequence[Mapping[str, Any]],
    score_fields: Sequence[str],
    *,
    prompt_field: str = "prompt",
    response_field: str = "response",
) -> list[Row]:
    """One-response-per-row data → one grouped row per prompt (in order of first appearance).

    Each output row is ``{"prompt", "responses", "response_scores"}``, the scores being the row's
    ``score_fields``. Rows repeating a (prompt, response) are kept once (the first).
    """
    grouped: dict[str, Row] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index}: expected a dict, got {type(row).__name__}")
        for field in (prompt_field, response_field, *score_fields):
            if field not in row:
                raise ValueError(f"row {index}: missing field {field!r}")
        prompt, response = row[prompt_field], row[response_field]
        for field, value in ((prompt_field, prompt), (response_field, response)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"row {index}: field {field!r} must be a non-empty str")
        scores = {field: _score(row, field, f"row {index}") for field in score_fields}
        group = grouped.setdefault(prompt, {"prompt": prompt, "responses": [], "response_scores": []})
        if response not in group["responses"]:
            group["responses"].append(response)
            group["response_scores"].append(scores)
    return list(grouped.values())


def dimension_pairs(
    rows: Sequence[Mapping[str, Any]],
    dimension: str,
    *,
    min_gap: float = 0.0,
    pairs_per_prompt: int = 0,
    seed: int = 0,
) -> list[Row]:
    """Pairs of each grouped row's responses labelled by ``dimension`` alone.

    A pair (a, b) qualifies when |s_a − s_b| > 0 and ≥ ``min_gap``; the higher-scored response is
    ``chosen``. ``pairs_per_prompt`` > 0 keeps that many qualifying pairs per row, drawn without
    replacement by ``np.random.default_rng([seed, row index])`` (all if fewer); 0 keeps them all, in
    response order. Output rows: ``prompt``, ``chosen``, ``rejected``, ``chosen_scores``,
    ``rejected_scores`` (the responses' whole score dicts). Rows with no qualifying pair add nothing.
    """
    if min_gap < 0 or pairs_per_prompt < 0:
        raise ValueError(f"min_gap and pairs_per_prompt must be >= 0, got {min_gap} and {pairs_per_prompt}")
    pairs: list[Row] = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index}: expected a dict, got {type(row).__name__}")
        for field in ("prompt", "responses", "response_scores"):
            if field not in row:
                raise ValueError(f"row {index}: missing field {field!r}")
        responses, all_scores = row["responses"], row["response_scores"]
        if not isinstance(responses, list) or not isinstance(all_scores, list) or len(responses) != len(all_scores):
            raise ValueError(f"row {index}: fields 'responses' and 'response_scores' must be lists of equal length")
        scores = [_score(s, dimension, f"row {index}: field 'response_scores[{j}]'") for j, s in enumerate(all_scores)]
        qualifying = [
            (a, b) if scores[a] > scores[b] else (b, a)
            for a, b in itertools.combinations(range(len(responses)), 2)
            if scores[a] != scores[b] and abs(scores[a] - scores[b]) >= min_gap
        ]
        if pairs_per_prompt and len(qualifying) > pairs_per_prompt:
            picked = np.random.default_rng([seed, index]).choice(len(qualifying), size=pairs_per_prompt, replace=False)
            qualifying = [qualifying[int(k)] for k in picked]
        for win, lose in qualifying:
            pairs.append(
                {
                    "prompt": row["prompt"],
                    "chosen": responses[win],
                    "rejected": responses[lose],
                    "chosen_scores": dict(all_scores[win]),
                    "rejected_scores": dict(all_scores[lose]),
                }
            )
    return pairs
