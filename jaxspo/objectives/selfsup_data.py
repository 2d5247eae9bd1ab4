"""selfsup's host-side preparation: degraded copies of the train and eval pairs, and the per-level eval metric.

Runs once, after the reference exists (the ``surprisal`` key scoring reads the reference's token
log-probs in a sharded pass; a precomputed reference also scores the copies once here). The TF-IDF is
fitted on the training responses of every degraded side and reused for the held-out pairs.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxspo.data.degrade import Degrader, degraded_arrays, response_ids
from jaxspo.losses.selfsup import level_rewards, pairwise_accuracy
from jaxspo.objectives import selfsup
from jaxspo.objectives.base import Arrays, HostContext, Prepared
from jaxspo.objectives.batches import SELFSUP_REFERENCE_FIELD
from jaxspo.train.scoring import SequenceScorer

log = logging.getLogger("jaxspo")


def _flat(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    x = arrays[f"selfsup_{name}"]
    return x.reshape((-1,) + x.shape[3:])


class DegreeData:
    """Builds the selfsup batch fields for encoded pair arrays (see :mod:`jaxspo.objectives.selfsup`)."""

    def __init__(
        self,
        cfg,
        tokenizer,
        graphdef: nnx.GraphDef,
        mesh: Mesh,
        reference_params: Any,
        train_arrays: dict[str, np.ndarray],
    ):
        s = cfg.loss.selfsup
        self.cfg, self.reference_params = cfg, reference_params
        self.sides = selfsup.sides(cfg.loss)
        self.scorer = SequenceScorer(graphdef, mesh, cfg.mesh.rules, cfg.trainer.batch_size)
        self.degrader = Degrader(tokenizer, s.unit, s.key_scoring, s.levels, s.fraction, s.seed, s.stopwords)
        if s.key_scoring == "tfidf":
            eos = tokenizer.eos_token_id
            corpus = [
                ids
                for side in self.sides
                for ids in response_ids(train_arrays[f"{side}_tokens"], train_arrays[f"{side}_loss_mask"], eos)
            ]
            self.degrader.fit(corpus)

    def __call__(self, arrays: dict[str, np.ndarray], with_reference: bool) -> dict[str, np.ndarray]:
        """The ``selfsup_*`` arrays for ``arrays``; ``with_reference`` adds ``selfsup_reference_logps`` ``[N, S,
        K]``."""
        surprisal = None
        if self.cfg.loss.selfsup.key_scoring == "surprisal":
            surprisal = {
                side: -self.scorer.token_logps(self.reference_params, arrays[f"{side}_tokens"], arrays[f"{side}_valid"])
                for side in self.sides
            }
        out = degraded_arrays(self.degrader, arrays, self.sides, self.cfg.data.max_length, surprisal)
        if with_reference:
            logps, _ = self.scorer.sums(
                self.reference_params, *(_flat(out, n) for n in ("tokens", "valid", "loss_mask"))
            )
            out[SELFSUP_REFERENCE_FIELD] = logps.reshape(out["selfsup_level_valid"].shape).astype(np.float32)
        valid = out["selfsup_level_valid"]
        log.info(
            "selfsup: %d rows × %d sides × %d levels, %.1f%% of the copies valid", *valid.shape, 100 * valid.mean()
        )
        return out


class LevelRewardMetrics:
    """``eval/selfsup/reward_level_k``: mean implicit reward of level k (0 = the original) over held-out rows
    whose copy k is valid, for every k, and ``eval/selfsup/ranking_accuracy`` (valid level pairs i < j with r_i >
    r_j)."""

    def __init__(self, degree: DegreeData, pairs: dict[str, np.ndarray]):
        self.degree, self.pairs = degree, pairs
        self.copies = degree(pairs, with_reference=False)
        self.kind = selfsup.reward_kind(degree.cfg.loss)

    def _rewards(self, params: Any, reference_params: Any) -> np.ndarray:
        """``[N, S, K + 1]`` rewards of the originals and the copies."""
        cfg, scorer = self.degree.cfg, self.degree.scorer
        shape = self.copies["selfsup_level_valid"].shape
        flat = [_flat(self.copies, n) for n in ("tokens", "valid", "loss_mask")]
        originals = [
            np.stack([self.pairs[f"{side}_{n}"] for side in self.degree.sides], 1).reshape(-1, flat[0].shape[-1])
            for n in ("tokens", "valid", "loss_mask")
        ]
        rewards = []
        for tokens, valid, mask, n in ((*originals, shape[:2]), (*flat, shape)):
            policy, lengths = scorer.sums(params, tokens, valid, mask)
            reference = None
            if self.kind == "log_ratio" and cfg.loss.reference != "none":
                reference = scorer.sums(reference_params, tokens, valid, mask)[0]
            rewards.append(np.asarray(level_rewards(self.kind, cfg.loss.beta, policy, reference, lengths)).reshape(n))
        return np.concatenate([rewards[0][..., None], rewards[1]], -1)

    def __call__(self, params: Any, reference_params: Any) -> dict[str, float]:
        rewards = self._rewards(params, reference_params)
        valid = np.concatenate([np.ones(rewards.shape[:2] + (1,), bool), self.copies["selfsup_level_valid"]], -1)
        out = {
            f"eval/selfsup/reward_level_{k}": float(rewards[..., k][valid[..., k]].mean())
            for k in range(rewards.shape[-1])
            if valid[..., k].any()
        }
        right, pairs = pairwise_accuracy(rewards, valid)
        out["eval/selfsup/ranking_accuracy"] = float(np.sum(right) / max(np.sum(pairs), 1.0))
        return out


def degraded_copies(context: HostContext, arrays: Arrays) -> Prepared:
    """The objective's preparation: the ``selfsup_*`` fields of the train pairs (with the copies' reference
    log-probs under a precomputed reference) and ``eval/selfsup/*`` on the held-out pairs."""
    degree = DegreeData(context.cfg, context.tokenizer, context.graphdef, context.mesh, context.reference, arrays)
    fields = degree(arrays, with_reference=selfsup.precomputed(context.cfg.loss))
    return Prepared(fields, [LevelRewardMetrics(degree, context.eval_pairs)])
