"""Sequence log-probs of many pairs (or single sequences) under one model, in sharded fixed-size chunks (one compile per
chunk width)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxspo.data.bucketing import example_lengths
from jaxspo.distributed import to_global, to_host
from jaxspo.sharding import Rules, activation_sharding, named_sharding
from jaxspo.train.logprobs import forward_logits, sequence_logps, token_logps
from jaxspo.objectives.batches import PAIR_FIELDS, PairBatch
from jaxspo.objectives.pairs import padded_pair_logps


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
            chosen, rejected, _, _ = padded_pair_logps(self.graphdef, params, PairBatch.from_fields(batch))
        return chosen, rejected

    def __call__(self, params: Any, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        chosen, rejected = score_in_chunks(
            self._fn, params, {k: arrays[k] for k in PAIR_FIELDS}, self.chunk, self.mesh, self.rules, trim=True
        )
        return chosen, rejected


def score_in_chunks(
    fn: Any,
    params: Any,
    arrays: dict[str, np.ndarray],
    chunk: int,
    mesh: Mesh,
    rules: Rules,
    trim: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> tuple[np.ndarray, ...]:
    """``fn(params, batch) -> tuple of [chunk, ...] arrays`` over all rows of ``arrays`` in sharded chunks.

    The last chunk is padded with repeated rows (dropped from the outputs), so ``fn`` compiles once per
    width. ``trim`` (for ``fn`` whose outputs are per-row values, exact under right-padding): rows are
    scored shortest first and each chunk's 2-D arrays are cut to the first of :func:`trim_widths` that
    holds its longest row (:func:`jaxspo.data.bucketing.example_lengths`), so padding is not computed; outputs come
    back in the rows' order. ``progress(k)`` (optional) is called after each chunk with its ``k`` new rows.
    """
    n = len(next(iter(arrays.values())))
    full = max((v.shape[1] for v in arrays.values() if v.ndim == 2), default=0)
    lengths = example_lengths(arrays) if trim else np.full(n, full)
    order = np.argsort(lengths, kind="stable") if trim else np.arange(n)
    order = np.concatenate([order, order[: (-n) % chunk]])  # [n + extra]: the last chunk filled up
    widths = trim_widths(full) if trim else [full]
    parts = []
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        width = widths[int(np.searchsorted(widths, lengths[rows].max()))]
        batch = {k: shard_rows(v[rows][:, :width] if v.ndim == 2 else v[rows], mesh, rules) for k, v in arrays.items()}
        parts.append(tuple(to_host(x) for x in fn(params, batch)))
        if progress is not None:
            progress(min(chunk, n - start))
    outputs = []
    for column in zip(*parts):
        out = np.empty_like(column[0], shape=(n,) + column[0].shape[1:])
        out[order[:n]] = np.concatenate(column)[:n]
        outputs.append(out)
    return tuple(outputs)


def trim_widths(full: int) -> list[int]:
    """The widths :func:`score_in_chunks` cuts chunks to: ¼, ½, ¾ and all of ``full``, rounded up to 8."""
    return sorted({min(full, -(-full * k // 32) * 8) for k in (1, 2, 3, 4)})


class SequenceScorer:
    """Log-probs of single sequences ``tokens/valid/loss_mask [N, T]`` under a model, in sharded chunks."""

    def __init__(self, graphdef: nnx.GraphDef, mesh: Mesh, rules: Rules, chunk: int):
        self.graphdef, self.mesh, self.rules, self.chunk = graphdef, mesh, rules, chunk
        self._sums = jax.jit(self._chunk_sums)
        self._tokens = jax.jit(self._chunk_tokens)

    def _chunk_sums(self, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        with activation_sharding(self.mesh, self.rules):
            return sequence_logps(self.graphdef, params, batch["tokens"], batch["valid"], batch["loss_mask"])

    def _chunk_tokens(self, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array]:
        with activation_sharding(self.mesh, self.rules):
            return (
                token_logps(forward_logits(self.graphdef, params, batch["tokens"], batch["valid"]), batch["tokens"]),
            )

    def sums(
        self, params: Any, tokens: np.ndarray, valid: np.ndarray, loss_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed response log-probs ``[N]`` and response lengths ``[N]`` (float32 numpy)."""
        arrays = {"tokens": tokens, "valid": valid, "loss_mask": loss_mask}
        logps, lengths = score_in_chunks(self._sums, params, arrays, self.chunk, self.mesh, self.rules, trim=True)
        return logps, lengths

    def token_logps(self, params: Any, tokens: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """log p(tokens[:, t + 1] | tokens[:, ≤ t]) ``[N, T − 1]`` (float32 numpy)."""
        (logps,) = score_in_chunks(
            self._tokens, params, {"tokens": tokens, "valid": valid}, self.chunk, self.mesh, self.rules
        )
        return logps
