"""The training data path: a grain pipeline of deterministic, length-bucketed global batches, of which
each JAX process reads only its own rows.

**Global plan** (the same on every process; row indices only, no row data). Epoch ``e`` visits the
``N`` encoded rows in grain's permutation for that epoch (``grain.MapDataset.range(N).shuffle(s)``:
grain's index shuffle seeded with ``s + e``), splits it by length bucket keeping that order, cuts each
bucket into full batches (a bucket's ``n % batch_size`` left-overs wait for a later epoch's draw), then
visits those batches in grain's permutation of them (a second seed; with one bucket, the plain order).
The two seeds are derived from the config seed, so nearby seeds do not share epochs. Every epoch has the
same number of batches, so global batch ``step`` is a function of ``step`` alone.

**Per process.** ``shard`` names the positions of each global batch this process's devices hold (the
loop takes them from the batch sharding: :func:`jaxspo.distributed.local_rows`; for process ``i`` of
``n`` in the usual device order that is :func:`process_shard`). Only those rows are read from the
row store and cut to the bucket's width, giving ``[len(shard), width]`` arrays that
:func:`jaxspo.distributed.from_process_rows` assembles into the global batch. Within an epoch the
processes' rows are disjoint and together are the epoch's rows.

grain: ``MapDataset.range(batches_per_epoch).repeat()`` → ``map_with_index`` (step → this process's
rows of global batch ``step``) → ``to_iter_dataset(ReadOptions(num_threads=workers,
prefetch_buffer_size=prefetch))``. The iterator's state (grain's ``next_index``, the step) is what
checkpoints save; :meth:`BatchPipeline.restore` continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxspo.data.bucketing import assign_buckets, example_lengths

Shard = slice | np.ndarray  # positions within a global batch


def process_shard(batch_size: int, process_index: int, process_count: int) -> slice:
    """Positions of a global batch of ``batch_size`` rows that process ``process_index`` of
    ``process_count`` reads: the ``process_index``-th of ``process_count`` equal contiguous blocks."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} does not divide among {process_count} processes")
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def _grain_seed(seed: int, purpose: int) -> int:
    """A 32-bit grain seed for ``purpose`` (0: row order, 1: batch order) from the config seed."""
    return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"BatchPipeline: {name} must be an int ≥ {low}, got {value!r}")


