"""A pair loss with a hyper-parameter, in one file (the example of docs/methods/custom-loss.md).

Train with it: ``loss.terms={"tests.user_losses.margin_shift:shifted_dpo": 1.0}`` and set its shift with
``loss.params."tests.user_losses.margin_shift:shifted_dpo".shift=0.5``.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxspo.losses import hyperparameter, register_loss


@dataclasses.dataclass(frozen=True)
class ShiftParams:
    """The loss's ``loss.params`` section."""

    shift: float = hyperparameter(0.0, ge=0.0)  # δ ≥ 0: the scaled margin βh asked for before the loss flattens (nats)


@register_loss("shifted_dpo", params=ShiftParams)
def shifted_dpo(logps, cfg, params: ShiftParams) -> jax.Array:
    """−log σ(βh − δ), ``[B]``: DPO that keeps pushing until βh exceeds δ = ``params.shift`` (δ = 0: DPO)."""
    return -jax.nn.log_sigmoid(cfg.beta * logps.margin() - params.shift)
