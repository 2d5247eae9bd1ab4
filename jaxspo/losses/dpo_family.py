"""DPO-family losses (METHODS §1). Each returns the per-pair loss ``[B]``; β is ``cfg.beta``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxspo.losses.registry import PairLogps, register_loss


def _margin(logps: PairLogps) -> jax.Array:
    """h = log πθ/π_ref(y_w) − log πθ/π_ref(y_l), ``[B]``."""
    chosen, rejected = logps.log_ratios()
    return chosen - rejected


@register_loss("dpo")
def dpo(logps: PairLogps, cfg) -> jax.Array:
    """−log σ(β h) (Rafailov et al., 2023)."""
    return -jax.nn.log_sigmoid(cfg.beta * _margin(logps))


@register_loss("ipo")
def ipo(logps: PairLogps, cfg) -> jax.Array:
    """(h − 1/(2β))² on summed log-probs (Azar et al., 2023; TRL length-normalises h instead)."""
    return (_margin(logps) - 1.0 / (2.0 * cfg.beta)) ** 2


@register_loss("sft", needs_reference=False)
def sft(logps: PairLogps, cfg) -> jax.Array:
    """Token-mean negative log-likelihood of the chosen response."""
    return -logps.policy_chosen / jnp.maximum(logps.chosen_length, 1.0)
