"""Hugging Face folders in and out: safetensors → parameters on their mesh shards, parameters → HF folder.

Loading reads one tensor at a time with ``safetensors.safe_open`` and copies only the slices that this
host's devices hold into per-shard buffers, so no host ever holds the whole model (nor, for a sharded
parameter, the whole parameter). Pickle checkpoints are refused. Every problem raises
:class:`CheckpointError` naming the file and the tensor.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx, traverse_util
from jax.experimental import multihost_utils
from jax.sharding import Sharding
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxspo.models.config import ModelConfig
from jaxspo.models.hf_config import CheckpointError, check_folder, hf_config_from_model, refuse_pickle
from jaxspo.models.hf_weights import IGNORED, ParamPath, TensorMap, TensorMaps, tensor_maps

_FLOAT_DTYPES = ("BF16", "F16", "F32")  # safetensors names of the dtypes read
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"


class SafetensorsFolder(contextlib.AbstractContextManager):
    """The tensors of an HF folder (``model.safetensors`` or a sharded index), opened lazily, read one by one."""

    def __init__(self, folder: str | Path):
        folder = check_folder(folder)
        index, single = folder / INDEX_FILE, folder / SINGLE_FILE
        self._handles: dict[Path, Any] = {}
        if index.is_file():
            self.source = index
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index}: not a safetensors index ({err!r})") from None
            self.files = {name: folder / file for name, file in weight_map.items()}
            for file in sorted(set(self.files.values())):
                if not file.is_file():
                    raise CheckpointError(f"{index}: lists {file.name}, which does not exist")
        elif single.is_file():
            self.source = single
            self.files = {name: single for name in self._open(single).keys()}
        else:
            for path in sorted(folder.iterdir()):
                refuse_pickle(path)
            raise CheckpointError(f"{folder}: has neither {SINGLE_FILE} nor {INDEX_FILE}")

    def _open(self, file: Path) -> Any:
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(str(file), framework="numpy")
            except Exception as err:  # safetensors raises its own error types for corrupt headers
                raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None
        return self._handles[file]

    def read(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor ``name``, checked against the ``shape`` that config.json implies and a float dtype."""
        file = self.files[name]
        handle = self._open(file)
        if name not in handle.keys():
            raise CheckpointError(f"{file}: tensor {name!r} is listed in {self.source.name} but missing from the file")
        view = handle.get_slice(name)
        if tuple(view.get_shape()) != tuple(shape):
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {tuple(view.get_shape())} but config.json implies {tuple(shape)}"
            )
        if view.get_dtype() not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"{file}: tensor {name!r} has dtype {view.get_dtype()}; expected one of {list(_FLOAT_DTYPES)}"
            )
        return handle.get_tensor(name)

    def __exit__(self, *exc) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()


class _LocalShards:
    """Host buffers for the shards of one parameter that this process's devices hold, filled slice by slice."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, sharding: Sharding):
        self.shape, self.sharding = shape, sharding
        self.devices = {
            device: tuple(s.indices(n)[:2] for s, n in zip(index, shape))
            for device, index in sharding.addressable_devices_indices_map(shape).items()
        }
        self.buffers = {
            bounds: np.empty([hi - lo for lo, hi in bounds], dtype) for bounds in set(self.devices.values())
        }

    def fill(self, value: np.ndarray, layer: int | None) -> None:
        """Writes ``value`` (the whole parameter, or its slice ``layer`` of the leading axis) into the shards."""
        for bounds, buffer in self.buffers.items():
            inner = tuple(slice(lo, hi) for lo, hi in bounds[0 if layer is None else 1 :])
            if layer is None:
                buffer[...] = value[inner]
            elif bounds[0][0] <= layer < bounds[0][1]:
                buffer[layer - bounds[0][0]] = value[inner]

    def to_array(self) -> jax.Array:
        arrays = [jax.device_put(self.buffers[bounds], device) for device, bounds in self.devices.items()]
        return jax.make_array_from_single_device_arrays(self.shape, self.sharding, arrays)


def _flat(tree: Any) -> dict[ParamPath, Any]:
    return traverse_util.flatten_dict(nnx.to_pure_dict(tree))


def _maps_for(cfg: ModelConfig, names: set[str]) -> TensorMaps:
    """Tensor maps; original GPT-2 files name their tensors without the ``transformer.`` prefix."""
    prefix = "" if cfg.arch == "gpt2" and "wte.weight" in names else "transformer."
    return tensor_maps(cfg, prefix)


def _check_names(
    ckpt: SafetensorsFolder, maps: TensorMaps, cfg: ModelConfig, heads: frozenset[str] = frozenset()
) -> None:
    """Every mapped tensor present, and nothing else but ``heads`` (read by the caller) and ignorable buffers."""
    expected = {m.name(i) for m in maps for i in (range(cfg.num_layers) if m.per_layer else [None])} | heads
    missing = sorted(expected - set(ckpt.files))
    if missing:
        raise CheckpointError(f"{ckpt.source}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    tolerated = {"lm_head.weight"} if cfg.tie_embeddings else set()  # a tied head may be stored; HF ignores it
    unexpected = sorted(n for n in set(ckpt.files) - expected - tolerated if not IGNORED.search(n))
    if unexpected:
        name = unexpected[0]
        raise CheckpointError(
            f"{ckpt.files[name]}: unexpected tensor {name!r} for a {cfg.arch!r} model with this config.json "
            f"({len(unexpected)} unexpected in all)"
        )


def load_params(
    folder: str | Path, cfg: ModelConfig, abstract: nnx.State, shardings: Any, heads: frozenset[str] = frozenset()
) -> nnx.State:
    """Parameters of the HF folder placed on ``shardings``, with ``abstract``'s structure (from ``abstract_model``).

    ``cfg`` must come from :func:`jaxspo.models.hf_config.model_config_from_hf` on the same folder.
    Tensors are cast to ``cfg.param_dtype``. ``heads``: tensors of a task head (e.g. ``score.weight``) that
    the folder must hold besides the decoder's; the caller reads them with :class:`SafetensorsFolder`.
    """
    shapes, placements = _flat(abstract), _flat(shardings)
    loaded: dict[ParamPath, jax.Array] = {}
    with SafetensorsFolder(folder) as ckpt:
        maps = _maps_for(cfg, set(ckpt.files))
        _check_names(ckpt, maps, cfg, heads)
        for m in maps:
            targets = [_LocalShards(shapes[p].shape, shapes[p].dtype, placements[p]) for p in m.ours]
            layer_shapes = [m.layer_shape(shapes[p].shape) for p in m.ours]
            for layer in range(cfg.num_layers) if m.per_layer else [None]:
                tensor = ckpt.read(m.name(layer), m.hf_shape(layer_shapes))
                for target, part in zip(targets, m.to_ours(tensor, layer_shapes)):
                    target.fill(part, layer)
            loaded.update({p: target.to_array() for p, target in zip(m.ours, targets)})
    missing = sorted(set(shapes) - set(loaded))
    if missing:  # a map list out of step with the decoder: a bug, not a user error
        raise RuntimeError(f"no HF tensor maps to parameter {'.'.join(missing[0])}")
    state = jax.tree.map(lambda leaf: leaf, abstract)  # fresh Variables: the caller's abstract state stays abstract
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(loaded))
    return state


def load_tokenizer(folder: str | Path) -> transformers.PreTrainedTokenizerBase:
    """The folder's tokenizer (and chat template) via transformers; pad defaults to EOS when it has none."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: cannot load its tokenizer: {err}") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _host_value(param: jax.Array, layer: int | None) -> np.ndarray:
    """One parameter (or one layer slice of it) gathered to every host as numpy."""
    value = param if layer is None else param[layer]
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def _entries(maps: TensorMaps, num_layers: int) -> Iterator[tuple[TensorMap, int | None]]:
    """Tensors in HF order: embeddings, then layer by layer, then the final ones."""
    yield from ((m, None) for m in maps.embeddings)
    yield from ((m, i) for i in range(num_layers) for m in maps.layers)
    yield from ((m, None) for m in maps.final)


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``"5GB"``, ``"200MB"``, ``"64KiB"`` or ``"1000"`` (decimal units like HF)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(text), flags=re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"size {text!r} is not a positive size such as '5GB', '200MB' or '64KiB'")
    return int(float(match[1]) * _UNITS[(match[2] or "B").upper()])


