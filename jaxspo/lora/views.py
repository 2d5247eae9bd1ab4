"""Model views: what a phase trains and how the step, evaluation, checkpoints and export see it.

The step calls ``model.policy(params, frozen, rng)`` and ``model.reference(frozen)``: :class:`FullModel` for
full fine-tuning (params are the whole model; ``frozen`` is the resident reference or None) and
:class:`jaxspo.lora.adapted.AdaptedModel` for LoRA (params are the adapters; ``frozen`` holds the base).
Around the step a phase asks a :class:`ModelView` (:class:`FullView` or
:class:`jaxspo.lora.adapted.AdaptedView`) for its trained params, frozen input, evaluation and export params
and checkpoint extras; :func:`jaxspo.lora.choose.preference_view` is the one place that picks between them.
``jaxspo compile`` builds the same phase from shapes alone as an :class:`AbstractView`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

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

    def abstract_frozen(self, params: nnx.State, frozen_sharding: Any) -> Any:
        """The step's frozen input from shapes: the whole model's ``params`` on ``frozen_sharding`` (or None)."""
        return abstract_on(params, frozen_sharding)


def abstract_on(params: nnx.State, sharding: Any) -> Any:
    """``params``' shapes as ``jax.ShapeDtypeStruct`` on ``sharding``; None when ``sharding`` is None (no input)."""
    if sharding is None:
        return None
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, sharding)


def as_model(model: Any) -> Any:
    """A graph definition becomes a :class:`FullModel`; a model object (policy/reference/frozen_sharding) stays."""
    return FullModel(model) if isinstance(model, nnx.GraphDef) else model


class ModelView(Protocol):
    """What one phase trains: the step's model, the trained params and the frozen input, and their uses."""

    model: Any  # the step's model (policy / reference / frozen_sharding)
    eval_graphdef: nnx.GraphDef  # the graph of eval_states' params (evaluation, sampling; dropout off)
    abstract: nnx.State  # the trained params' shapes
    sharding: Any  # the trained params' shardings
    initial: nnx.State  # the trained params at step 0
    frozen: Any  # the step's second, non-donated argument (None: none)
    frozen_base: bool  # the policy's own weights get no gradient (model FLOPs count no backward for them)

    def eval_states(self, trained: nnx.State) -> tuple[nnx.State, nnx.State]:
        """(policy, reference) params for ``eval_graphdef``."""

    def full_params(self, trained: nnx.State) -> nnx.State:
        """The whole model's params (the HF export)."""

    def checkpoint_extras(self) -> dict[str, Any]:
        """What each checkpoint saves besides the train state (LoRA: the base record)."""

    def check_checkpoint(self, extras: dict[str, Any], where: str) -> None:
        """Raises if a checkpoint ``where`` with ``extras`` does not fit this view."""


@dataclasses.dataclass(frozen=True)
class AbstractView:
    """A phase's model from shapes alone (``jaxspo compile``): the step's model, the whole model's and the trained
    params' shapes, the trained params' shardings, and whether the policy's base is frozen (LoRA)."""

    model: Any  # the step's model (policy / reference / frozen_sharding / abstract_frozen)
    params: nnx.State  # the whole model's parameter shapes
    abstract: nnx.State  # the trained params' shapes (the whole model, or the adapters)
    sharding: Any  # the trained params' shardings
    frozen_base: bool  # the policy's own weights get no gradient

    def frozen(self, frozen_sharding: Any) -> Any:
        """The step's frozen input from shapes, on the step's ``reference_sharding``."""
        return self.model.abstract_frozen(self.params, frozen_sharding)


@dataclasses.dataclass(frozen=True)
class FullView:
    """Full fine-tuning: the whole model trains from ``initial``; ``reference`` is evaluated against."""

    graphdef: nnx.GraphDef
    abstract: nnx.State
    sharding: Any
    initial: nnx.State
    reference: nnx.State | None = None
    frozen: Any = None
    frozen_base: bool = False

    @classmethod
    def of(cls, run: Any, reference: Any = None, frozen: Any = None) -> "FullView":
        """The view of ``run``'s model, trained from ``run.params``."""
        return cls(run.graphdef, run.abstract_params, run.param_sharding, run.params, reference, frozen)

    @property
    def model(self) -> FullModel:
        return FullModel(self.graphdef)

    @property
    def eval_graphdef(self) -> nnx.GraphDef:
        return self.graphdef

    def eval_states(self, trained: nnx.State) -> tuple[nnx.State, nnx.State]:
        return trained, self.reference

    def full_params(self, trained: nnx.State) -> nnx.State:
        return trained

    def checkpoint_extras(self) -> dict[str, Any]:
        return {}

    def check_checkpoint(self, extras: dict[str, Any], where: str) -> None:
        return None
