"""The configured objective: a weighted sum of registered losses, with TRL-named metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxspo.losses.registry import PairLogps, get_loss

Metrics = dict[str, tuple[jax.Array, jax.Array]]  # name → (sum over pairs, count)


def preference_objective(logps: PairLogps, cfg, pair_weight: jax.Array) -> tuple[jax.Array, Metrics]:
    """Σ_terms weight·loss per pair, summed over pairs with ``pair_weight`` ``[B]`` (0 = padding pair).

    Returns (loss sum, metrics as (sum, count)); the caller divides by the global pair count so
    gradient accumulation and multi-device averaging are exact.
    """
    per_pair = jnp.zeros_like(logps.policy_chosen)
    metrics: Metrics = {}
    count = pair_weight.sum()

    def add(name: str, values: jax.Array) -> None:
        metrics[name] = ((values * pair_weight).sum(), count)

    for name, weight in cfg.terms.items():
        term = get_loss(name).fn(logps, cfg)  # [B]
        per_pair = per_pair + weight * term
        if len(cfg.terms) > 1:
            add(f"loss/{name}", term)
    add("loss", per_pair)
    chosen_ratio, rejected_ratio = logps.log_ratios()
    chosen_reward = cfg.beta * jax.lax.stop_gradient(chosen_ratio)
    rejected_reward = cfg.beta * jax.lax.stop_gradient(rejected_ratio)
    add("rewards/chosen", chosen_reward)
    add("rewards/rejected", rejected_reward)
    add("rewards/margins", chosen_reward - rejected_reward)
    add("rewards/accuracies", (chosen_reward > rejected_reward).astype(jnp.float32))
    add("logps/chosen", jax.lax.stop_gradient(logps.policy_chosen))
    add("logps/rejected", jax.lax.stop_gradient(logps.policy_rejected))
    return (per_pair * pair_weight).sum(), metrics
