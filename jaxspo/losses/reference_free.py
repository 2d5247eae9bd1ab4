"""Reference-free losses: SFT, SimPO, CPO, ORPO (docs/methods/dpo.md). They never read π_ref.

Each returns ``(loss [B], metrics)``; the metrics use TRL's names and, like TRL's CPO and ORPO
trainers, report rewards as β·log πθ (β·token-mean log πθ for SimPO and ORPO).

TRL's NLL terms (``sft`` in DPOTrainer, CPO's and ORPO's ``nll_loss``) are token means over the whole
batch, and ORPO's also counts prompt tokens; here the NLL is the token mean of each chosen
response (:func:`chosen_nll`), so it is per pair and exact under gradient accumulation. The two
agree when the chosen responses have equal lengths (and, for ORPO, no prompt tokens).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxspo.losses.dpo_family import logistic_loss
from jaxspo.losses.registry import PairLogps, PairMetrics, hyperparameter, register_loss

_LOG_HALF = -math.log(2.0)


def chosen_nll(logps: PairLogps) -> jax.Array:
    """Token-mean negative log-likelihood of the chosen response, −log πθ(y_w)/|y_w|, ``[B]``."""
    return -logps.mean_logps()[0]


def _policy_rewards(beta: float, chosen: jax.Array, rejected: jax.Array) -> dict[str, jax.Array]:
    return {
        "rewards/chosen": beta * jax.lax.stop_gradient(chosen),
        "rewards/rejected": beta * jax.lax.stop_gradient(rejected),
    }


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 − eˣ) for x < 0, stable on both sides of −log 2 and with finite gradients."""
    far = x < _LOG_HALF
    x = jnp.minimum(x, -1e-7)  # x = 0 (a certain response) would give −∞
    return jnp.where(far, jnp.log1p(-jnp.exp(jnp.where(far, x, -1.0))), jnp.log(-jnp.expm1(jnp.where(far, -0.5, x))))


@dataclasses.dataclass(frozen=True)
class SftParams:
    """``loss.params.sft``."""

    # pair: each chosen response's own token mean (exact under gradient accumulation); batch: one mean over every
    # chosen token of the micro-batch, as TRL's sft
    token_mean: str = hyperparameter("pair", choices=("pair", "batch"))


@register_loss("sft", needs_reference=False, params=SftParams)
def sft(logps: PairLogps, cfg, params: SftParams) -> jax.Array:
    """−log πθ(y_w)/|y_w|: token-mean NLL of the chosen response; with ``token_mean: batch``, −log πθ(y_w)·B/Σ|y_w|
    over the micro-batch's B pairs, whose mean over pairs is TRL's ``sft`` (−Σ log πθ(y_w) / Σ |y_w|)."""
    if params.token_mean == "batch":
        lengths = logps.chosen_length
        return -logps.policy_chosen * lengths.shape[0] / jnp.maximum(lengths.sum(), 1.0)
    return chosen_nll(logps)


@dataclasses.dataclass(frozen=True)
class SimpoParams:
    """``loss.params.simpo``."""

    gamma: float = 0.5  # target reward margin γ (TRL default)


@register_loss("simpo", needs_reference=False, params=SimpoParams)
def simpo(logps: PairLogps, cfg, params: SimpoParams) -> tuple[jax.Array, PairMetrics]:
    """−log σ(β/|y_w| log πθ(y_w) − β/|y_l| log πθ(y_l) − γ), γ = ``params.gamma``.

    SimPO, Meng et al., arXiv 2405.14734 (TRL CPOTrainer ``loss_type="simpo"``, ``cpo_alpha=0``).
    The paper uses β ≈ 2–2.5, so set ``loss.beta`` accordingly.
    """
    chosen, rejected = logps.mean_logps()
    loss = logistic_loss(cfg.beta * (chosen - rejected) - params.gamma)
    return loss, _policy_rewards(cfg.beta, chosen, rejected)


@dataclasses.dataclass(frozen=True)
class CpoParams:
    """``loss.params.cpo``."""

    nll_weight: float = hyperparameter(1.0, ge=0.0)  # λ of the chosen NLL (TRL cpo_alpha)


@register_loss("cpo", needs_reference=False, params=CpoParams)
def cpo(logps: PairLogps, cfg, params: CpoParams) -> tuple[jax.Array, PairMetrics]:
    """−log σ(β[log πθ(y_w) − log πθ(y_l)]) + λ·NLL(y_w), λ = ``params.nll_weight`` (TRL ``cpo_alpha``).

    CPO, Xu et al., arXiv 2401.08417, Eq. 3 + the BC regulariser; NLL is :func:`chosen_nll`.
    """
    nll = chosen_nll(logps)
    loss = logistic_loss(cfg.beta * (logps.policy_chosen - logps.policy_rejected)) + params.nll_weight * nll
    return loss, {
        "nll_loss": jax.lax.stop_gradient(nll),
        **_policy_rewards(cfg.beta, logps.policy_chosen, logps.policy_rejected),
    }


@dataclasses.dataclass(frozen=True)
class OrpoParams:
    """``loss.params.orpo``."""

    odds_ratio_weight: float = hyperparameter(0.1, ge=0.0)  # λ of the odds-ratio term (TRL ORPOConfig.beta)


@register_loss("orpo", needs_reference=False, params=OrpoParams)
def orpo(logps: PairLogps, cfg, params: OrpoParams) -> tuple[jax.Array, PairMetrics]:
    """NLL(y_w) − λ log σ(log odds(y_w) − log odds(y_l)), odds(y) = p/(1−p), p = exp(token-mean log πθ(y)).

    ORPO, Hong et al., arXiv 2403.07691, Eqs. 4–7; λ = ``params.odds_ratio_weight`` (TRL ORPOConfig ``beta``).
    Extra metrics as TRL: ``log_odds_ratio`` = log σ(log-odds difference), ``log_odds_chosen`` = the difference.
    """
    chosen, rejected = logps.mean_logps()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    ratio = jax.nn.log_sigmoid(log_odds)
    nll = chosen_nll(logps)
    metrics = {"nll_loss": nll, "log_odds_ratio": ratio, "log_odds_chosen": log_odds}
    metrics = {name: jax.lax.stop_gradient(value) for name, value in metrics.items()}
    return nll - params.odds_ratio_weight * ratio, metrics | _policy_rewards(cfg.beta, chosen, rejected)
