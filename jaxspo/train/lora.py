"""LoRA training: the base weights are a frozen input of the step, only the adapters are trained.

:class:`AdaptedModel` is the step's model object (see :func:`jaxspo.train.step.make_train_step`): the train
state's params are the adapters (so the optimizer state and the gradients are adapter-sized), and the
step's second, non-donated argument ``frozen`` is ``{"base": base params, "reference": params or None}``.
With ``loss.reference: adapter_off`` the reference forward is the base graph (no adapters) on the same
``frozen["base"]`` arrays, so no second copy of the model exists; ``resident`` holds a separate copy in
``frozen["reference"]``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from jax.sharding import Mesh

from jaxspo.checkpoint import restore_params
from jaxspo.errors import BaseChangedError
from jaxspo.models import Decoder, ModelConfig
from jaxspo.models.hf_config import CheckpointError
from jaxspo.models.hf_io import load_params
from jaxspo.models.lora import LoRAConfig, LoRADropoutKey, LoRAParam, LoRASpec
from jaxspo.sharding import Rules
from jaxspo.train.reference_cache import hash_params
from jaxspo.train.state import init_params, param_shardings
from jaxspo.objectives import in_step_reference


def _split(model: Decoder) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
    """graphdef, adapters, dropout keys, base params."""
    return nnx.split(model, LoRAParam, LoRADropoutKey, nnx.Param)


def dropout_keys(abstract_keys: nnx.State, rng: jax.Array | None) -> nnx.State:
    """Fresh dropout key data for every adapter and layer (``[L, 2]`` uint32 leaves) from key data ``rng``."""
    leaves, treedef = jax.tree.flatten(abstract_keys)
    if not leaves:
        return abstract_keys
    if rng is None:
        raise ValueError("LoRA dropout needs a PRNG key in the step")
    keys = jax.random.split(jax.random.wrap_key_data(rng), len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.key_data(jax.random.split(k, leaf.shape[0])) for k, leaf in zip(keys, leaves)]
    )


@dataclasses.dataclass(frozen=True)
class AdaptedModel:
    """Base decoder + LoRA adapters; the policy/reference views the train step and evaluation need.

    ``graphdef`` trains (dropout on), ``eval_graphdef`` evaluates (dropout off), ``base_graphdef`` has no
    adapters. Shardings come from the logical axis names: an adapter shards like the matrix it adapts.
    """

    graphdef: nnx.GraphDef
    eval_graphdef: nnx.GraphDef
    base_graphdef: nnx.GraphDef
    abstract_adapters: nnx.State
    abstract_keys: nnx.State
    abstract_base: nnx.State
    adapter_sharding: Any
    base_sharding: Any
    reference_mode: str
    model_cfg: ModelConfig
    lora_cfg: LoRAConfig
    spec: LoRASpec

    @classmethod
    def build(
        cls,
        model_cfg: ModelConfig,
        lora_cfg: LoRAConfig,
        reference_mode: str,
        mesh: Mesh,
        rules: Rules,
        frozen: int = 0,
    ) -> "AdaptedModel":
        """``frozen`` > 0 (stacked sequential stages): the base also holds that many earlier stages' frozen
        adapters, and ``base_graphdef`` (the reference, π_{n−1}) applies them without the trained one."""
        spec = LoRASpec.build(model_cfg, lora_cfg, frozen)
        model = nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0), lora=spec))
        graphdef, adapters, keys, base = _split(model)
        model.eval()  # deterministic adapters: no dropout
        eval_graphdef = _split(model)[0]
        reference_spec = LoRASpec.build(model_cfg, lora_cfg, frozen, trainable=False)
        base_graphdef, _ = nnx.split(
            nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0), lora=reference_spec)), nnx.Param
        )
        return cls(
            graphdef,
            eval_graphdef,
            base_graphdef,
            adapters,
            keys,
            base,
            param_shardings(adapters, mesh, rules),
            param_shardings(base, mesh, rules),
            reference_mode,
            model_cfg,
            lora_cfg,
            spec,
        )

    def init_adapters(self, seed: int) -> nnx.State:
        """Adapters on their shards: ``a`` random, ``b`` zero (the adapted model equals the base)."""

        @functools.partial(jax.jit, out_shardings=self.adapter_sharding)
        def init() -> nnx.State:
            return _split(Decoder(self.model_cfg, rngs=nnx.Rngs(seed), lora=self.spec))[1]

        return init()

    # --- the train step's model interface (see jaxspo.train.step.FullModel) ---

    def policy(
        self, params: nnx.State, frozen: dict[str, Any], rng: jax.Array | None
    ) -> tuple[nnx.GraphDef, nnx.State]:
        return self.graphdef, nnx.merge_state(frozen["base"], params, dropout_keys(self.abstract_keys, rng))

    def reference(self, frozen: dict[str, Any]) -> tuple[nnx.GraphDef, nnx.State]:
        if self.reference_mode == "resident":
            return self.base_graphdef, frozen["reference"]
        return self.base_graphdef, frozen["base"]  # adapter_off: the same arrays, no adapters

    def frozen_sharding(self, params_sharding: Any, uses_reference: bool) -> dict[str, Any]:
        resident = uses_reference and self.reference_mode == "resident"
        return {"base": self.base_sharding, "reference": self.base_sharding if resident else None}


# --- the base a run's adapters belong to: a pointer and a sha256, checked on resume and export ---

BASE_FILE = "base.json"  # RUN_DIR/base.json, next to RUN_DIR/params (the adapters)


def params_sha256(params: nnx.State) -> str:
    """sha256 of every parameter (name, dtype, shape, bytes), gathered one leaf at a time."""
    digest = hashlib.sha256()
    hash_params(digest, params)
    return digest.hexdigest()


def base_record(cfg, run_dir: Path, base: nnx.State) -> dict[str, Any]:
    """Where the base comes from — the SFT result (``checkpoints/reference``), ``model.path``, or the seeded
    random init — and its sha256."""
    if cfg.trainer.sft_steps:
        pointer = {"kind": "orbax", "path": str((run_dir / "checkpoints" / "reference").resolve())}
    elif cfg.model.path:
        pointer = {"kind": "hf", "path": str(Path(cfg.model.path).resolve())}
    else:
        pointer = {"kind": "init", "seed": cfg.trainer.seed}
    return pointer | {"sha256": params_sha256(base)}


def check_base(record: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Raises :class:`BaseChangedError` unless the base's sha256 equals the one recorded in ``where``."""
    if record["sha256"] != expected["sha256"]:
        source = expected.get("path") or f"random init (seed {expected.get('seed')})"
        raise BaseChangedError(
            f"{where} was made on a base model with sha256 {expected['sha256'][:16]}…, but the base now "
            f"({source}) has sha256 {record['sha256'][:16]}…; the adapters only fit the base they were trained on"
        )


