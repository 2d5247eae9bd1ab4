"""Loss registry: name → pure function of per-pair log-probabilities.

A loss takes a :class:`PairLogps` and the :class:`~jaxspo.config.LossConfig` and returns the
per-pair loss ``[B]``. Register your own with ``@register_loss("name")`` in any module imported
before training; it then trains, shards and logs like a built-in.
"""

from jaxspo.losses.registry import LossSpec, PairLogps, get_loss, loss_names, register_loss
from jaxspo.losses.objective import preference_objective
from jaxspo.losses import dpo_family  # noqa: F401  (registers the built-in losses)

__all__ = ["LossSpec", "PairLogps", "get_loss", "loss_names", "register_loss", "preference_objective"]
