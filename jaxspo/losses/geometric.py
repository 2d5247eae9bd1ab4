"""Soft preference labels: geometric averaging (Furuta et al., arXiv 2409.06691) and soft baselines.

Each pair carries p̂ = P(y_w ≻ y_l) (``PairLogps.soft_label``, from the data field ``soft_label``;
:func:`jaxspo.data.soft_labels.orient_pairs` swaps pairs with p̂ < ½ before encoding). Replacing each
likelihood by the weighted geometric average π(y_w)^p̂ π(y_l)^(1−p̂) (same for π_ref) turns the margin
h into (2p̂−1)·h (docs/methods/gdpo.md). All five losses below are invariant to swapping a pair together with
p̂ → 1−p̂. Each returns the per-pair loss ``[B]``; β = ``cfg.beta``.
"""

from __future__ import annotations

import jax

from jaxspo.losses.dpo_family import RopoParams, logistic_loss, ropo_loss, smoothed_logistic_loss
from jaxspo.losses.registry import PairLogps, register_loss


def geometric_margin(logps: PairLogps) -> jax.Array:
    """(2p̂ − 1)·h, ``[B]``: the margin of the geometrically averaged pair."""
    return (2.0 * logps.soft_label - 1.0) * logps.margin()


@register_loss("gdpo", needs_soft_label=True)
def gdpo(logps: PairLogps, cfg) -> jax.Array:
    """−log σ(β(2p̂−1)h): DPO with a per-pair β(2p̂−1). Zero gradient and loss log 2 at p̂ = ½; DPO at p̂ = 1.

    GDPO, Furuta et al., arXiv 2409.06691.
    """
    return logistic_loss(cfg.beta * geometric_margin(logps))


@register_loss("gipo", needs_soft_label=True)
def gipo(logps: PairLogps, cfg) -> jax.Array:
    """((2p̂−1)h − 1/(2β))² on summed log-probs: geometric IPO; ``ipo`` at p̂ = 1 (Furuta et al., arXiv 2409.06691)."""
    return (geometric_margin(logps) - 1.0 / (2.0 * cfg.beta)) ** 2


@register_loss("gropo", needs_soft_label=True, params=RopoParams)
def gropo(logps: PairLogps, cfg, params: RopoParams) -> jax.Array:
    """ROPO (arXiv 2404.04102) with βh → β(2p̂−1)h, α = ``params.alpha`` (``loss.params.gropo.alpha``); ``ropo`` at p̂ =
    1 (arXiv 2409.06691)."""
    return ropo_loss(cfg.beta * geometric_margin(logps), params.alpha)


@register_loss("cdpo_soft", needs_soft_label=True)
def cdpo_soft(logps: PairLogps, cfg) -> jax.Array:
    """−p̂ log σ(βh) − (1−p̂) log σ(−βh): conservative DPO with per-pair p̂ (scalar-ε form: ``cdpo``).

    Its tabular optimum is π_ref·exp(r/β)/Z when p̂ = σ(r_w − r_l) (Bradley–Terry). Soft-label
    baseline of Furuta et al., arXiv 2409.06691.
    """
    return smoothed_logistic_loss(cfg.beta * logps.margin(), logps.soft_label)


@register_loss("cipo", needs_soft_label=True)
def cipo(logps: PairLogps, cfg) -> jax.Array:
    """(h − (2p̂−1)/(2β))²: IPO regressing h on a p̂-dependent target (docs/methods/gdpo.md, up to a constant).

    Soft-label IPO baseline of Furuta et al., arXiv 2409.06691 (IPO: arXiv 2310.12036).
    """
    return (logps.margin() - (2.0 * logps.soft_label - 1.0) / (2.0 * cfg.beta)) ** 2
