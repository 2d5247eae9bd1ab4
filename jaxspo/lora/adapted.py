"""The adapted view of a phase (LoRA): the base is a frozen input of the step, only the adapters are trained.

The step's second argument ``frozen`` is ``{"base": base params, "reference": params or None}``; checkpoints
carry the base record (:mod:`jaxspo.lora.base`) and resume checks it; the export merges the adapters into the
base (:mod:`jaxspo.lora.merge`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxspo.distributed import is_writer
from jaxspo.lora.base import base_record, check_base, write_base_record
from jaxspo.lora.merge import merged_params
from jaxspo.lora.model import AdaptedModel
from jaxspo.objectives import build_objective


class AdaptedView:
    """A :class:`~jaxspo.lora.views.ModelView`: fresh adapters on ``base``; ``reference`` is evaluated against
    (and held in the step under ``loss.reference: resident``); ``record`` is the base's record."""

    frozen_base = True  # the policy's base weights get no gradient

    def __init__(
        self,
        cfg,
        mesh: Mesh,
        base: nnx.State,
        reference: nnx.State,
        record: dict[str, Any],
        frozen: int = 0,
        seed: int | None = None,
    ):
        """``frozen``, ``seed``: a stacked sequential stage's earlier adapters (held in ``base``) and its adapters' init
        seed (default ``trainer.seed``)."""
        self.model = AdaptedModel.build(cfg.model, cfg.lora, cfg.loss.reference, mesh, cfg.mesh.rules, frozen)
        self.initial = self.model.init_adapters(cfg.trainer.seed if seed is None else seed)
        self.base, self.reference, self.record = base, reference, record
        resident = cfg.loss.reference == "resident" and build_objective(cfg).reads_frozen  # the KL regulariser's too
        self.frozen = {"base": base, "reference": reference if resident else None}  # the step's second argument

    @classmethod
    def started(cls, run: Any, reference: nnx.State) -> "AdaptedView":
        """One adapter on π_0 = ``run.params``; writes its base record to ``RUN_DIR/base.json``."""
        view = cls(run.cfg, run.mesh, run.params, reference, base_record(run.cfg, run.run_dir, run.params))
        if is_writer():
            write_base_record(view.record, run.run_dir)
        return view

    @property
    def eval_graphdef(self) -> nnx.GraphDef:
        return self.model.eval_graphdef

    @property
    def abstract(self) -> nnx.State:
        return self.model.abstract_adapters

    @property
    def sharding(self) -> Any:
        return self.model.adapter_sharding

    def eval_states(self, adapters: nnx.State) -> tuple[nnx.State, nnx.State]:
        """(policy, reference) for ``model.eval_graphdef``: base + adapters, and the reference + zero adapters."""
        zeros = jax.tree.map(jnp.zeros_like, adapters)
        keys = jax.tree.map(lambda k: jnp.zeros(k.shape, k.dtype), self.model.abstract_keys)  # unused: dropout is off
        return nnx.merge_state(self.base, adapters, keys), nnx.merge_state(self.reference, zeros, keys)

    def full_params(self, adapters: nnx.State) -> nnx.State:
        """The base with ``adapters`` merged in."""
        return merged_params(self.model, adapters, self.base)

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"base": self.record}  # checkpoints hold adapters, tied to this base

    def check_checkpoint(self, extras: dict[str, Any], where: str) -> None:
        check_base(self.record, extras.get("base", {"sha256": "(none)"}), where)
