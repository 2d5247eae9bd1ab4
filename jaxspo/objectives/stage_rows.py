"""The sequential stages' host side (docs/methods/sequential.md): a stage's config, and its pairs' frozen log-probs
and per-pair offset, prepared once π_{n−1} exists."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxspo.losses.sequential import stage_offset
from jaxspo.objectives.base import Arrays, HostContext, Prepared
from jaxspo.objectives.batches import OFFSET_FIELD, PRECOMPUTED_FIELDS
from jaxspo.train.reference_cache import cached_reference_logps


def stage_config(cfg: Any, index: int) -> Any:
    """The config stage ``index`` (0-based) trains with: its β_n, peak learning rate and steps."""
    stage = cfg.stages[index]
    return dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, beta=stage.beta or cfg.loss.beta),
        optimizer=dataclasses.replace(cfg.optimizer, learning_rate=stage.learning_rate or cfg.optimizer.learning_rate),
        trainer=dataclasses.replace(cfg.trainer, steps=stage.steps or cfg.trainer.steps),
    )


def stage_reference_and_offset(context: HostContext, arrays: Arrays) -> Prepared:
    """Stage n's reference log-probs (π_{n−1}'s) and offset ``[N]`` float32 of its train pairs.

    One sharded pass per frozen π_0 … π_{n−1} (``context.stage.policy``; π_{n−1} is the context's reference and
    graph, already built), each cached on disk under ``loss.reference_cache_dir``; the offset
    Σ_{i<n} λ_{n,i}[R_i(y_w) − R_i(y_l)] is computed from all of them in float64
    (:func:`~jaxspo.losses.sequential.stage_offset`) with the earlier stages' β and stage n's λ.
    """
    cfg, index = context.stage.recipe, context.stage.index
    chosen, rejected = [], []
    for number in range(index + 1):
        latest = number == index
        graphdef, params = (context.graphdef, context.reference) if latest else context.stage.policy(number)
        logps, _ = cached_reference_logps(
            cfg.loss.reference_cache_dir, context.scorer(graphdef), params, arrays, context.tokenizer
        )
        chosen.append(logps["reference_chosen_logps"].astype(np.float64))
        rejected.append(logps["reference_rejected_logps"].astype(np.float64))
    betas = [stage_config(cfg, k).loss.beta for k in range(index)]
    lambdas = [stage.lambdas for stage in cfg.stages[:index]]
    offset = stage_offset(chosen, rejected, betas, lambdas, cfg.stages[index].lambdas)
    fields = dict(zip(PRECOMPUTED_FIELDS, (chosen[-1].astype(np.float32), rejected[-1].astype(np.float32))))
    return Prepared(fields | {OFFSET_FIELD: np.asarray(offset, dtype=np.float32)})
