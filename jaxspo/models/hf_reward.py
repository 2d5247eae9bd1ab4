"""A Hugging Face ``*ForSequenceClassification`` reward model on our decoder: the decoder's final-normed stream
at the last non-padding token times the ``score`` head, as transformers computes it (one output, no bias).

Loaded with the same rules as every HF folder (:mod:`jaxspo.models.hf_io`: safetensors only, pickle refused,
transformers' config classes without remote code), for the architectures our decoder supports; the decoder's
parameters are placed on their mesh shards, the ``[D]`` head replicated.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspo.errors import CheckpointError
from jaxspo.models.config import ModelConfig
from jaxspo.models.hf_config import read_hf_config
from jaxspo.models.hf_io import SafetensorsFolder
from jaxspo.inference_model import load_inference_model
from jaxspo.sharding import Rules
from jaxspo.train.logprobs import positions_from_valid

SCORE_HEAD = "score.weight"  # [num_labels, D] in every supported *ForSequenceClassification class
CLASSIFIER_SUFFIX = "ForSequenceClassification"


@dataclasses.dataclass(frozen=True)
class RewardModel:
    """Decoder ``graphdef``/``params`` (on the mesh), the score ``head [D]`` and the ``pad_id`` whose last
    non-occurrence marks the token scored (None: the last token)."""

    graphdef: nnx.GraphDef
    params: nnx.State
    head: jax.Array
    pad_id: int | None
    cfg: ModelConfig


def check_reward_folder(folder: str | Path) -> int | None:
    """The folder's ``pad_token_id`` after checking that config.json describes a one-output sequence classifier
    of a supported architecture; CheckpointError (one line, naming the file) otherwise."""
    hf = read_hf_config(folder)  # refuses pickle-only folders and unsupported model_type
    where = Path(folder) / "config.json"
    architectures = json.loads(where.read_text()).get("architectures") or []
    if not any(str(name).endswith(CLASSIFIER_SUFFIX) for name in architectures):
        raise CheckpointError(
            f"{where}: architectures {architectures} has no *{CLASSIFIER_SUFFIX} class; --reward-model must be a "
            "sequence-classification reward model folder (e.g. "
            f"{hf.model_type.capitalize()}{CLASSIFIER_SUFFIX} with num_labels=1)"
        )
    if hf.num_labels != 1:
        raise CheckpointError(
            f"{where}: num_labels is {hf.num_labels}; a reward model has one output (num_labels=1): "
            "give a reward model folder"
        )
    return hf.pad_token_id


def load_reward_model(
    folder: str | Path, mesh: Mesh, rules: Rules, dtype: str = "float32", pad_id: int | None = None
) -> RewardModel:
    """The folder's reward model on ``mesh``. ``pad_id``: used when config.json sets no ``pad_token_id``
    (the tokenizer's, as transformers' pipelines fill it in)."""
    config_pad = check_reward_folder(folder)
    # a classifier's folder holds no LM head
    model = load_inference_model(folder, mesh, rules, dtype, heads=frozenset({SCORE_HEAD}), lm_head=False)
    with SafetensorsFolder(folder) as ckpt:
        head = ckpt.read(SCORE_HEAD, (1, model.cfg.hidden_size))[0].astype(model.cfg.param_dtype)
    head = jax.device_put(head, NamedSharding(mesh, PartitionSpec()))
    pad = config_pad if config_pad is not None else pad_id
    return RewardModel(model.graphdef, model.params, head, pad, model.cfg)


def last_scored_token(ids: list[int], pad_id: int | None) -> int:
    """transformers' choice of the token a sequence classifier reads: the last one that is not ``pad_id``
    (0 if all are), or the last one when there is no pad id."""
    if pad_id is None:
        return len(ids) - 1
    kept = [t for t, token in enumerate(ids) if token != pad_id]
    return kept[-1] if kept else 0


def rewards(
    graphdef: nnx.GraphDef, params: nnx.State, head: jax.Array, tokens: jax.Array, valid: jax.Array, last: jax.Array
) -> jax.Array:
    """Rewards ``[B]`` float32 for ``tokens/valid [B, T]`` (right-padded) read at positions ``last [B]``."""
    model = nnx.merge(graphdef, params)
    stream = model.features(tokens, positions_from_valid(valid), valid)  # [B, T, D]
    picked = jnp.take_along_axis(stream, last[:, None, None], axis=1)[:, 0]  # [B, D]
    return jnp.einsum("bd,d->b", picked, head.astype(picked.dtype), preferred_element_type=jnp.float32)


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``tokens [N, T]`` int32 and ``valid [N, T]`` bool, each sequence left-aligned, T the longest."""
    width = max(map(len, sequences))
    tokens = np.full((len(sequences), width), pad_id, np.int32)
    valid = np.zeros((len(sequences), width), bool)
    for row, ids in enumerate(sequences):
        tokens[row, : len(ids)], valid[row, : len(ids)] = ids, True
    return tokens, valid
