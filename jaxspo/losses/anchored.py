"""Anchored losses: each response's own reward r = β·log πθ/π_ref(y) is pushed, not only the margin.

Each returns the per-pair loss ``[B]`` and matches TRL's ``DPOTrainer`` loss of the same name.
"""

from __future__ import annotations

import jax

from jaxspo.losses.registry import PairLogps, register_loss


def _rewards(logps: PairLogps, beta: float) -> tuple[jax.Array, jax.Array]:
    """(r_w, r_l) = β·log πθ/π_ref of chosen and rejected, ``[B]`` each."""
    chosen, rejected = logps.log_ratios()
    return beta * chosen, beta * rejected


@register_loss("nca_pair")
def nca_pair(logps: PairLogps, cfg) -> jax.Array:
    """−log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l). NCA, Chen et al., arXiv 2402.05369."""
    chosen, rejected = _rewards(logps, cfg.beta)
    return -jax.nn.log_sigmoid(chosen) - 0.5 * jax.nn.log_sigmoid(-chosen) - 0.5 * jax.nn.log_sigmoid(-rejected)


@register_loss("bco_pair")
def bco_pair(logps: PairLogps, cfg) -> jax.Array:
    """−log σ(r_w) − log σ(−r_l), without BCO's running reward shift (as TRL's ``bco_pair``).

    BCO, Jung et al., arXiv 2404.04656.
    """
    chosen, rejected = _rewards(logps, cfg.beta)
    return -jax.nn.log_sigmoid(chosen) - jax.nn.log_sigmoid(-rejected)


@register_loss("sppo_hard")
def sppo_hard(logps: PairLogps, cfg) -> jax.Array:
    """(log πθ/π_ref(y_w) − 1/(2β))² + (log πθ/π_ref(y_l) + 1/(2β))²: SPPO with hard P ∈ {0, 1}.

    SPPO, Wu et al., arXiv 2405.00675, Eq. 4.7.
    """
    chosen, rejected = logps.log_ratios()
    return (chosen - 0.5 / cfg.beta) ** 2 + (rejected + 0.5 / cfg.beta) ** 2


@register_loss("apo_zero")
def apo_zero(logps: PairLogps, cfg) -> jax.Array:
    """(1 − σ(r_w)) + σ(r_l): raise chosen, lower rejected. APO-zero, D'Oosterlinck et al., arXiv 2408.06266, Eq. 7."""
    chosen, rejected = _rewards(logps, cfg.beta)
    return 1.0 - jax.nn.sigmoid(chosen) + jax.nn.sigmoid(rejected)


@register_loss("apo_down")
def apo_down(logps: PairLogps, cfg) -> jax.Array:
    """σ(r_w) + (1 − σ(r_w − r_l)): lower both, rejected more. APO-down, arXiv 2408.06266, Eq. 8."""
    chosen, rejected = _rewards(logps, cfg.beta)
    return jax.nn.sigmoid(chosen) + 1.0 - jax.nn.sigmoid(chosen - rejected)
