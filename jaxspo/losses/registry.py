"""The per-pair inputs every loss sees, and the name → loss registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import struct


@struct.dataclass
class PairLogps:
    """Per-pair sequence log-probabilities (sums over response tokens, nats) and pair fields.

    All arrays are ``[B]`` float32. ``reference_*`` are None for reference-free runs.
    """

    policy_chosen: jax.Array
    policy_rejected: jax.Array
    reference_chosen: jax.Array | None
    reference_rejected: jax.Array | None
    chosen_length: jax.Array  # response tokens counted in policy_chosen
    rejected_length: jax.Array
    soft_label: jax.Array  # p̂ = P(chosen ≻ rejected); 1.0 where the data has none

    def log_ratios(self) -> tuple[jax.Array, jax.Array]:
        """log πθ/π_ref for chosen and rejected, ``[B]`` each (the policy logps alone if reference-free)."""
        if self.reference_chosen is None:
            return self.policy_chosen, self.policy_rejected
        return self.policy_chosen - self.reference_chosen, self.policy_rejected - self.reference_rejected


LossFn = Callable[[PairLogps, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss: the function and whether it needs reference log-probs."""

    name: str
    fn: LossFn
    needs_reference: bool


_REGISTRY: dict[str, LossSpec] = {}


def register_loss(name: str, *, needs_reference: bool = True) -> Callable[[LossFn], LossFn]:
    """Decorator registering ``fn(logps: PairLogps, cfg: LossConfig) -> per-pair loss [B]``."""

    def decorate(fn: LossFn) -> LossFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"loss '{name}' is already registered by {_REGISTRY[name].fn.__module__}")
        _REGISTRY[name] = LossSpec(name, fn, needs_reference)
        return fn

    return decorate


def get_loss(name: str) -> LossSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown loss '{name}'; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def loss_names() -> list[str]:
    return sorted(_REGISTRY)
