"""DPO-family losses on the margin h (docs/methods/dpo.md). Each returns the per-pair loss ``[B]``.

Notation: β = ``cfg.beta``, ε = ``cfg.label_smoothing``, h = log πθ/π_ref(y_w) − log πθ/π_ref(y_l) on
summed token log-probs, |y| the response length in tokens. TRL's ``loss_type`` names are kept where
TRL has the loss (TRL's ``sigmoid`` is ``dpo`` here). The link functions at the top are shared with
the soft-label losses in :mod:`jaxspo.losses.geometric`. The losses TRL generalises to other f-divergences
(``dpo``, ``sigmoid_norm``, ``hinge``, ``ipo_norm``, ``exo_pair``, ``robust``, ``discopop``) take
``loss.params.<term>.divergence``: their h is then the score margin f'(u_w) − f'(u_l) of
:mod:`jaxspo.losses.f_divergence`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxspo.losses.f_divergence import DivergenceParams, divergence_margin, divergence_scores
from jaxspo.losses.registry import PairLogps, hyperparameter, register_loss


# --------------------------------------------------------------------------------------------
# Link functions of a scaled margin z (shared with geometric.py)
# --------------------------------------------------------------------------------------------


def logistic_loss(z: jax.Array) -> jax.Array:
    """−log σ(z)."""
    return -jax.nn.log_sigmoid(z)


def smoothed_logistic_loss(z: jax.Array, target: jax.Array | float) -> jax.Array:
    """Cross-entropy of σ(z) against the target probability q: −q log σ(z) − (1−q) log σ(−z)."""
    return -target * jax.nn.log_sigmoid(z) - (1.0 - target) * jax.nn.log_sigmoid(-z)


def ropo_loss(z: jax.Array, alpha: float) -> jax.Array:
    """ROPO's link: (4α/(1+α)²)·[−log σ(z) + α σ(−z)]."""
    return 4.0 * alpha / (1.0 + alpha) ** 2 * (logistic_loss(z) + alpha * jax.nn.sigmoid(-z))


def normalised_margin(logps: PairLogps, params: DivergenceParams) -> jax.Array:
    """Token-mean score margin f'(u_w)/|y_w| − f'(u_l)/|y_l| (TRL's ipo and sigmoid_norm; under the reverse KL
    log πθ/π_ref(y_w)/|y_w| − log πθ/π_ref(y_l)/|y_l|)."""
    chosen, rejected = logps.per_token(*divergence_scores(logps, params))
    return chosen - rejected


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


@register_loss("dpo", params=DivergenceParams)
def dpo(logps: PairLogps, cfg, params: DivergenceParams) -> jax.Array:
    """−log σ(βh). DPO, Rafailov et al., arXiv 2305.18290 (TRL ``sigmoid``); f-DPO with another divergence."""
    return logistic_loss(cfg.beta * divergence_margin(logps, params))


@register_loss("cdpo")
def cdpo(logps: PairLogps, cfg) -> jax.Array:
    """−(1−ε) log σ(βh) − ε log σ(−βh): conservative DPO with scalar label smoothing ε.

    Mitchell, "A note on DPO with noisy preferences" (2023); the per-pair p̂ form is ``cdpo_soft``.
    """
    return smoothed_logistic_loss(cfg.beta * logps.margin(), 1.0 - cfg.label_smoothing)


@register_loss("robust", params=DivergenceParams)
def robust(logps: PairLogps, cfg, params: DivergenceParams) -> jax.Array:
    """[−(1−ε) log σ(βh) + ε log σ(−βh)] / (1−2ε), ε = flip rate < ½.

    Robust DPO, Chowdhury et al., arXiv 2403.00409 (TRL ``robust``; ``rdpo`` is R-DPO, not this).
    """
    z, eps = cfg.beta * divergence_margin(logps, params), cfg.label_smoothing
    return (-(1.0 - eps) * jax.nn.log_sigmoid(z) + eps * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * eps)


@register_loss("hinge", params=DivergenceParams)
def hinge(logps: PairLogps, cfg, params: DivergenceParams) -> jax.Array:
    """relu(1 − βh). SLiC-HF, Zhao et al., arXiv 2305.10425."""
    return jax.nn.relu(1.0 - cfg.beta * divergence_margin(logps, params))


@register_loss("ipo")
def ipo(logps: PairLogps, cfg) -> jax.Array:
    """(h − 1/(2β))² on SUMMED log-probs, the paper's Eq. 17. IPO, Azar et al., arXiv 2310.12036.

    TRL's ``ipo`` length-normalises h; that form is ``ipo_norm``.
    """
    return (logps.margin() - 1.0 / (2.0 * cfg.beta)) ** 2


@register_loss("ipo_norm", params=DivergenceParams)
def ipo_norm(logps: PairLogps, cfg, params: DivergenceParams) -> jax.Array:
    """(h̄ − 1/(2β))², h̄ the token-mean margin (:func:`normalised_margin`): TRL's ``ipo`` exactly.

    IPO, Azar et al., arXiv 2310.12036, in the length-normalised form TRL uses.
    """
    return (normalised_margin(logps, params) - 1.0 / (2.0 * cfg.beta)) ** 2


