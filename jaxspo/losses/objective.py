"""The configured objective: a weighted sum of registered losses, with TRL-named metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxspo.losses.registry import PairLogps, PairMetrics, get_loss

Metrics = dict[str, tuple[jax.Array, jax.Array]]  # name → (sum over pairs, count)


def evaluate_term(name: str, logps: PairLogps, cfg) -> tuple[jax.Array, PairMetrics]:
    """One registered loss with its params (``cfg.params[name]``): (per-pair loss ``[B]``, its extra per-pair
    metrics)."""
    result = get_loss(name).apply(logps, cfg)
    return result if isinstance(result, tuple) else (result, {})


def preference_objective(
    logps: PairLogps, cfg, pair_weight: jax.Array, loss_weight: jax.Array | None = None
) -> tuple[jax.Array, Metrics]:
    """Σ_terms weight·loss per pair, summed over pairs with ``pair_weight`` ``[B]`` (0 = padding pair).
    ``loss_weight`` ``[B]`` (WPO's, no gradient) multiplies each pair's loss and its ``loss*`` metrics only.

    Returns (loss sum, metrics as (sum, count)); the caller divides by the global pair count so
    gradient accumulation and multi-device averaging are exact.

    Metrics (TRL's names): ``loss``, ``loss/<term>`` when there are several terms, ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``,
    ``logps/rejected``, ``wpo/weight`` with a ``loss_weight``, plus each term's extra metrics (if two terms
    report the same name, the first in ``cfg.terms`` wins). Rewards are β·log πθ/π_ref unless the FIRST term
    reports its own ``rewards/chosen`` and ``rewards/rejected`` (e.g. SimPO's β·token-mean log πθ); later terms'
    rewards are ignored, so the primary loss defines them.
    """
    per_pair = jnp.zeros_like(logps.policy_chosen)
    scale = jnp.ones_like(per_pair) if loss_weight is None else loss_weight
    metrics: Metrics = {}
    extras: dict[str, jax.Array] = {}
    count = pair_weight.sum()

    def add(name: str, values: jax.Array) -> None:
        metrics[name] = ((values * pair_weight).sum(), count)

    chosen_ratio, rejected_ratio = logps.log_ratios()
    rewards = {"rewards/chosen": cfg.beta * chosen_ratio, "rewards/rejected": cfg.beta * rejected_ratio}
    for index, (name, weight) in enumerate(cfg.terms.items()):
        term, term_metrics = evaluate_term(name, logps, cfg)  # [B], {name: [B]}
        per_pair = per_pair + weight * scale * term
        if len(cfg.terms) > 1:
            add(f"loss/{name}", jax.lax.stop_gradient(scale * term))
        for metric, values in term_metrics.items():
            if metric not in rewards:
                extras.setdefault(metric, values)
            elif index == 0:
                rewards[metric] = values
    add("loss", per_pair)
    chosen_reward, rejected_reward = (jax.lax.stop_gradient(rewards[k]) for k in ("rewards/chosen", "rewards/rejected"))
    add("rewards/chosen", chosen_reward)
    add("rewards/rejected", rejected_reward)
    add("rewards/margins", chosen_reward - rejected_reward)
    add("rewards/accuracies", (chosen_reward > rejected_reward).astype(jnp.float32))
    add("logps/chosen", jax.lax.stop_gradient(logps.policy_chosen))
    add("logps/rejected", jax.lax.stop_gradient(logps.policy_rejected))
    if loss_weight is not None:
        add("wpo/weight", loss_weight)
    for name, values in extras.items():
        add(name, jax.lax.stop_gradient(values))
    return (per_pair * pair_weight).sum(), metrics
