"""The training data path: a grain pipeline of deterministic, length-bucketed global batches, of which
each JAX process reads only its own rows.

**Global plan** (the same on every process; row indices only, no row data). Each row belongs to the
smallest length bucket that holds it (:mod:`jaxspo.data.bucketing`; no ``buckets``: one bucket; a
bucket with fewer rows than a batch passes them up, :func:`~jaxspo.data.bucketing.fill_underfull`). In
epoch ``e`` bucket ``b`` visits its ``n_b`` rows in grain's permutation for that epoch
(``grain.MapDataset.source(rows of b).shuffle(s_b)``, indexed at ``e·n_b + j``: grain's index shuffle
seeded with ``s_b + e``) and is cut into ``n_b // batch_size`` full batches (the last ``n_b % batch_size``
of the permutation wait for a later epoch's draw); the epoch's batches of all buckets are visited in
grain's permutation of them (``grain.MapDataset.range(batches_per_epoch).shuffle(s)``, again per epoch;
with one bucket, in order). The seeds are derived from the config seed, so nearby config seeds do not
share epochs. Every epoch has the same number of batches, so global batch ``step`` is a function of
``step`` alone, and nothing is materialised per epoch: a batch's rows are computed from grain's shuffles
when it is read (only this process's positions of it).

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

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxspo.data.bucketing import assign_buckets, example_lengths, fill_underfull
from jaxspo.data.pair_packing import ROW_FIELDS, SAMPLE_BATCHES, PairPacker

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


def _grain_seed(seed: int, *purpose: int) -> int:
    """A 32-bit grain seed for ``purpose`` (``0, b``: bucket b's row order; ``1``: batch order) from the config seed."""
    return int(np.random.SeedSequence([seed, *purpose]).generate_state(1)[0])


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"BatchPipeline: {name} must be an int ≥ {low}, got {value!r}")


def _checked_inputs(arrays: Mapping[str, np.ndarray], **counts: int) -> dict[str, np.ndarray]:
    """``arrays`` as a dict once they share a leading dimension; ValueError naming a bad argument otherwise
    (``counts``: batch_size ≥ 1, seed, workers and prefetch ≥ 0)."""
    if not arrays:
        raise ValueError("BatchPipeline: arrays is empty")
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    if len({shape[:1] for shape in shapes.values()}) != 1 or () in shapes.values():
        raise ValueError(f"BatchPipeline: arrays need equal leading dimensions, got shapes {shapes}")
    for name, value in counts.items():
        _check_int(name, value, 1 if name == "batch_size" else 0)
    return dict(arrays)


