"""The step's view of the model: which (graph, params) the policy and the reference forwards use.

Every objective calls ``model.policy(params, frozen, rng)`` and ``model.reference(frozen)``, so full
fine-tuning (:class:`FullModel`) and LoRA (:class:`jaxspo.train.lora.AdaptedModel`: params are the
adapters, ``frozen`` holds the base) share one code path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class FullModel:
    """Full fine-tuning: the trained params are the whole model; ``frozen`` is the resident reference (or None)."""

    graphdef: nnx.GraphDef

    def policy(self, params: nnx.State, frozen: Any, rng: jax.Array | None) -> tuple[nnx.GraphDef, nnx.State]:
        return self.graphdef, params

    def reference(self, frozen: Any) -> tuple[nnx.GraphDef, nnx.State]:
        return self.graphdef, frozen

    def frozen_sharding(self, params_sharding: Any, uses_reference: bool) -> Any:
        return params_sharding if uses_reference else None


def as_model(model: Any) -> Any:
    """A graph definition becomes a :class:`FullModel`; a model object (policy/reference/frozen_sharding) stays."""
    return FullModel(model) if isinstance(model, nnx.GraphDef) else model
