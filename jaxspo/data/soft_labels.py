"""Per-pair soft preference labels: the ``soft_label`` field, checked and oriented before encoding.

A preference row may carry ``soft_label`` = p̂ = P(chosen ≻ rejected), a number in [0, 1]. Rules
(docs/methods/gdpo.md):

- p̂ < ½: the pair is given the wrong way round; :func:`orient_pairs` swaps every ``chosen*`` field
  with its ``rejected*`` twin (``chosen``/``rejected``, ``chosen_scores``/``rejected_scores``, …) and
  sets p̂ → 1 − p̂, so training always sees p̂ ∈ [½, 1].
- p̂ outside [0, 1], NaN, or not a number: ValueError naming the row.
- missing (absent or None): fine for hard-label losses (encoded as 1.0), a ValueError naming the row
  and the losses when a configured loss reads soft labels (``soft_label_losses(cfg.loss.terms)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxspo.data.encode import soft_label_of as checked_soft_label  # the one range/NaN check, shared with encoding

SOFT_LABEL_FIELD = "soft_label"
_CHOSEN, _REJECTED = "chosen", "rejected"


def _swapped(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with each ``chosen<suffix>`` field exchanged with ``rejected<suffix>``."""
    out = dict(row)
    for key in row:
        if key.startswith(_CHOSEN):
            twin = _REJECTED + key[len(_CHOSEN) :]
            if twin in row:
                out[key], out[twin] = row[twin], row[key]
    return out


def orient_pairs(rows: Sequence[Mapping[str, Any]], required_by: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows with every present p̂ checked and ≥ ½ (pairs with p̂ < ½ swapped, p̂ → 1 − p̂).

    ``required_by``: names of the configured losses that read soft labels; if non-empty, a row without
    ``soft_label`` raises ValueError naming the row and those losses. Rows are copied, never mutated.
    """
    oriented = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index}: expected a dict, got {type(row).__name__}")
        if row.get(SOFT_LABEL_FIELD) is None:
            if required_by:
                raise ValueError(
                    f"row {index}: field {SOFT_LABEL_FIELD!r} is missing; the loss(es) {', '.join(required_by)} "
                    f"need a per-pair soft label p̂ = P(chosen ≻ rejected) in [0, 1]"
                )
            oriented.append(dict(row))
            continue
        label = checked_soft_label(row, index)
        if label < 0.5:
            oriented.append(_swapped(row) | {SOFT_LABEL_FIELD: 1.0 - label})
        else:
            oriented.append(dict(row) | {SOFT_LABEL_FIELD: label})
    return oriented