class BatchPipeline:
    """Endless, deterministic, epoch-shuffled, length-bucketed batches: this process's rows of each
    global batch of ``batch_size`` (module docstring).

    ``arrays``: the row store, equal-length columns (in memory or memory-mapped; 2-D ones are cut to
    the bucket width). ``buckets``: padded widths below the 2-D columns' width, which is always the last
    bucket. ``shard``: the positions of each global batch to read (default: all). ``packer``
    (``data.pack_pairs``, one bucket): lays each batch's pairs several to a row instead.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        seed: int,
        buckets: Sequence[int] = (),
        shard: Shard = slice(None),
        workers: int = 0,
        prefetch: int = 0,
        lengths: np.ndarray | None = None,
        packer: PairPacker | None = None,
    ):
        self._arrays = _checked_inputs(arrays, batch_size=batch_size, seed=seed, workers=workers, prefetch=prefetch)
        self.num_examples = len(next(iter(self._arrays.values())))
        if self.num_examples < batch_size:
            raise ValueError(f"BatchPipeline: {self.num_examples} examples cannot fill one batch of {batch_size}")
        self.batch_size, self.seed, self.packer = batch_size, seed, packer
        self.shard = np.arange(batch_size)[shard]  # validates the shard; [local rows] positions
        width = max(
            (a.shape[1] for a in self._arrays.values() if np.ndim(a) == 2), default=0
        )  # max_length: the last bucket
        self.buckets = [int(b) for b in buckets if b < width] + [width]
        if packer is not None and len(self.buckets) > 1:
            raise ValueError("BatchPipeline: packed pairs take no length buckets (the row width is fixed)")
        self._lengths = (
            lengths if lengths is not None or len(self.buckets) == 1 else example_lengths(self._arrays)
        )  # [N] columns each row needs
        if len(self.buckets) == 1:
            self.bucket_of = np.zeros(self.num_examples, np.int64)  # [N]
        else:  # no bucket too small to draw
            self.bucket_of = fill_underfull(assign_buckets(self._lengths, self.buckets), self._lengths, batch_size)
        counts = np.bincount(self.bucket_of, minlength=len(self.buckets))
        self.batches_per_epoch = int((counts // batch_size).sum())
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"BatchPipeline: no bucket of {dict(zip(self.buckets, counts.tolist()))} fills a batch of {batch_size}"
            )
        self._bucket_sizes = counts.tolist()
        members = [np.flatnonzero(self.bucket_of == b) for b in range(len(self.buckets))]  # [n_b] rows of bucket b
        # bucket b's rows in grain's order: position e·n_b + j is the j-th row of epoch e's permutation
        self._bucket_rows = [
            grain.MapDataset.source(m).shuffle(seed=_grain_seed(seed, 0, b)) for b, m in enumerate(members)
        ]
        self._slots = [(b, k) for b in range(len(self.buckets)) for k in range(counts[b] // batch_size)]  # full batches
        self._slot_order = grain.MapDataset.range(self.batches_per_epoch).shuffle(seed=_grain_seed(seed, 1))
        if packer is not None:  # its row counts, from the first epoch's batches
            self.packer = packer.fitted(
                [self.rows(step) for step in range(min(self.batches_per_epoch, SAMPLE_BATCHES))]
            )
        dataset = (
            grain.MapDataset.range(self.batches_per_epoch).repeat().map_with_index(lambda step, _: self._read(step))
        )
        self._iterator = iter(
            dataset.to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=prefetch))
        )

    def _batch(self, step: int, positions: np.ndarray) -> tuple[int, np.ndarray]:
        """(bucket, global row indices) at ``positions`` (within the batch) of global batch ``step``."""
        epoch, index = divmod(step, self.batches_per_epoch)
        slot = self._slot_order[epoch * self.batches_per_epoch + index] if len(self.buckets) > 1 else index
        bucket, k = self._slots[slot]
        rows = self._bucket_rows[bucket]
        start = epoch * self._bucket_sizes[bucket] + k * self.batch_size
        return bucket, np.array([rows[start + int(p)] for p in positions], dtype=np.int64)

    @property
    def widths(self) -> list[int]:
        """The 2-D columns' widths its batches come in: each bucket that fills at least one batch."""
        return sorted({self.buckets[bucket] for bucket, _ in self._slots})

    def token_fraction(self, one_width: bool = False) -> float:
        """Share of the slots its batches compute that hold tokens, over the dataset (``one_width``: were
        every batch cut at the widest bucket)."""
        if self._lengths is None:
            self._lengths = example_lengths(self._arrays)
        widths = np.asarray(self.buckets)[
            np.full_like(self.bucket_of, len(self.buckets) - 1) if one_width else self.bucket_of
        ]
        return float(self._lengths.sum() / widths.sum())

    def example(self, width: int) -> dict[str, np.ndarray]:
        """This process's rows of the first full batch of bucket ``width`` (shapes and dtypes as
        ``next`` returns them); the iterator does not move."""
        bucket = self.buckets.index(width)
        rows = self._bucket_rows[bucket]
        return self._columns(np.array([rows[int(p)] for p in self.shard], dtype=np.int64), width)

    def rows(self, step: int) -> np.ndarray:
        """``[batch_size]`` global row indices of batch number ``step`` (0-based), on any process."""
        return self._batch(step, np.arange(self.batch_size))[1]

    def shapes(self) -> list[dict[str, tuple[tuple[int, ...], np.dtype]]]:
        """Global shape and dtype of every field of its batches, one dict per distinct set of shapes (program)."""
        if self.packer is not None:
            return self.packer.shapes(self._arrays)
        examples = [self.example(width) for width in self.widths]  # this process's rows; the step sees the global batch
        return [
            {name: ((self.batch_size,) + a.shape[1:], a.dtype) for name, a in example.items()} for example in examples
        ]

    def global_rows(self, local: Mapping[str, np.ndarray]) -> dict[str, int]:
        """The global batch's leading dimension of each field of ``local`` (this process's part of a batch)."""
        return {name: len(a) * self.batch_size // len(self.shard) for name, a in local.items()}

    def _read(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch ``step``, 2-D columns cut to the bucket's width (or packed)."""
        if self.packer is not None:
            return self.packer.pack(self._arrays, self.rows(step), self.shard)
        bucket, mine = self._batch(step, self.shard)
        return self._columns(mine, self.buckets[bucket])

    def _columns(self, rows: np.ndarray, width: int) -> dict[str, np.ndarray]:
        """Every column at global row indices ``rows``, 2-D ones cut to ``width``."""
        return {
            name: (np.asarray(a[rows])[:, :width] if np.ndim(a) == 2 else np.asarray(a[rows]))
            for name, a in self._arrays.items()
        }

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
            "grain": self._iterator.get_state(),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_examples": self.num_examples,
            "buckets": self.buckets,
        } | ({"pack_pairs": self.packer.state()} if self.packer is not None else {})

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continues from a ``state()`` snapshot: the next batch is the one that would have followed."""
        for key, value in self.state().items():
            if key != "grain" and state.get(key) != value:
                raise ValueError(f"BatchPipeline.restore: state[{key!r}] is {state.get(key)!r}, expected {value!r}")
        step = (state.get("grain") or {}).get("next_index")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(
                f"BatchPipeline.restore: state['grain']['next_index'] must be a non-negative int, got {step!r}"
            )
        self._iterator.set_state({"next_index": step})


def sharded_positions(shardings: Mapping[str, Any], arrays: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
    """The positions of a global batch this process's devices hold under the batch ``shardings``
    (field → ``jax.sharding.Sharding``); every field must split the batch alike."""
    from jaxspo.distributed import local_rows

    positions = {
        name: np.arange(batch_size)[local_rows(sharding, (batch_size,) + np.shape(arrays[name])[1:])]
        for name, sharding in shardings.items()
        if name in arrays
    }
    first = next(iter(positions.values()))
    if any(not np.array_equal(first, p) for p in positions.values()):
        raise ValueError(
            "the batch fields are split differently across processes: "
            f"{ {k: p.tolist() for k, p in positions.items()} }"
        )
    return first


def make_batches(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    seed: int,
    buckets: Sequence[int] = (),
    shardings: Mapping[str, Any] | None = None,
    workers: int = 0,
    prefetch: int = 0,
    lengths: np.ndarray | None = None,
    packer: PairPacker | None = None,
) -> BatchPipeline:
    """The pipeline of this process's rows under the batch ``shardings`` (None: every row); ``lengths``:
    :func:`~jaxspo.data.bucketing.example_lengths` of ``arrays`` if already computed; ``packer``: packed pairs
    (their positions come from the per-pair fields' sharding, which splits whole cells)."""
    if shardings is not None and packer is not None:
        shardings = {name: s for name, s in shardings.items() if name not in ROW_FIELDS}
    shard = slice(None) if shardings is None else sharded_positions(shardings, arrays, batch_size)
    return BatchPipeline(arrays, batch_size, seed, buckets, shard, workers, prefetch, lengths, packer)
