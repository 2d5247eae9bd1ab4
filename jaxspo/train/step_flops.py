"""Which decoder passes a configured train step runs, over which rows: the input of :func:`jaxspo.perf.model_flops`.

:func:`step_forwards` reads the batch arrays a step of an objective takes (this process's rows, numpy, or
just their shapes; the objective's batch type says which rows they are) and returns the passes of the whole
global batch:

- the policy over every sequence row (padded: chosen and rejected rows, ``[2B, T]``; packed: ``[B, W]``;
  lists: ``[B·n, T]``; SFT: ``[B, T]``), with a backward ("frozen" for LoRA's base);
- the resident reference over the same rows, forward only, when the step computes it (the objective's
  ``reference_passes``);
- ``selfsup``'s degraded copies (ranking: the policy, and the reference if its reward reads it; classify:
  the policy over the copies and the originals, no LM head);
- the KL regulariser's sampled rows: the policy with a backward and the reference forward.

Padded rows compute logits on ``T - 1`` slots (the last slot predicts nothing); packed rows and the KL
regulariser's rows on every slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxspo.objectives import Objective
from jaxspo.objectives.batches import KL_FIELDS, SELFSUP_FIELDS, ListBatch, PackedPairBatch, SFTBatch
from jaxspo.perf import Forward, model_flops, packed_forward, padded_forward


def _rows_width(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, width) of a token array ``[..., W]``."""
    return int(np.prod(shape[:-1])), int(shape[-1])


def _policy_forward(model: Any, objective: Objective, arrays: Mapping[str, Any], backward: str) -> Forward:
    """The policy's pass over the batch's sequence rows (the batch type says which)."""
    if objective.batch_type is SFTBatch:
        rows, width = _rows_width(arrays["tokens"].shape)
        return padded_forward(model, rows, width, width - 1, backward)
    if objective.batch_type is PackedPairBatch:
        positions, valid = np.asarray(arrays["packed_positions"]), np.asarray(arrays["packed_valid"])
        return packed_forward(model, positions, valid, backward)
    if objective.batch_type is ListBatch:
        rows, width = _rows_width(arrays["list_tokens"].shape)
        return padded_forward(model, rows, width, width - 1, backward)
    rows, width = _rows_width(arrays["chosen_tokens"].shape)
    return padded_forward(model, 2 * rows, width, width - 1, backward)


def step_forwards(
    cfg: Any, objective: Objective, arrays: Mapping[str, Any], batch_size: int, frozen_base: bool = False
) -> list[Forward]:
    """The passes one step of ``objective`` runs on the global batch of ``batch_size`` pairs (lists, SFT rows).

    ``arrays``: the step's batch arrays, of this process's rows or of all of them (numpy arrays, or any
    object with ``.shape`` for padded rows; packed rows need ``packed_positions`` and ``packed_valid``
    values); counts are scaled to ``batch_size`` rows. ``frozen_base``: LoRA (the policy's weights are frozen).
    """
    backward = "frozen" if frozen_base else "full"
    leading = {SFTBatch: "tokens", ListBatch: "list_tokens", PackedPairBatch: "soft_label"}  # a row per list, pair…
    scale = batch_size / arrays[leading.get(objective.batch_type, "chosen_tokens")].shape[0]
    passes = [_policy_forward(cfg.model, objective, arrays, backward)]
    if objective.batch_type is SFTBatch:
        return [passes[0].scaled(scale)]
    if "rows" in objective.reference_passes:
        passes.append(passes[0].forward_only())
    if SELFSUP_FIELDS[0] in objective.fields:
        passes += _selfsup_forwards(cfg, objective, arrays, backward)
    passes = [f.scaled(scale) for f in passes]
    if KL_FIELDS[0] in objective.fields:  # sampled on the device for the whole batch: shapes from the config
        rows, width = objective.dims["samples"], objective.dims["sample_length"]
        sampled = padded_forward(cfg.model, rows, width, width, backward)
        passes += [sampled] + ([sampled.forward_only()] if "kl" in objective.reference_passes else [])
    return passes


def _selfsup_forwards(cfg: Any, objective: Objective, arrays: Mapping[str, Any], backward: str) -> list[Forward]:
    """Passes over the degraded copies ``[B, S, K, T]`` (classify mode, which trains a head: with the S
    originals, no LM head)."""
    b, sides, levels, width = arrays["selfsup_tokens"].shape
    if objective.aux is None:  # ranking
        copies = padded_forward(cfg.model, b * sides * levels, width, width - 1, backward)
        # the reference's pass over the copies, unless their reference log-probs were precomputed
        return [copies] + ([copies.forward_only()] if "selfsup" in objective.reference_passes else [])
    return [padded_forward(cfg.model, b * sides * (levels + 1), width, 0, backward)]


def step_model_flops(
    cfg: Any, objective: Objective, arrays: Mapping[str, Any], batch_size: int, frozen_base: bool = False
) -> float:
    """Model FLOPs of one step (:func:`step_forwards` counted by :func:`jaxspo.perf.model_flops`)."""
    return model_flops(cfg.model, step_forwards(cfg, objective, arrays, batch_size, frozen_base))
