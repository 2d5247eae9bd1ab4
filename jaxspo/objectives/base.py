"""The Objective seam: what a train step optimises, and everything the step, the loop and the compiler ask of it.

An :class:`Objective` owns its batch type (:mod:`jaxspo.objectives.batches`) and the fields it reads, its pure
loss ``(view, params, frozen, batch, rng, aux) -> (loss sum, metrics as (sum, count))``, the step's denominator
(``count``), any auxiliary trainable state (``aux``: selfsup's classify head) and any per-step augmentation of
the batch (``augmenter``: the KL regulariser's policy samples). :func:`jaxspo.objectives.build_objective` makes
one from a config; the step (:func:`jaxspo.train.step.make_train_step`) takes it and imports none.

It also owns the host-side preparation of its rows: ``encoder(tokenizer, split)`` turns a split's rows into
the flat ``name → array`` mapping of its fields (pairs: soft labels oriented; lists: ranked; SFT: single
sequences), and its ``preparations`` add fields once the frozen reference exists (precomputed reference
log-probs, selfsup's degraded copies) and may add held-out metrics. The run and the plan ask these and hold
no branch of their own on the objective.

``view`` is a model view (:mod:`jaxspo.lora.views`): ``view.policy(params, frozen, rng)`` and
``view.reference(frozen)`` give (graph, params) pairs; ``frozen`` is the resident reference's params, LoRA's
frozen base, or None; ``rng`` is key data ``[2]`` uint32 (LoRA dropout); ``aux`` is the auxiliary state's
trainable params (or None).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxspo.objectives.batches import TypedBatch
from jaxspo.sharding import Rules

Metrics = dict[str, tuple[jax.Array, jax.Array]]
Loss = Callable[..., tuple[jax.Array, Metrics]]
Arrays = dict[str, np.ndarray]
Encode = Callable[[Sequence[Mapping[str, Any]]], Arrays]  # a split's rows -> its arrays
Encoder = Callable[[Any, str], Encode]  # (tokenizer, split) -> the split's encode
EvalMetric = Callable[[Any, Any], dict[str, float]]  # (params, reference params) -> more eval/... metrics


Frozen = tuple[nnx.GraphDef, Any]  # a frozen model as (graph, params)


@dataclasses.dataclass(frozen=True)
class StageContext:
    """The sequential stage being prepared: its 0-based ``index`` n−1, ``policy(i)``, the frozen π_i as
    (graph, params) for i = 0 … n−1 (asked for one at a time), and the ``recipe``'s config (all stages; the
    context's own config is the stage's, with its β_n)."""

    index: int
    policy: Callable[[int], Frozen]
    recipe: Any


@dataclasses.dataclass(frozen=True)
class HostContext:
    """What a host-side preparation reads: the run's config (a stage's own, with its β_n), tokenizer,
    the frozen reference's model graph and params (π_0, ``model.reference_path``'s, or a stage's π_{n−1}), the
    mesh, the held-out pairs (for its eval metrics), ``scorer(graph)``: the run's pair scorer of that graph
    (:class:`~jaxspo.train.scoring.PairScorer`, one compile per graph) and, in a sequential stage, ``stage``."""

    cfg: Any
    tokenizer: Any
    graphdef: nnx.GraphDef
    mesh: Mesh
    reference: Any
    eval_pairs: Arrays
    scorer: Callable[[nnx.GraphDef], Any]
    stage: StageContext | None = None


@dataclasses.dataclass
class Prepared:
    """What the preparations give: fields joining the train arrays and metrics joining each evaluation."""

    fields: Arrays = dataclasses.field(default_factory=dict)
    eval_metrics: list[EvalMetric] = dataclasses.field(default_factory=list)


# (context, train arrays) -> what it adds; a preparation sees the fields the earlier ones added
Preparation = Callable[[HostContext, Arrays], Prepared]


class AuxState(Protocol):
    """Trainable state beside the policy with its own optimiser, ``{"params": …, "opt_state": …}``."""

    def init(self, schedule: Any) -> dict[str, Any]: ...

    def update(self, state: dict[str, Any], grads: Any, schedule: Any) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Objective:
    """A configured objective (see the module docstring).

    ``fields``: the batch fields the loss reads; ``dims``: the batch dimensions the config fixes (selfsup's
    sides and levels, the KL samples); ``reads_frozen``: whether the step passes the frozen params to the loss
    (a reference forward in the step); ``reference_passes``: the rows the step runs the frozen reference over,
    of ``"rows"`` (the batch's sequences), ``"selfsup"`` (the degraded copies), ``"kl"`` (the KL samples);
    ``augmenter(mesh, graphdef, tokenizer, splits, shardings)`` makes a
    callable ``(step, params) -> fields`` whose arrays join each batch before the step; ``encoder`` and
    ``preparations``: the host-side preparation of its rows (see the module docstring).
    """

    name: str
    batch_type: type[TypedBatch]
    fields: tuple[str, ...]
    loss: Loss
    count: Callable[[Any], jax.Array]
    dims: Mapping[str, int] = dataclasses.field(default_factory=dict)
    reads_frozen: bool = False
    reference_passes: tuple[str, ...] = ()
    aux: AuxState | None = None
    augmenter: Callable[..., Any] | None = None
    augmented_fields: tuple[str, ...] = ()
    encoder: Encoder | None = None
    preparations: tuple[Preparation, ...] = ()

    @property
    def host_fields(self) -> tuple[str, ...]:
        """The fields the host pipeline provides (the augmenter adds the others on the device)."""
        return tuple(name for name in self.fields if name not in self.augmented_fields)

    def batch_shardings(self, mesh: Mesh, rules: Rules, batch_size: int) -> Any:
        """The typed batch of shardings the step takes (``batch_size`` pairs, lists or rows)."""
        leading = {"batch": batch_size, "rows": batch_size} | dict(self.dims)
        return self.batch_type.shardings(self.fields, mesh, rules, leading)

    def abstract_batch(self, dims: Mapping[str, int], shardings: Any = None) -> Any:
        """The typed batch of ``jax.ShapeDtypeStruct`` for the data's ``dims`` (batch, length, …) and the config's."""
        return self.batch_type.abstract(self.fields, dict(dims) | dict(self.dims), shardings)

    def batch(self, arrays: Mapping[str, Any]) -> Any:
        """The typed batch of the fields ``arrays`` holds (the host pipeline's flat mapping)."""
        return self.batch_type.from_fields({name: arrays[name] for name in self.fields if name in arrays})

    def encode(self, tokenizer: Any, split: str) -> Encode:
        """The function encoding ``split``'s rows (``"sft"``, ``"train"``, ``"eval"``) into this objective's arrays."""
        if self.encoder is None:
            raise ValueError(f"the {self.name} objective encodes no rows (it has no encoder)")
        return self.encoder(tokenizer, split)

    def prepare(self, context: HostContext, arrays: Arrays) -> Prepared:
        """Runs the preparations in order on the train ``arrays``: the fields they add and their eval metrics."""
        prepared = Prepared()
        for preparation in self.preparations:
            step = preparation(context, arrays | prepared.fields)
            prepared.fields |= step.fields
            prepared.eval_metrics += step.eval_metrics
        return prepared

    def replace(self, **changes: Any) -> Objective:
        return dataclasses.replace(self, **changes)
