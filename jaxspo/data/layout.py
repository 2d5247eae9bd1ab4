"""The preference step's batch layout: ``padded`` (chosen and rejected rows) or ``packed`` (one row per pair).

``data.layout: packed`` turns the padded pair arrays of :func:`jaxspo.data.encode.encode_preference_rows`
into one row per pair that holds the shared prompt once::

    slot      0 … P-1      P … P+Lc-1        P+Lc … P+Lc+Lr-1     pad …
    tokens    prompt        chosen response   rejected response
    segment   0             1                 2                    0 (invalid)
    position  0 … P-1      P … P+Lc-1        P … P+Lr-1           0

A token attends to earlier valid tokens of its own segment and to the prompt (segment 0), so the chosen
and rejected halves never see each other and each sees exactly what it sees in its own padded row; its
RoPE position restarts after the prompt. ``source[t]`` is the slot whose output predicts token ``t``:
``t - 1``, except for the first rejected token, which the prompt's last slot predicts. Rows are padded to
the longest pair of the dataset (rounded up to a multiple of 8, and of ``mesh.context``); ``data.buckets`` then cut
batches to shorter widths (see :mod:`jaxspo.data.bucketing`), counted in packed tokens.

The step computes the prompt once and no chosen/rejected padding; its log-probs equal the padded layout's.
``data.pack_pairs`` lays several such pairs side by side in a row (:mod:`jaxspo.data.pair_packing`); a segment
is then ``3·pair + role`` (pair = the pair's index in its row), of which one pair per row is the case above.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ROLES = 3  # segments are 3·pair + role (0 prompt, 1 chosen, 2 rejected); one pair per row: 0, 1, 2
PACKED_FIELDS = (
    "packed_tokens",
    "packed_valid",
    "packed_segments",
    "packed_positions",
    "packed_source",
    "packed_chosen_mask",
    "packed_rejected_mask",
)


def _prompt_length(loss_mask: np.ndarray, valid: np.ndarray) -> int:
    """Leading tokens that are context, not targets (the response starts at the first loss-mask slot)."""
    return int(np.argmax(loss_mask)) if loss_mask.any() else int(valid.sum())


def pack_pairs(arrays: Mapping[str, np.ndarray], multiple: int = 8) -> dict[str, np.ndarray]:
    """Padded pair arrays (``{chosen,rejected}_{tokens,valid,loss_mask}`` ``[N, T]``) → the packed rows
    ``[N, W]`` of :data:`PACKED_FIELDS` (module docstring). ValueError naming the row if its chosen and
    rejected rows do not start with the same prompt."""
    tokens, valid, mask = (
        {side: np.asarray(arrays[f"{side}_{k}"]) for side in ("chosen", "rejected")}
        for k in ("tokens", "valid", "loss_mask")
    )
    n = len(tokens["chosen"])
    prompt = np.array([_prompt_length(mask["chosen"][i], valid["chosen"][i]) for i in range(n)], dtype=np.int64)
    chosen_len, rejected_len = valid["chosen"].sum(1) - prompt, valid["rejected"].sum(1) - prompt
    width = int(-(-int((prompt + chosen_len + rejected_len).max()) // multiple) * multiple)
    out = {
        name: np.zeros((n, width), np.int32)
        for name in ("packed_tokens", "packed_segments", "packed_positions", "packed_source")
    }
    out |= {name: np.zeros((n, width), bool) for name in ("packed_valid", "packed_chosen_mask", "packed_rejected_mask")}
    for i in range(n):
        p, c, r = int(prompt[i]), int(chosen_len[i]), int(rejected_len[i])
        if _prompt_length(mask["rejected"][i], valid["rejected"][i]) != p or not np.array_equal(
            tokens["chosen"][i, :p], tokens["rejected"][i, :p]
        ):
            raise ValueError(
                f"row {i}: data.layout=packed needs chosen and rejected to share their prompt tokens; use "
                "data.layout=padded"
            )
        out["packed_tokens"][i, : p + c + r] = np.concatenate(
            [tokens["chosen"][i, : p + c], tokens["rejected"][i, p : p + r]]
        )
        out["packed_valid"][i, : p + c + r] = True
        out["packed_segments"][i, p : p + c], out["packed_segments"][i, p + c : p + c + r] = 1, 2
        out["packed_positions"][i, : p + c + r] = np.concatenate([np.arange(p + c), p + np.arange(r)])
        out["packed_source"][i, 1 : p + c + r] = np.arange(p + c + r - 1)
        if r:
            out["packed_source"][i, p + c] = p - 1
        out["packed_chosen_mask"][i, : p + c] = mask["chosen"][i, : p + c]
        out["packed_rejected_mask"][i, p + c : p + c + r] = mask["rejected"][i, p : p + r]
    return out


def layout_arrays(arrays: Mapping[str, np.ndarray], data_cfg, multiple: int = 8) -> dict[str, np.ndarray]:
    """``arrays`` plus the packed rows (width a multiple of ``multiple``) when ``data_cfg.layout`` is ``packed``
    (the padded ones stay for scoring)."""
    return dict(arrays) | (pack_pairs(arrays, multiple) if data_cfg.layout == "packed" else {})
