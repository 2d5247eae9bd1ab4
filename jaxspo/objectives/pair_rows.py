"""The pair objective's host side: encoding chosen/rejected rows (soft labels oriented) and the reference's
log-probs precomputed once before training (``loss.reference: precomputed``, cached on disk)."""

from __future__ import annotations

from typing import Any

from jaxspo.data.encode import encode_preference_rows
from jaxspo.data.soft_labels import orient_pairs
from jaxspo.losses import soft_label_losses
from jaxspo.objectives.base import Arrays, Encode, Encoder, HostContext, Prepared
from jaxspo.train.reference_cache import cached_reference_logps


def pair_encoder(cfg: Any) -> Encoder:
    """Rows → padded pair arrays ``[N, data.max_length]``. With a loss reading soft labels p̂, a pair with p̂ < ½
    is swapped (:func:`~jaxspo.data.soft_labels.orient_pairs`), and a row of the train split without p̂ is an
    error; otherwise chosen/rejected are taken as given."""
    soft_losses = soft_label_losses(cfg.loss.terms)
    length, prompt_length = cfg.data.max_length, cfg.data.max_prompt_length

    def encoder(tokenizer: Any, split: str) -> Encode:
        def encode(rows) -> Arrays:
            if soft_losses:
                rows = orient_pairs(rows, soft_losses if split == "train" else [])
            return encode_preference_rows(rows, tokenizer, length, prompt_length)

        return encode

    return encoder


def precomputed_reference_logps(context: HostContext, arrays: Arrays) -> Prepared:
    """``reference_chosen_logps`` and ``reference_rejected_logps`` ``[N]`` of every pair under the frozen
    reference: one sharded pass, or read from ``loss.reference_cache_dir``."""
    scorer = context.scorer(context.graphdef)
    cached, _ = cached_reference_logps(
        context.cfg.loss.reference_cache_dir, scorer, context.reference, arrays, context.tokenizer
    )
    return Prepared(cached)
