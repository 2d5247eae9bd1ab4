"""A Hugging Face folder's model loaded for inference onto a device mesh: no optimiser, no reference.

``jaxspo score`` (log-probs under a causal LM) and ``jaxspo label`` (rewards from a sequence classifier)
load their model through :func:`load_inference_model`: the folder's config.json through transformers'
config classes (:func:`jaxspo.models.hf_config.model_config_from_hf`), safetensors weights only
(:func:`jaxspo.models.hf_io.load_params`), each parameter placed on its mesh shards by the logical rules.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx
from jax.sharding import Mesh

from jaxspo.models.config import ModelConfig
from jaxspo.models.hf_config import model_config_from_hf
from jaxspo.models.hf_io import load_params
from jaxspo.sharding import Rules
from jaxspo.train.state import abstract_model, param_shardings


@dataclasses.dataclass(frozen=True)
class InferenceModel:
    """The model's config, graph definition and parameters (on the mesh)."""

    cfg: ModelConfig
    graphdef: nnx.GraphDef
    params: nnx.State


def load_inference_model(
    folder: str | Path,
    mesh: Mesh,
    rules: Rules,
    dtype: str = "float32",
    *,
    heads: frozenset[str] = frozenset(),
    lm_head: bool = True,
) -> InferenceModel:
    """The decoder of ``folder`` in ``dtype`` (compute and parameters) on ``mesh``. ``heads``: tensor names of
    extra heads the folder holds beside the decoder (left for the caller to read); ``lm_head=False`` for a
    folder without a language-model head (a classifier): the embedding is then read as tied."""
    cfg = model_config_from_hf(folder, ModelConfig(dtype=dtype, param_dtype=dtype))
    if not lm_head:
        cfg = dataclasses.replace(cfg, tie_embeddings=True)
    graphdef, abstract = abstract_model(cfg)
    params = load_params(folder, cfg, abstract, param_shardings(abstract, mesh, rules), heads=heads)
    return InferenceModel(cfg, graphdef, params)
