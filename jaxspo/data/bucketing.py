"""Length bucketing: which bucket of similar lengths (and static width) each example belongs to.

Rows are encoded at ``data.max_length``; each example (a pair: the longer of chosen and rejected) goes
to the smallest bucket in ``data.buckets`` (plus ``max_length``, always the last) that holds all its tokens, and a batch holds examples of
one bucket only, sliced to ``[batch, bucket]``. So the step sees at most ``len(buckets)`` shapes and
XLA compiles at most that many programs, while short examples stop paying for the longest one.

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
