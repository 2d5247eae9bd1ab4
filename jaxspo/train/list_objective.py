"""The objective of list losses (``layout="list"``): one forward over the B·n flattened responses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspo.data.lists import LIST_FIELDS
from jaxspo.losses import get_loss
from jaxspo.losses.soft_spo import ListLogps
from jaxspo.train.logprobs import sequence_logps
from jaxspo.lora.views import as_model

LIST_RANKS = {"list_tokens": 3, "list_valid": 3, "list_loss_mask": 3, "list_mask": 2, "list_scores": 2}


def uses_lists(loss_cfg) -> bool:
    """Whether the configured terms read ranked lists (config validation keeps them all one layout)."""
    return any(get_loss(name).layout == "list" for name in loss_cfg.terms)


def list_logps(graphdef: nnx.GraphDef, params: nnx.State, batch: dict[str, jax.Array]) -> ListLogps:
    """Sequence log-probs ``[B, n]`` of every listed response from ONE forward over ``[B·n, T]`` rows."""
    b, n, t = batch["list_tokens"].shape
    flat = [batch[k].reshape(b * n, t) for k in ("list_tokens", "list_valid", "list_loss_mask")]
    logps, lengths = sequence_logps(graphdef, params, *flat)  # [B·n]
    return ListLogps(
        policy=logps.reshape(b, n), mask=batch["list_mask"], lengths=lengths.reshape(b, n), scores=batch["list_scores"]
    )


def list_objective_fn(graphdef, loss_cfg):
    """``objective(params, frozen, batch, rng, head_params) -> (loss sum over lists, metrics as (sum, count))``
    (``graphdef``: a graph definition or a model object, see :mod:`jaxspo.lora.views`;
    ``head_params`` is unused: no auxiliary head reads lists).

    Metrics: ``loss``, ``loss/<term>`` (several terms), ``logps/best`` (best response), ``logps/rest``
    (mean over the other listed responses), and each term's extras (e.g. ``list/top1_accuracy``).
    """

    model = as_model(graphdef)

    def objective(params: nnx.State, reference_params, batch: dict[str, jax.Array], rng=None, head_params=None):
        with jax.named_scope("policy_lists"):
            logps = list_logps(*model.policy(params, reference_params, rng), batch)
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
            (batch["list_valid"] & logps.mask[..., None]).sum().astype(jnp.float32),
            jnp.float32(1.0),
        )  # real responses
        return per_list.sum(), metrics

    return objective


__all__ = ["LIST_FIELDS", "LIST_RANKS", "list_logps", "list_objective_fn", "uses_lists"]
