"""Precomputed reference log-probs: one sharded pass over the pairs, cached on disk by content hashes.

The cache key hashes the encoded pair arrays (so the data, the tokenizer's ids and ``max_length``), the
reference weights and the tokenizer definition; any change gives a new key, so a stale cache is never read.
Files are ``<key>.npz`` (numpy arrays only, loaded without pickle), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxspo.distributed import is_writer, to_host
from jaxspo.train.scoring import PairScorer
from jaxspo.objectives.batches import PAIR_FIELDS

log = logging.getLogger("jaxspo")


def _hash_array(digest: "hashlib._Hash", name: str, array: np.ndarray) -> None:
    digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
    digest.update(np.ascontiguousarray(array).tobytes())


def hash_params(digest: "hashlib._Hash", params: Any) -> None:
    """Feeds every parameter (name, dtype, shape, bytes; gathered one leaf at a time) into ``digest``."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        _hash_array(digest, jax.tree_util.keystr(path), to_host(leaf))


def fingerprint(arrays: dict[str, np.ndarray], params: Any, tokenizer) -> str:
    """sha256 of the pair arrays, the parameters (read one leaf at a time) and the tokenizer."""
    digest = hashlib.sha256()
    for name in PAIR_FIELDS:
        _hash_array(digest, name, arrays[name])
    hash_params(digest, params)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    digest.update(definition.encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True).encode())
    return digest.hexdigest()


def cached_reference_logps(
    cache_dir: str | Path, scorer: PairScorer, params: Any, arrays: dict[str, np.ndarray], tokenizer
) -> tuple[dict[str, np.ndarray], bool]:
    """Log-probs of the pairs under frozen ``params`` (the reference, or an earlier ``sequential`` stage's policy).

    Returns ``{"reference_chosen_logps", "reference_rejected_logps"}`` ``[N]`` float32, and whether the cache hit.
    """
    directory = Path(cache_dir).expanduser()
    path = directory / f"{fingerprint(arrays, params, tokenizer)}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            log.info("reference log-probs: reusing %s", path)
            return {k: cached[k] for k in cached.files}, True
    chosen, rejected = scorer(params, arrays)
    out = {"reference_chosen_logps": chosen.astype(np.float32), "reference_rejected_logps": rejected.astype(np.float32)}
    if not is_writer():  # every process computed the same numbers; process 0 stores them
        return out, False
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(partial, **out)
    os.replace(partial, path)
    log.info("reference log-probs: computed %d pairs, cached at %s", len(chosen), path)
    return out, False
