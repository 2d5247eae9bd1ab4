"""f-divergence scores: the reward each margin loss compares, under the divergence that regularises πθ toward π_ref.

DPO's reward β·log πθ/π_ref(y) comes from the reverse KL. With another f-divergence the optimal policy gives
the reward β·f'(u), u = πθ(y)/π_ref(y), so the margin losses compare f'(u_w) − f'(u_l) instead (f-DPO, Wang
et al., arXiv 2309.16240, Theorem 1; TRL's ``f_divergence_type``). Here ``r = log u``:

- ``reverse_kl``: f'(u) = log u + 1, score r (the constant cancels in the margin);
- ``forward_kl``: f'(u) = 1 − 1/u, score 1 − e^{−r};
- ``js_divergence``: f'(u) = log(2u/(1+u)), score log 2 + log σ(r);
- ``alpha_divergence``: f'(u) = (u^{α−1} − 1)/(α−1), score (e^{(α−1)r} − 1)/(α−1); α = 1 is the reverse KL.

A loss that supports them declares :class:`DivergenceParams` (or a subclass) and reads
:func:`divergence_scores` in place of :meth:`PairLogps.log_ratios`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxspo.losses.registry import PairLogps, hyperparameter

DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
EXPONENT_CAP = 80.0  # (α−1)·r is capped here so e^{(α−1)r} stays finite in float32 (as TRL caps it)


@dataclasses.dataclass(frozen=True)
class DivergenceParams:
    """``loss.params.<term>.divergence`` and ``.divergence_alpha`` of a loss that takes an f-divergence."""

    # reverse_kl (DPO), forward_kl, js_divergence or alpha_divergence (TRL f_divergence_type)
    divergence: str = hyperparameter("reverse_kl", choices=DIVERGENCES)
    divergence_alpha: float = 0.5  # α of alpha_divergence (TRL f_alpha_divergence_coef); read only with it


def divergence_score(log_ratio: jax.Array, params: DivergenceParams) -> jax.Array:
    """f'(u) up to a constant, from r = log u = log πθ/π_ref(y) ``[B]`` (see the module docstring)."""
    if params.divergence == "forward_kl":
        return -jnp.expm1(-log_ratio)
    if params.divergence == "js_divergence":
        return math.log(2.0) + jax.nn.log_sigmoid(log_ratio)
    if params.divergence == "alpha_divergence" and abs(params.divergence_alpha - 1.0) >= 1e-6:
        shrink = params.divergence_alpha - 1.0
        return jnp.expm1(jnp.minimum(shrink * log_ratio, EXPONENT_CAP)) / shrink
    return log_ratio  # reverse_kl (and alpha_divergence at α = 1, its limit)


def divergence_scores(logps: PairLogps, params: DivergenceParams) -> tuple[jax.Array, jax.Array]:
    """Chosen and rejected scores ``[B]`` each: :func:`divergence_score` of their log-ratios."""
    chosen, rejected = logps.log_ratios()
    return divergence_score(chosen, params), divergence_score(rejected, params)


def divergence_margin(logps: PairLogps, params: DivergenceParams) -> jax.Array:
    """Score margin ``[B]``: f'(u_w) − f'(u_l); the log-ratio margin h under the reverse KL."""
    chosen, rejected = divergence_scores(logps, params)
    return chosen - rejected
