"""The adapted model: the base weights are a frozen input of the step, only the adapters are trained.

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
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxspo.models import Decoder, ModelConfig
from jaxspo.lora.adapters import LoRAConfig, LoRADropoutKey, LoRAParam, LoRASpec
from jaxspo.lora.views import abstract_on
from jaxspo.sharding import Rules
from jaxspo.train.state import param_shardings


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

    # --- the train step's model interface (see jaxspo.lora.views.FullModel) ---

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

    def abstract_frozen(self, params: nnx.State, frozen_sharding: dict[str, Any]) -> dict[str, Any]:
        """The step's frozen input from shapes: the base ``params`` under each key of ``frozen_sharding`` that
        holds a sharding (None stays None)."""
        return {key: abstract_on(params, sharding) for key, sharding in frozen_sharding.items()}