class BatchPipeline:
    """Endless, deterministic, epoch-shuffled, length-bucketed batches: this process's rows of each
    global batch of ``batch_size`` (module docstring).

    ``arrays``: the row store, equal-length columns (in memory or memory-mapped; 2-D ones are cut to
    the bucket width). ``buckets``: padded widths below the 2-D columns' width, which is always the last
    bucket. ``shard``: the positions of each global batch to read (default: all).
    """

    def __init__(
        self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, buckets: Sequence[int] = (),
        shard: Shard = slice(None), workers: int = 0, prefetch: int = 0,
    ):
        if not arrays:
            raise ValueError("BatchPipeline: arrays is empty")
        self._arrays = dict(arrays)
        shapes = {name: np.shape(a) for name, a in self._arrays.items()}
        if len({shape[:1] for shape in shapes.values()}) != 1 or () in shapes.values():
            raise ValueError(f"BatchPipeline: arrays need equal leading dimensions, got shapes {shapes}")
        _check_int("batch_size", batch_size, 1)
        _check_int("seed", seed, 0)
        _check_int("workers", workers, 0)
        _check_int("prefetch", prefetch, 0)
        self.num_examples = len(next(iter(self._arrays.values())))
        if self.num_examples < batch_size:
            raise ValueError(f"BatchPipeline: {self.num_examples} examples cannot fill one batch of {batch_size}")
        self.batch_size, self.seed = batch_size, seed
        self.shard = np.arange(batch_size)[shard]  # validates the shard; [local rows] positions
        width = max((a.shape[1] for a in self._arrays.values() if np.ndim(a) == 2), default=0)  # max_length: the last bucket
        self.buckets = [int(b) for b in buckets if b < width] + [width]
        one = len(self.buckets) == 1
        self.bucket_of = np.zeros(self.num_examples, np.int64) if one else assign_buckets(example_lengths(self._arrays), self.buckets)  # [N]
        counts = np.bincount(self.bucket_of, minlength=len(self.buckets))
        self.batches_per_epoch = int((counts // batch_size).sum())
        if self.batches_per_epoch == 0:
            raise ValueError(f"BatchPipeline: no bucket of {dict(zip(self.buckets, counts.tolist()))} fills a batch of {batch_size}")
        self._row_order = grain.MapDataset.range(self.num_examples).shuffle(seed=_grain_seed(seed, 0))
        self._batch_order = grain.MapDataset.range(self.batches_per_epoch).shuffle(seed=_grain_seed(seed, 1))
        self._plans: dict[int, list[tuple[int, np.ndarray]]] = {}
        self._lock = threading.Lock()  # grain's reader threads share the epoch plans
        dataset = grain.MapDataset.range(self.batches_per_epoch).repeat().map_with_index(lambda step, _: self._read(step))
        self._iterator = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=prefetch)))

    def _plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(bucket, global row indices) of every batch of ``epoch``, in visiting order."""
        with self._lock:
            if epoch not in self._plans:
                n, b = self.num_examples, self.batches_per_epoch
                order = np.asarray(self._row_order._getitems(range(epoch * n, (epoch + 1) * n)), dtype=np.int64)
                batches = []
                for bucket in range(len(self.buckets)):
                    rows = order[self.bucket_of[order] == bucket]
                    full = len(rows) // self.batch_size * self.batch_size
                    batches += [(bucket, chunk) for chunk in rows[:full].reshape(-1, self.batch_size)]
                if len(self.buckets) > 1:
                    batches = [batches[k] for k in self._batch_order._getitems(range(epoch * b, (epoch + 1) * b))]
                self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1} | {epoch: batches}
            return self._plans[epoch]

    def _batch(self, step: int) -> tuple[int, np.ndarray]:
        epoch, index = divmod(step, self.batches_per_epoch)
        return self._plan(epoch)[index]

    def rows(self, step: int) -> np.ndarray:
        """``[batch_size]`` global row indices of batch number ``step`` (0-based), on any process."""
        return self._batch(step)[1]

    def _read(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch ``step``, 2-D columns cut to the bucket's width."""
        bucket, rows = self._batch(step)
        mine, width = rows[self.shard], self.buckets[bucket]
        return {name: (np.asarray(a[mine])[:, :width] if np.ndim(a) == 2 else np.asarray(a[mine])) for name, a in self._arrays.items()}

    @property
    def step(self) -> int:
        """Number of batches taken so far (the next batch is global batch ``step``)."""
        return self._iterator.get_state()["next_index"]

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from."""
        return self.step // self.batches_per_epoch

    def __iter__(self) -> BatchPipeline:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def close(self) -> None:
        """Stops grain's reader threads."""
        self._iterator.close()

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot: grain's iterator state plus the settings ``restore`` checks."""
        return {
            "grain": self._iterator.get_state(), "seed": self.seed, "batch_size": self.batch_size,
            "num_examples": self.num_examples, "buckets": self.buckets,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continues from a ``state()`` snapshot: the next batch is the one that would have followed."""
        for key, value in self.state().items():
            if key != "grain" and state.get(key) != value:
                raise ValueError(f"BatchPipeline.restore: state[{key!r}] is {state.get(key)!r}, expected {value!r}")
        step = (state.get("grain") or {}).get("next_index")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"BatchPipeline.restore: state['grain']['next_index'] must be a non-negative int, got {step!r}")
        self._iterator.set_state({"next_index": step})


def sharded_positions(shardings: Mapping[str, Any], arrays: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
    """The positions of a global batch this process's devices hold under the batch ``shardings``
    (field → ``jax.sharding.Sharding``); every field must split the batch alike."""
    from jaxspo.distributed import local_rows

    positions = {
        name: np.arange(batch_size)[local_rows(sharding, (batch_size,) + np.shape(arrays[name])[1:])]
        for name, sharding in shardings.items() if name in arrays
    }
    first = next(iter(positions.values()))
    if any(not np.array_equal(first, p) for p in positions.values()):
        raise ValueError(f"the batch fields are split differently across processes: { {k: p.tolist() for k, p in positions.items()} }")
    return first


def make_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, buckets: Sequence[int] = (),
    shardings: Mapping[str, Any] | None = None, workers: int = 0, prefetch: int = 0,
) -> BatchPipeline:
    """The pipeline of this process's rows under the batch ``shardings`` (None: every row)."""
    shard = slice(None) if shardings is None else sharded_positions(shardings, arrays, batch_size)
    return BatchPipeline(arrays, batch_size, seed, buckets, shard, workers, prefetch)
