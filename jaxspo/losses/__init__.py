"""Loss registry: name → pure function of per-pair log-probabilities.

A loss takes a :class:`PairLogps` and the :class:`~jaxspo.config.LossConfig` (plus its own params
object when registered with ``params=``, read from ``loss.params.<name>``) and returns the per-pair loss
``[B]`` (or ``(loss, per-pair metrics)``). Register your own with
``@register_loss("name")`` in any module imported before training, or name it
``"package.module:function"`` in ``loss.terms``; it then trains, shards and logs like a built-in.
Built-in families: :mod:`~jaxspo.losses.dpo_family`, :mod:`~jaxspo.losses.anchored`,
:mod:`~jaxspo.losses.reference_free`, :mod:`~jaxspo.losses.geometric`, :mod:`~jaxspo.losses.soft_spo`,
:mod:`~jaxspo.losses.sequential`.
"""

from jaxspo.losses.registry import (
    LossSpec,
    PairLogps,
    check_params,
    get_loss,
    hyperparameter,
    loss_names,
    offset_losses,
    params_key,
    register_loss,
    soft_label_losses,
)
from jaxspo.losses.objective import preference_objective
from jaxspo.losses import anchored, dpo_family, geometric, reference_free, sequential, soft_spo  # noqa: F401  (register the built-ins)

__all__ = [
    "LossSpec",
    "PairLogps",
    "check_params",
    "get_loss",
    "hyperparameter",
    "loss_names",
    "offset_losses",
    "params_key",
    "register_loss",
    "soft_label_losses",
    "preference_objective",
]
