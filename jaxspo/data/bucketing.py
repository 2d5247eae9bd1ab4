"""Length bucketing: batches drawn from one bucket of similar lengths, cut to that bucket's static width.

Rows are encoded at ``data.max_length``; each example (a pair: the longer of chosen and rejected) goes
to the smallest bucket in ``data.buckets`` (plus ``max_length``, always the last) that holds all its tokens, and a batch holds examples of
one bucket only, sliced to ``[batch, bucket]``. So the step sees at most ``len(buckets)`` shapes and
XLA compiles at most that many programs, while short examples stop paying for the longest one.

Order: epoch ``e`` draws the same permutation as :class:`~jaxspo.data.encode.BatchIterator`
(``default_rng([seed, e])``), splits it by bucket keeping that order, cuts each bucket into full
batches (a bucket's ``n % batch_size`` left-overs wait for a later epoch's draw), then shuffles the
order of those batches with ``default_rng([seed, e, 1])`` (one bucket: no shuffle, the plain order). Every epoch has the same number of batches,
and the position is a function of ``step`` alone, so ``state()`` / ``restore()`` resume exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jaxspo.data.encode import BatchIterator


def example_lengths(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """``[N]`` tokens of each example: the max over its ``*valid`` arrays of the non-pad count."""
    valid = [np.asarray(a).sum(axis=1) for name, a in arrays.items() if name.endswith("valid")]
    if not valid:
        raise ValueError("example_lengths: no '*valid' arrays to measure")
    return np.max(np.stack(valid), axis=0)


def assign_buckets(lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """``[N]`` index of the smallest bucket ≥ each length; ValueError if one exceeds the largest."""
    lengths = np.asarray(lengths)
    index = np.searchsorted(np.asarray(buckets), lengths, side="left")
    if (index >= len(buckets)).any():
        raise ValueError(f"an example of {int(lengths.max())} tokens exceeds the largest bucket {buckets[-1]}")
    return index


class BucketedBatchIterator(BatchIterator):
    """A :class:`BatchIterator` whose batches each come from one length bucket (module docstring)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, buckets: Sequence[int]):
        super().__init__(arrays, batch_size, seed, drop_last=True)
        width = max(a.shape[1] for a in self._arrays.values() if a.ndim == 2)  # max_length, always the last bucket
        self.buckets = [int(b) for b in buckets if b < width] + [width]
        self.bucket_of = assign_buckets(example_lengths(self._arrays), self.buckets)  # [N]
        counts = np.bincount(self.bucket_of, minlength=len(self.buckets))
        self._batches_per_epoch = int((counts // batch_size).sum())
        if self._batches_per_epoch == 0:
            raise ValueError(f"BucketedBatchIterator: no bucket of {dict(zip(self.buckets, counts.tolist()))} fills a batch of {batch_size}")
        self._epoch_batches: list[tuple[int, np.ndarray]] = []

    @property
    def batches_per_epoch(self) -> int:
        return self._batches_per_epoch

    def _plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(bucket, row indices) of every batch of ``epoch``, in visiting order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        batches = []
        for b in range(len(self.buckets)):
            rows = order[self.bucket_of[order] == b]
            full = len(rows) // self.batch_size * self.batch_size
            batches += [(b, chunk) for chunk in rows[:full].reshape(-1, self.batch_size)]
        if len(self.buckets) == 1:  # the plain iterator's order
            return batches
        shuffle = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
        return [batches[k] for k in shuffle]

    def _batch(self, step: int) -> tuple[int, np.ndarray]:
        epoch, index = divmod(step, self.batches_per_epoch)
        if epoch != self._order_epoch:
            self._epoch_batches, self._order_epoch = self._plan(epoch), epoch
        return self._epoch_batches[index]

    def rows(self, step: int) -> np.ndarray:
        return self._batch(step)[1]

    def __next__(self) -> dict[str, np.ndarray]:
        bucket, rows = self._batch(self.step)
        self.step += 1
        width = self.buckets[bucket]
        return {name: (a[rows][:, :width] if a.ndim == 2 else a[rows]) for name, a in self._arrays.items()}

    def state(self) -> dict[str, int | bool | list[int]]:
        return super().state() | {"buckets": self.buckets}


def make_batches(arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, buckets: Sequence[int]) -> BatchIterator:
    """A bucketed iterator when ``buckets`` is given, else the plain one (one shape, ``max_length``)."""
    if buckets:
        return BucketedBatchIterator(arrays, batch_size, seed, buckets)
    return BatchIterator(arrays, batch_size, seed)
