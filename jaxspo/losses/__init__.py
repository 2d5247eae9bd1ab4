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

import importlib
from typing import Any

# The registry and the built-in losses load on first use (they import jax); the config's own sections
# (jaxspo.losses.kl_config, jaxspo.losses.selfsup_config) import without them.
_BUILT_INS = ("anchored", "dpo_family", "geometric", "reference_free", "sequential", "soft_spo")

__all__ = [
    "LossSpec",
    "PairLogps",
    "check_params",
    "get_loss",
    "hyperparameter",
    "loss_names",
    "offset_losses",
    "params_key",
    "ranking_losses",
    "register_loss",
    "soft_label_losses",
    "preference_objective",
]


def __getattr__(name: str) -> Any:
    """``jaxspo.losses.<name>`` of :data:`__all__`: loads the registry with every built-in registered."""
    if name not in __all__:
        raise AttributeError(f"module 'jaxspo.losses' has no attribute '{name}'")
    for module in _BUILT_INS:
        importlib.import_module(f"jaxspo.losses.{module}")
    home = "objective" if name == "preference_objective" else "registry"
    return getattr(importlib.import_module(f"jaxspo.losses.{home}"), name)