def load_base(record: dict[str, Any], model_cfg: ModelConfig, abstract: nnx.State, sharding: Any) -> nnx.State:
    """The base params a :func:`base_record` points to, checked against its sha256."""
    if record["kind"] == "hf":
        base = load_params(record["path"], model_cfg, abstract, sharding)
    elif record["kind"] == "orbax":
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sharding)
        base = restore_params(Path(record["path"]), target)
    else:
        base = init_params(model_cfg, record["seed"], sharding)
    check_base({"sha256": params_sha256(base)}, record, "these adapters")
    return base


def write_base_record(record: dict[str, Any], run_dir: Path) -> None:
    (run_dir / BASE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_base_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / BASE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: not found; RUN_DIR/params of a LoRA run holds adapters only, and this file names their base"
        )
    return json.loads(path.read_text())


class LoRATraining:
    """The LoRA preference phase's pieces for the training loop: model, initial adapters, frozen input, base record."""

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
        resident = cfg.loss.reference == "resident" and in_step_reference(cfg.loss)
        self.frozen = {"base": base, "reference": reference if resident else None}  # the step's second argument

    def eval_states(self, adapters: nnx.State) -> tuple[nnx.State, nnx.State]:
        """(policy, reference) for ``model.eval_graphdef``: base + adapters, and the reference + zero adapters."""
        zeros = jax.tree.map(jnp.zeros_like, adapters)
        keys = jax.tree.map(lambda k: jnp.zeros(k.shape, k.dtype), self.model.abstract_keys)  # unused: dropout is off
        return nnx.merge_state(self.base, adapters, keys), nnx.merge_state(self.reference, zeros, keys)


def adapter_targets(adapters: nnx.State) -> dict[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Adapter module path (e.g. ``("layers", "attn", "q_lora")``) → the base projection(s) it updates."""
    out = {}
    for path in traverse_util.flatten_dict(nnx.to_pure_dict(adapters)):
        module, name = path[:-2], path[-2]
        projections = ("q_proj", "k_proj", "v_proj") if name == "qkv_lora" else (name.removesuffix("_lora") + "_proj",)
        out[path[:-1]] = tuple((*module, p) for p in projections)
    return out


def adapter_deltas(model: AdaptedModel, adapters: nnx.State) -> dict[tuple[str, ...], jax.Array]:
    """``scale · a b`` per adapter module, float32, stacked over layers: ``[L, *in, *out]``."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(adapters))
    scale = model.lora_cfg.scale
    out = {}
    for module in adapter_targets(adapters):
        a, b = flat[(*module, "a")].astype(jnp.float32), flat[(*module, "b")].astype(jnp.float32)
        out[module] = scale * jax.vmap(lambda x, y: jnp.tensordot(x, y, axes=1))(a, b)
    return out


def merged_params(model: AdaptedModel, adapters: nnx.State, base: nnx.State) -> nnx.State:
    """Base params with every adapted projection replaced by ``W + (alpha / r) · a b`` (computed in float32,
    stored in the base's dtype), on the base's shardings. A new copy: the base is left as it is."""

    @functools.partial(jax.jit, out_shardings=model.base_sharding)
    def merge(adapters: nnx.State, base: nnx.State) -> nnx.State:
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(base))
        targets = adapter_targets(adapters)
        for module, delta in adapter_deltas(model, adapters).items():
            parts = targets[module]
            pieces = jnp.unstack(delta, axis=2) if len(parts) > 1 else [delta]  # fused qkv: [L, D, 3, H, Hd]
            for path, piece in zip(parts, pieces):
                flat[path] = (flat[path].astype(jnp.float32) + piece).astype(flat[path].dtype)
        merged = jax.tree.map(lambda leaf: leaf, base)
        nnx.replace_by_pure_dict(merged, traverse_util.unflatten_dict(flat))
        return merged

    return merge(adapters, base)
