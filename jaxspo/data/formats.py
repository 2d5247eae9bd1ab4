"""Preference row formats (TRL's standard and conversational) and their canonical form.

A canonical preference row has ``prompt``, ``chosen`` and ``rejected`` that are either all text
(TRL "standard": ``str``) or all conversations (TRL "conversational": ``prompt`` a list of
``{"role", "content"}`` messages, ``chosen`` / ``rejected`` the completion messages), plus optional
``soft_label`` (p̂ = P(chosen ≻ rejected) ∈ [0, 1]), ``chosen_scores`` / ``rejected_scores``
(``{dimension: float}``), ``responses`` / ``response_scores`` (a ranked list) and anything else
(ignored). Accepted inputs, normalised by :func:`to_preference_row`:

- standard: ``{"prompt": str, "chosen": str, "rejected": str}``;
- conversational, explicit prompt: ``{"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}``;
- conversational, implicit prompt: ``{"chosen": [msgs], "rejected": [msgs]}`` (a ``str`` prompt, as in
  UltraFeedback, is dropped): the prompt is the longest common message prefix of chosen and rejected;
- ranked: no ``chosen`` / ``rejected`` but ``responses`` (texts or message lists) and numeric
  ``response_scores`` (higher is better): chosen = best, rejected = worst.

Every error is a ValueError starting ``row <i>:`` and naming the field.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant", "tool")


def field(row: Any, index: int, name: str) -> Any:
    """``row[name]``; ValueError naming the row when ``row`` is not a dict or lacks the field."""
    if not isinstance(row, Mapping):
        raise ValueError(f"row {index}: expected a dict, got {type(row).__name__}")
    if name not in row:
        raise ValueError(f"row {index}: missing field {name!r}")
    return row[name]


def text(value: Any, where: str) -> str:
    """``value`` if it is a non-blank str; ``where`` names it in the error (e.g. "row 3: field 'chosen'")."""
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{where} is not valid text (undecodable character at {err.start})") from None
    return value


def messages(value: Any, where: str) -> Messages:
    """``value`` if it is a non-empty list of ``{"role": str, "content": str}`` with a known role."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of messages, got {type(value).__name__}")
    out = []
    for k, message in enumerate(value):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}[{k}] must be a dict with 'role' and 'content'")
        if message["role"] not in ROLES:
            raise ValueError(f"{where}[{k}]: role must be one of {list(ROLES)}, got {message['role']!r}")
        out.append({"role": message["role"], "content": text(message["content"], f"{where}[{k}] content")})
    return out


def is_conversation(value: Any) -> bool:
    return isinstance(value, list)


def _ranked(row: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Best and worst of ``responses`` by numeric ``response_scores`` as chosen / rejected."""
    responses, scores = row["responses"], row.get("response_scores")
    where = f"row {index}: field 'response_scores'"
    if (
        not isinstance(responses, list)
        or not isinstance(scores, list)
        or len(scores) != len(responses)
        or len(responses) < 2
    ):
        raise ValueError(f"{where} must be a list of numbers as long as 'responses' (at least 2)")
    if not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in scores):
        raise ValueError(f"{where} must hold numbers (higher is better)")
    best = max(range(len(scores)), key=lambda k: scores[k])
    worst = min(range(len(scores)), key=lambda k: scores[k])
    if scores[best] == scores[worst]:
        raise ValueError(f"{where}: all responses score {scores[best]}; no preference")
    return dict(row) | {"chosen": responses[best], "rejected": responses[worst]}


def to_preference_row(row: Any, index: int) -> dict[str, Any]:
    """The canonical form of one preference row (see the module docstring)."""
    if not isinstance(row, Mapping):
        raise ValueError(f"row {index}: expected a dict, got {type(row).__name__}")
    if "chosen" not in row and "rejected" not in row and "responses" in row:
        row = _ranked(row, index)
    chosen, rejected = field(row, index, "chosen"), field(row, index, "rejected")
    if not (is_conversation(chosen) or is_conversation(rejected)):
        return dict(row)
    chosen = messages(chosen, f"row {index}: field 'chosen'")
    rejected = messages(rejected, f"row {index}: field 'rejected'")
    prompt = row.get("prompt")
    if is_conversation(prompt):
        return dict(row) | {
            "prompt": messages(prompt, f"row {index}: field 'prompt'"),
            "chosen": chosen,
            "rejected": rejected,
        }
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise ValueError(
            f"row {index}: field 'chosen' and field 'rejected' share no leading message, so there is no implicit prompt"
        )
    if shared == len(chosen) or shared == len(rejected):
        raise ValueError(
            f"row {index}: field 'rejected' is identical to field 'chosen' (or one is a prefix of the other)"
        )
    return dict(row) | {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def sft_rows_from_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT rows (``prompt``, ``completion`` = the chosen response) from canonical preference rows.

    Rows that do not canonicalise are left out: the screening of the same rows as pairs reports them.
    """
    out = []
    for i, row in enumerate(rows):
        try:
            pair = to_preference_row(row, i)
        except ValueError:
            continue
        out.append({"prompt": pair.get("prompt"), "completion": pair["chosen"]})
    return out


def prompts_of(rows: list[Any]) -> list[str | Messages]:
    """The prompt of each row that canonicalises (text, or messages for conversations); the others are
    left out (the screening of the same rows reports them)."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(to_preference_row(row, i)["prompt"])
        except (ValueError, KeyError):
            continue
    return out