def _shard_plan(sizes: list[int], max_bytes: int) -> list[list[int]]:
    """Consecutive groups of tensor indices, each under ``max_bytes`` unless a single tensor is larger."""
    groups, total = [[]], 0
    for index, size in enumerate(sizes):
        if groups[-1] and total + size > max_bytes:
            groups, total = groups + [[]], 0
        groups[-1].append(index)
        total += size
    return groups


def _token_ids(cfg: ModelConfig, tokenizer: transformers.PreTrainedTokenizerBase) -> dict[str, Any]:
    """bos/eos/pad ids: the source config.json's where it is still readable and sets them (it may list
    several EOS ids), else the tokenizer's."""
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    source = Path(cfg.path) / "config.json" if cfg.path else None
    raw = json.loads(source.read_text()) if source is not None and source.is_file() else {}
    return {key: raw[key] if raw.get(key) is not None else getattr(tokenizer, key) for key in keys}


def save_hf(
    params: nnx.State,
    cfg: ModelConfig,
    tokenizer: transformers.PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    dtype: str = "",
    max_shard_size: str = "5GB",
) -> Path:
    """Writes an HF folder that ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer`` load.

    config.json, generation_config.json, tokenizer files, and safetensors in HF tensor order: one
    ``model.safetensors``, or ``model-0000k-of-0000n.safetensors`` shards of at most ``max_shard_size``
    (e.g. "5GB"; see :func:`parse_size`) plus ``model.safetensors.index.json``; weight files already in
    ``out_dir`` are removed first. ``dtype`` "" keeps the parameters' dtype. Host memory holds one tensor
    plus one shard. Every process must call it; process 0 writes.
    """
    out_dir = Path(out_dir)
    flat = _flat(params)
    dtype = jnp.dtype(dtype or next(iter(flat.values())).dtype)
    hf_config = hf_config_from_model(cfg, dtype.name, _token_ids(cfg, tokenizer))
    entries = list(_entries(tensor_maps(cfg), cfg.num_layers))
    itemsize = dtype.itemsize
    sizes = [math.prod(m.hf_shape([m.layer_shape(flat[p].shape) for p in m.ours])) * itemsize for m, _ in entries]
    groups = _shard_plan(sizes, parse_size(max_shard_size))
    n = len(groups)
    names = [SINGLE_FILE] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    writer = jax.process_index() == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*out_dir.glob("model*.safetensors"), out_dir / INDEX_FILE]:
            stale.unlink(missing_ok=True)
    weight_map = {}
    for file, group in zip(names, groups):
        tensors = {}
        for m, layer in (entries[k] for k in group):
            tensors[m.name(layer)] = m.to_hf([_host_value(flat[p], layer) for p in m.ours]).astype(dtype)
        weight_map |= dict.fromkeys(tensors, file)
        if writer:
            save_file(tensors, str(out_dir / file), metadata={"format": "pt"})
    if writer:
        if len(groups) > 1:
            index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
            (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        hf_config.save_pretrained(str(out_dir))
        transformers.GenerationConfig(**_token_ids(cfg, tokenizer)).save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    return out_dir
