"""The list objective (losses of ``layout="list"``): one forward over the B·n flattened responses of ranked lists."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspo.data.lists import encode_list_rows, rank_by_scores
from jaxspo.losses import get_loss, ranking_losses
from jaxspo.losses.soft_spo import ListLogps
from jaxspo.objectives.base import Arrays, Encode, Encoder
from jaxspo.objectives.batches import ListBatch
from jaxspo.train.logprobs import sequence_logps


def list_encoder(cfg: Any, pairs: Encoder) -> Encoder:
    """The train split → ranked lists ``[N, n, data.max_length]``, best first (the built-in task's rankings come
    from its scores; a row's 'best' serves when no term reads the full ranking: losses registered with
    ``needs_ranking=False``, e.g. ``soft_spo_best_of_n``); other splits by ``pairs`` (held-out pairs)."""
    need_ranking = bool(ranking_losses(cfg.loss.terms))
    task = cfg.data.synthetic

    def encoder(tokenizer: Any, split: str) -> Encode:
        if split != "train":
            return pairs(tokenizer, split)

        def encode(rows) -> Arrays:
            ranked = rank_by_scores(rows, task, cfg.trainer.seed)
            return encode_list_rows(ranked, tokenizer, cfg.data.max_length, need_ranking, task.label_weights)

        return encode

    return encoder


def list_logps(graphdef: nnx.GraphDef, params: nnx.State, batch: ListBatch) -> ListLogps:
    """Sequence log-probs ``[B, n]`` of every listed response from ONE forward over ``[B·n, T]`` rows."""
    b, n, t = batch.list_tokens.shape
    flat = [x.reshape(b * n, t) for x in (batch.list_tokens, batch.list_valid, batch.list_loss_mask)]
    logps, lengths = sequence_logps(graphdef, params, *flat)  # [B·n]
    return ListLogps(
        policy=logps.reshape(b, n), mask=batch.list_mask, lengths=lengths.reshape(b, n), scores=batch.list_scores
    )


def list_loss(loss_cfg):
    """``loss(view, params, frozen, batch, rng, aux) -> (loss sum over lists, metrics as (sum, count))``
    (``aux`` is unused: no auxiliary state reads lists).

    Metrics: ``loss``, ``loss/<term>`` (several terms), ``logps/best`` (best response), ``logps/rest``
    (mean over the other listed responses), and each term's extras (e.g. ``list/top1_accuracy``).
    """

    def loss(view, params: nnx.State, frozen, batch: ListBatch, rng=None, aux=None):
        with jax.named_scope("policy_lists"):
            logps = list_logps(*view.policy(params, frozen, rng), batch)
        count = jnp.float32(logps.policy.shape[0])
        per_list = jnp.zeros(logps.policy.shape[:1])
        metrics, extras = {}, {}
        for name, weight in loss_cfg.terms.items():
            term, term_metrics = get_loss(name).apply(logps, loss_cfg)
            per_list = per_list + weight * term
            if len(loss_cfg.terms) > 1:
                metrics[f"loss/{name}"] = (jax.lax.stop_gradient(term).sum(), count)
            for metric, values in term_metrics.items():
                extras.setdefault(metric, values)
        policy = jax.lax.stop_gradient(logps.policy)
        rest = logps.mask.at[:, 0].set(False)
        metrics["loss"] = (per_list.sum(), count)
        metrics["logps/best"] = (policy[:, 0].sum(), count)
        metrics["logps/rest"] = ((policy * rest).sum() / jnp.maximum(rest.sum(), 1) * count, count)
        metrics |= {name: (jax.lax.stop_gradient(v).sum(), count) for name, v in extras.items()}
        metrics["tokens"] = (
            (batch.list_valid & logps.mask[..., None]).sum().astype(jnp.float32),
            jnp.float32(1.0),
        )  # real responses
        return per_list.sum(), metrics

    return loss


def list_count(batch: ListBatch) -> jax.Array:
    """The step's denominator: lists."""
    return jnp.float32(batch.list_tokens.shape[0])
