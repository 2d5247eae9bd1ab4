"""Which decoder passes a configured train step runs, over which rows: the input of :func:`jaxspo.perf.model_flops`.

:func:`step_forwards` reads the batch arrays a step of ``phase`` takes (this process's rows, numpy, or
just their shapes) and returns the passes of the whole global batch:

- the policy over every sequence row (padded: chosen and rejected rows, ``[2B, T]``; packed: ``[B, W]``;
  lists: ``[B·n, T]``; SFT: ``[B, T]``), with a backward ("frozen" for LoRA's base);
- the resident reference over the same rows, forward only, when the step computes it (``in_step_reference``);
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

from jaxspo.perf import Forward, model_flops, packed_forward, padded_forward
from jaxspo.objectives import in_step_reference, kl, selfsup
from jaxspo.objectives.lists import uses_lists


def _rows_width(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, width) of a token array ``[..., W]``."""
    return int(np.prod(shape[:-1])), int(shape[-1])


def step_forwards(
    cfg: Any, phase: str, arrays: Mapping[str, Any], batch_size: int, frozen_base: bool = False
) -> list[Forward]:
    """The passes one step of ``phase`` runs on the global batch of ``batch_size`` pairs (lists, SFT rows).

    ``arrays``: the step's batch arrays, of this process's rows or of all of them (numpy arrays, or any
    object with ``.shape`` for padded rows; packed rows need ``packed_positions`` and ``packed_valid``
    values); counts are scaled to ``batch_size`` rows. ``frozen_base``: LoRA (the policy's weights are frozen).
    """
    model = cfg.model
    backward = "frozen" if frozen_base else "full"
    local = next(
        arrays[name].shape[0]
        for name in ("list_tokens", "soft_label", "packed_tokens", "chosen_tokens", "tokens")
        if name in arrays
    )  # lists, pairs or SFT rows
    if phase == "sft":
        rows, width = _rows_width(arrays["tokens"].shape)
        return [padded_forward(model, rows, width, width - 1, backward).scaled(batch_size / local)]
    if "packed_tokens" in arrays:
        policy = packed_forward(
            model, np.asarray(arrays["packed_positions"]), np.asarray(arrays["packed_valid"]), backward
        )
    elif uses_lists(cfg.loss):
        rows, width = _rows_width(arrays["list_tokens"].shape)
        policy = padded_forward(model, rows, width, width - 1, backward)
    else:
        rows, width = _rows_width(arrays["chosen_tokens"].shape)
        policy = padded_forward(model, 2 * rows, width, width - 1, backward)
    passes = [policy]
    if in_step_reference(cfg.loss) and not uses_lists(cfg.loss):  # the list objective reads no reference
        passes.append(policy.forward_only())
    if selfsup.active(cfg.loss):
        passes += _selfsup_forwards(cfg, arrays, backward)
    passes = [f.scaled(batch_size / local) for f in passes]
    if kl.kl_active(cfg.loss):  # sampled on the device for the whole batch: shapes from the config
        dims = kl.dims(cfg.loss, cfg.data.max_prompt_length)
        rows, width = dims["samples"], dims["sample_length"]
        sampled = padded_forward(model, rows, width, width, backward)
        passes += [sampled, sampled.forward_only()]
    return passes


def _selfsup_forwards(cfg: Any, arrays: Mapping[str, Any], backward: str) -> list[Forward]:
    """Passes over the degraded copies ``[B, S, K, T]`` (classify mode: with the S originals, no LM head)."""
    b, sides, levels, width = arrays["selfsup_tokens"].shape
    if cfg.loss.selfsup.mode == "ranking":
        copies = padded_forward(cfg.model, b * sides * levels, width, width - 1, backward)
        reference = selfsup.needs_reference(cfg.loss) and cfg.loss.reference in (
            "resident",
            "adapter_off",
        )  # else precomputed
        return [copies] + ([copies.forward_only()] if reference else [])
    return [padded_forward(cfg.model, b * sides * (levels + 1), width, 0, backward)]


def step_model_flops(
    cfg: Any, phase: str, arrays: Mapping[str, Any], batch_size: int, frozen_base: bool = False
) -> float:
    """Model FLOPs of one step (:func:`step_forwards` counted by :func:`jaxspo.perf.model_flops`)."""
    return model_flops(cfg.model, step_forwards(cfg, phase, arrays, batch_size, frozen_base))
