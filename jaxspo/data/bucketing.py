"""Length bucketing: which bucket of similar lengths (and static width) each example belongs to.

Rows are encoded at ``data.max_length``; each example (a pair: the longer of chosen and rejected) goes
to the smallest bucket in ``data.buckets`` (plus ``max_length``, always the last) that holds all its tokens, and a batch
holds examples of one bucket only, sliced to ``[batch, bucket]``. So the step sees at most ``len(buckets)`` shapes and
XLA compiles at most that many programs, while short examples stop paying for the longest one.

``data.auto_buckets: K`` picks the widths instead (:func:`choose_buckets`): the ≤ K multiples of 8 that
minimise the slots computed over the dataset, each bucket holding at least a batch. A bucket of given
widths that cannot fill one batch would never be drawn; :func:`fill_underfull` moves its rows up.

The batch pipeline (:mod:`jaxspo.data.pipeline`) draws the batches; this module assigns the buckets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def example_lengths(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """``[N]`` columns each example needs: one past its last valid slot over its ``*valid`` arrays (0 if
    none), so cutting the 2-D arrays to that width keeps every valid token."""
    needed = [_columns_needed(np.asarray(a, bool)) for name, a in arrays.items() if name.endswith("valid")]
    if not needed:
        raise ValueError("example_lengths: no '*valid' arrays to measure")
    return np.max(np.stack(needed), axis=0)


def _columns_needed(valid: np.ndarray) -> np.ndarray:
    """``[N]`` one past the last True of each row of ``valid [N, T]`` (0 for an all-False row)."""
    return np.where(valid.any(axis=1), valid.shape[1] - np.argmax(valid[:, ::-1], axis=1), 0)


def assign_buckets(lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """``[N]`` index of the smallest bucket ≥ each length; ValueError if one exceeds the largest."""
    lengths = np.asarray(lengths)
    index = np.searchsorted(np.asarray(buckets), lengths, side="left")
    if (index >= len(buckets)).any():
        raise ValueError(f"an example of {int(lengths.max())} tokens exceeds the largest bucket {buckets[-1]}")
    return index


def choose_buckets(lengths: np.ndarray, count: int, batch_size: int, width: int, multiple: int = 8) -> list[int]:
    """The ≤ ``count`` ascending bucket widths (multiples of ``multiple``, the last capped at ``width``)
    that minimise ``Σ_examples width of its bucket`` (slots computed per epoch) over ``lengths [N]``, every
    bucket holding ≥ ``batch_size`` examples; of equal costs, the fewest buckets. ``[width]`` if no split
    qualifies. Exact dynamic programme over the distinct rounded lengths: O(count · M²), M ≤ width/multiple."""
    if count < 1 or batch_size < 1:
        raise ValueError(f"choose_buckets: count and batch_size must be ≥ 1, got {count} and {batch_size}")
    rounded = np.minimum(-(-np.maximum(np.asarray(lengths, np.int64), 1) // multiple) * multiple, width)
    tops, counts = np.unique(rounded, return_counts=True)  # [M] candidate bucket tops and their examples
    before = np.concatenate([[0], np.cumsum(counts)])  # [M+1] examples below candidate j
    m = len(tops)
    cost = np.full(
        (count + 1, m + 1), np.inf
    )  # cost[k, j]: first j candidates in k buckets, the last topped at tops[j-1]
    cost[0, 0] = 0.0
    start = np.zeros((count + 1, m + 1), np.int64)
    for k in range(1, count + 1):
        for j in range(1, m + 1):
            members = before[j] - before[:j]  # [j] examples of a bucket spanning candidates i..j-1
            total = np.where(members >= batch_size, cost[k - 1, :j] + members * tops[j - 1], np.inf)
            start[k, j] = int(np.argmin(total))
            cost[k, j] = total[start[k, j]]
    k = int(np.argmin(cost[1:, m])) + 1  # argmin takes the first: fewest buckets among equal costs
    if not np.isfinite(cost[k, m]):
        return [int(width)]
    widths, j = [], m
    while j:
        widths.append(int(tops[j - 1]))
        j, k = start[k, j], k - 1
    return widths[::-1]


def fill_underfull(bucket_of: np.ndarray, lengths: np.ndarray, batch_size: int) -> np.ndarray:
    """``bucket_of [N]`` with no bucket of 1 … ``batch_size``-1 examples (which could never fill a batch):
    such a bucket's examples move to the next larger bucket; if the largest is short, the longest examples
    of the buckets below move up to fill it. Every example still fits its bucket (it only moves up)."""
    bucket_of, lengths = np.array(bucket_of, np.int64), np.asarray(lengths)
    if len(bucket_of) < batch_size:
        return bucket_of
    while True:
        counts = np.bincount(bucket_of)
        short = [b for b in range(len(counts)) if 0 < counts[b] < batch_size]
        if not short:
            return bucket_of
        b = short[0]
        if b < len(counts) - 1:  # not the largest occupied bucket: its examples join the next one up
            bucket_of[bucket_of == b] = b + 1
            continue
        below = np.flatnonzero(bucket_of < b)  # the largest is short: promote the longest examples under it
        longest = below[np.lexsort((below, -lengths[below]))][: batch_size - counts[b]]
        bucket_of[longest] = b


def bucket_widths(
    arrays: Mapping[str, np.ndarray], buckets: Sequence[int], auto_buckets: int, batch_size: int, multiple: int = 8
) -> tuple[list[int], np.ndarray | None]:
    """``data.buckets`` as given, or with ``auto_buckets`` > 0 the :func:`choose_buckets` widths (multiples of
    ``multiple``) of the examples in ``arrays`` (row store columns; 2-D ones ``[N, T]``, T the widest allowed);
    plus the examples' lengths ``[N]`` when they were measured (None otherwise), for the pipeline to reuse."""
    if not auto_buckets:
        return [int(b) for b in buckets], None
    width = max(np.shape(a)[1] for a in arrays.values() if np.ndim(a) == 2)
    lengths = example_lengths(arrays)
    return choose_buckets(lengths, auto_buckets, batch_size, width, multiple), lengths