@register_loss("sigmoid_norm", params=DivergenceParams)
def sigmoid_norm(logps: PairLogps, cfg, params: DivergenceParams) -> jax.Array:
    """−log σ(β h̄), h̄ the token-mean margin: length-normalised DPO (TRL ``sigmoid_norm``).

    As in Tülu 3, Lambert et al., arXiv 2411.15124.
    """
    return logistic_loss(cfg.beta * normalised_margin(logps, params))


@register_loss("exo_pair", params=DivergenceParams)
def exo_pair(logps: PairLogps, cfg, params: DivergenceParams) -> jax.Array:
    """KL(q ‖ p_ε) with q = (σ(βh), σ(−βh)) and p_ε = (1−ε, ε), ε > 0 (paper: 1e-3).

    EXO, Ji et al., arXiv 2402.00856, Eq. 16 (TRL ``exo_pair``).
    """
    z, eps = cfg.beta * divergence_margin(logps, params), cfg.label_smoothing
    win = jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - jnp.log1p(-eps))
    lose = jax.nn.sigmoid(-z) * (jax.nn.log_sigmoid(-z) - jnp.log(eps))
    return win + lose


@dataclasses.dataclass(frozen=True)
class DiscopopParams(DivergenceParams):
    """``loss.params.discopop``: τ and the divergence fields."""

    tau: float = hyperparameter(0.05, gt=0.0)  # modulation temperature τ (TRL and paper default)


@register_loss("discopop", params=DiscopopParams)
def discopop(logps: PairLogps, cfg, params: DiscopopParams) -> jax.Array:
    """(1−m)·(−log σ(βh)) + m·exp(−βh), m = σ(βh/τ), τ = ``params.tau``.

    DiscoPOP (log-ratio modulated loss), Chris Lu et al., arXiv 2406.08414, Eq. 5 (TRL ``discopop``).
    """
    z = cfg.beta * divergence_margin(logps, params)
    mix = jax.nn.sigmoid(z / params.tau)
    return (1.0 - mix) * logistic_loss(z) + mix * jnp.exp(-z)


@dataclasses.dataclass(frozen=True)
class RdpoParams:
    """``loss.params.rdpo``."""

    alpha: float = 0.05  # length coefficient α, per token of |y_w| − |y_l|


@register_loss("rdpo", params=RdpoParams)
def rdpo(logps: PairLogps, cfg, params: RdpoParams) -> jax.Array:
    """−log σ(βh + α(|y_w| − |y_l|)), α = ``params.alpha``: length-regularised DPO.

    R-DPO, Park et al., arXiv 2403.19159 (form of SimPO's Table 3, arXiv 2405.14734).
    """
    return logistic_loss(cfg.beta * logps.margin() + params.alpha * (logps.chosen_length - logps.rejected_length))


@dataclasses.dataclass(frozen=True)
class RopoParams:
    """``loss.params.ropo`` (and ``loss.params.gropo``, its soft-label form)."""

    alpha: float = hyperparameter(14.0, gt=0.0)  # α of ROPO's link (paper default 14)


@register_loss("ropo", params=RopoParams)
def ropo(logps: PairLogps, cfg, params: RopoParams) -> jax.Array:
    """(4α/(1+α)²)·[−log σ(βh) + α σ(−βh)], α = ``params.alpha`` (default 14).

    ROPO, Liang et al., arXiv 2404.04102.
    """
    return ropo_loss(cfg.beta * logps.margin(), params.alpha)


@register_loss("aot")
def aot(logps: PairLogps, cfg) -> jax.Array:
    """Smoothed −log σ(β δ_k), δ = sort(log πθ(y_w) − log πθ(y_l)) − sort(log π_ref(y_w) − log π_ref(y_l)).

    AOT (paired), Melnyk et al., arXiv 2406.05882 (TRL ``aot``, label smoothing ε). COUPLES THE PAIRS of
    a micro-batch: entry k is the k-th order statistic, not pair k, so its value depends on the
    micro-batch (gradient accumulation or padding pairs change it, as in TRL).
    """
    policy_gap = logps.policy_chosen - logps.policy_rejected
    if logps.reference_chosen is None:
        reference_gap = jnp.zeros_like(policy_gap)
    else:
        reference_gap = logps.reference_chosen - logps.reference_rejected
    delta = jnp.sort(policy_gap) - jnp.sort(reference_gap)
    return smoothed_logistic_loss(cfg.beta * delta, 1.0 - cfg.label_smoothing)


@register_loss("aot_unpaired")
def aot_unpaired(logps: PairLogps, cfg) -> jax.Array:
    """Smoothed −log σ(β δ_k), δ = sort(log πθ/π_ref(y_w)) − sort(log πθ/π_ref(y_l)).

    AOT (unpaired), Melnyk et al., arXiv 2406.05882 (TRL ``aot_unpaired``). Couples the pairs of a
    micro-batch like ``aot``.
    """
    chosen, rejected = logps.log_ratios()
    return smoothed_logistic_loss(cfg.beta * (jnp.sort(chosen) - jnp.sort(rejected)), 1.0 - cfg.label_smoothing)
