"""Sequential multi-dimensional Preference Optimization (docs/methods/sequential.md) — ``sequential``.

Lou et al., "SPO: Multi-Dimensional Preference Sequential Alignment With Implicit Reward Modeling",
arXiv 2405.12739 (AAAI 2025). Stage n (1-based) trains π_n from π_{n−1}, with π_{n−1} as reference, on
pairs labelled by one preference dimension, constrained by the implicit rewards of the earlier stages:

    R_i = β_i log(π_i / π_{i−1}) − Σ_{j<i} λ_{i,j} R_j          (frozen π_0 … π_{n−1}, i < n)
    offset = Σ_{i<n} λ_{n,i} [R_i(y_w) − R_i(y_l)]
    loss_n = −log σ(β_n h_n − offset),  h_n with reference π_{n−1}

whose tabular optimum is π_n ∝ π_{n−1} exp((R_n + Σ_{i<n} λ_{n,i} R_i)/β_n) [D]. With every λ = 0 it is
DPO against π_{n−1} (naive sequential DPO). The offset needs only log-probs of each stage's pairs
under the frozen earlier policies, so it is computed once per stage (:mod:`jaxspo.train.stages`) and
reaches the loss as the per-pair ``PairLogps.offset``.

The reward functions below are written with ``+ − ×`` only, so they take numpy (float64 on the host)
or jax arrays alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxspo.losses.dpo_family import logistic_loss
from jaxspo.losses.registry import PairLogps, register_loss


def implicit_rewards(logps: Sequence[Any], betas: Sequence[float], lambdas: Sequence[Sequence[float]]) -> list[Any]:
    """Implicit rewards ``[R_1, …, R_S]`` of the frozen policies π_0 … π_S.

    ``logps[i]``: log π_i of some responses (any shape, the same for every i; margins
    log π_i(y_w) − log π_i(y_l) work too, as everything is linear); ``betas[i-1]`` = β_i;
    ``lambdas[i-1]`` = [λ_{i,1}, …, λ_{i,i−1}] (stage 1's list is empty).
    R_i = β_i (log π_i − log π_{i−1}) − Σ_{j<i} λ_{i,j} R_j.
    """
    stages = len(logps) - 1
    if len(betas) != stages or len(lambdas) != stages:
        raise ValueError(f"{len(logps)} policies need {stages} betas and λ lists, got {len(betas)} and {len(lambdas)}")
    rewards: list[Any] = []
    for i in range(stages):
        if len(lambdas[i]) != i:
            raise ValueError(f"stage {i + 1} needs {i} λ values (one per earlier stage), got {len(lambdas[i])}")
        reward = betas[i] * (logps[i + 1] - logps[i])
        for weight, earlier in zip(lambdas[i], rewards):
            reward = reward - weight * earlier
        rewards.append(reward)
    return rewards


def stage_offset(
    chosen_logps: Sequence[Any],
    rejected_logps: Sequence[Any],
    betas: Sequence[float],
    lambdas: Sequence[Sequence[float]],
    stage_lambdas: Sequence[float],
) -> Any:
    """Σ_{i<n} λ_{n,i} [R_i(y_w) − R_i(y_l)] per pair, for stage n = ``len(chosen_logps)``.

    ``chosen_logps[i]`` / ``rejected_logps[i]``: log π_i(y_w) / log π_i(y_l) ``[B]`` for i = 0 … n−1;
    ``betas``, ``lambdas``: of stages 1 … n−1 (as in :func:`implicit_rewards`); ``stage_lambdas``:
    [λ_{n,1}, …, λ_{n,n−1}]. Stage 1 (one policy) has offset 0.
    """
    margins = [c - r for c, r in zip(chosen_logps, rejected_logps)]
    if len(stage_lambdas) != len(margins) - 1:
        raise ValueError(f"stage {len(margins)} needs {len(margins) - 1} λ values, got {len(stage_lambdas)}")
    offset = 0.0 * margins[0]
    for weight, reward in zip(stage_lambdas, implicit_rewards(margins, betas, lambdas)):
        offset = offset + weight * reward
    return offset


@register_loss("sequential", needs_offset=True)
def sequential(logps: PairLogps, cfg) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−log σ(β_n h_n − offset), β_n = ``cfg.beta`` (the stage's β), offset = ``logps.offset`` ``[B]``.

    Reports ``sequential/offset`` (the per-pair offset, nats).
    """
    offset = jnp.zeros_like(logps.policy_chosen) if logps.offset is None else logps.offset
    return logistic_loss(cfg.beta * logps.margin() - offset), {"sequential/offset": offset}
