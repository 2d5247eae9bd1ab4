"""Sequence log-probs of many pairs under one model, in sharded fixed-size chunks (one compile)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxspo.distributed import to_global, to_host
from jaxspo.sharding import Rules, activation_sharding, named_sharding
from jaxspo.train.step import PREFERENCE_FIELDS, pair_logps


def shard_rows(x: np.ndarray, mesh: Mesh, rules: Rules) -> jax.Array:
    """Places a host array (the same on every process) on the mesh, its rows split by the ``batch`` rule."""
    names = ("batch",) + (None,) * (x.ndim - 1)
    return to_global(x, named_sharding(names, x.shape, mesh, rules))


class PairScorer:
    """``scorer(params, arrays) -> (chosen [N], rejected [N])`` summed response log-probs, float32 numpy."""

    def __init__(self, graphdef: nnx.GraphDef, mesh: Mesh, rules: Rules, chunk: int):
        self.graphdef, self.mesh, self.rules, self.chunk = graphdef, mesh, rules, chunk
        self._fn = jax.jit(self._chunk_logps)

    def _chunk_logps(self, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        with activation_sharding(self.mesh, self.rules):
            chosen, rejected, _, _ = pair_logps(self.graphdef, params, batch)
        return chosen, rejected

    def __call__(self, params: Any, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        n = len(arrays["chosen_tokens"])
        extra = (-n) % self.chunk  # pad with repeated rows to whole chunks; dropped below
        padded = {k: np.concatenate([arrays[k], arrays[k][:extra]]) if extra else arrays[k] for k in PREFERENCE_FIELDS}
        chosen, rejected = [], []
        for start in range(0, n + extra, self.chunk):
            batch = {k: shard_rows(v[start : start + self.chunk], self.mesh, self.rules) for k, v in padded.items()}
            c, r = self._fn(params, batch)
            chosen.append(to_host(c))
            rejected.append(to_host(r))
        return np.concatenate(chosen)[:n], np.concatenate(rejected)[:n]
