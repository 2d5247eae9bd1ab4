"""``data.pack_pairs``: several packed pairs per row, so long-tailed lengths stop paying for the longest pair.

The row store keeps one pair per row (:func:`jaxspo.data.layout.pack_pairs`, ``[N, Wp]``). For each global
batch of ``N`` pairs (the same pairs, in the same order, as the padded layout draws), :class:`PairPacker`
lays them into ``R`` rows of ``W = data.pack_width`` slots::

    row r     pair a: prompt chosen rejected | pair b: prompt chosen rejected | … | pad
    segment   3·0+0   3·0+1  3·0+2           | 3·1+0  3·1+1  3·1+2           |   | 0 (invalid)
    position  0 …     P …    P …             | 0 …    P' …   P' …            |   | 0
    pair      index of the pair in its micro-batch (what the step sums each token's log-prob into)

``source`` (the slot predicting each token) is shifted by the pair's offset in the row, so each pair sees and
predicts exactly what its one-pair row does (:class:`jaxspo.models.attention.MaskSpec`: a query sees its own
segment and its own pair's prompt).

**Cells.** The batch's positions split into ``L = lcm(grad_accum_steps, batch shards)`` cells of ``N / L``
consecutive pairs; each cell packs (first fit, longest first) into the same number of rows ``R / L``, so the
rows of a micro-batch and of a data shard hold exactly its pairs: the step's ``reshape`` into micro-batches and
the batch sharding split rows and pairs alike. A process reads the cells its devices hold.

**Shapes.** The width is fixed; the rows per cell round up to one of at most ``data.pack_row_buckets`` counts
(one compiled program each): ``N / L`` (one pair per row, so every batch fits) and the ``K − 1`` counts that
minimise the rows computed over a sample of the run's batches (the first epoch's first
:data:`SAMPLE_BATCHES`), chosen exactly by :func:`jaxspo.data.bucketing.choose_buckets`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from jaxspo.data.bucketing import choose_buckets
from jaxspo.data.layout import PACKED_FIELDS, ROLES

PAIR_FIELD = "packed_pair"  # [R, W] int32: each slot's pair index within its micro-batch (0 on padding)
ROW_FIELDS = PACKED_FIELDS + (PAIR_FIELD,)
SAMPLE_BATCHES = 512  # batches whose packing chooses the row counts


def first_fit(lengths: np.ndarray, width: int) -> list[list[int]]:
    """Indices of ``lengths [n]`` grouped into rows of at most ``width`` slots: first fit, longest first
    (ties by index), each row's pairs in ascending index. ValueError if a length exceeds ``width``."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and lengths.max() > width:
        raise ValueError(
            f"a pair of {int(lengths.max())} tokens does not fit data.pack_width={width}; raise "
            "data.pack_width (or 0 = the longest pair)"
        )
    rows: list[list[int]] = []
    free: list[int] = []
    for i in np.lexsort((np.arange(len(lengths)), -lengths)):
        fit = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if fit is None:
            fit = len(rows)
            rows.append([])
            free.append(width)
        rows[fit].append(int(i))
        free[fit] -= int(lengths[i])
    return [sorted(r) for r in rows]


def combine_pairs(
    pairs: Mapping[str, np.ndarray], rows: list[list[int]], pair_index: np.ndarray, width: int
) -> dict[str, np.ndarray]:
    """One-pair packed rows ``pairs`` (:data:`~jaxspo.data.layout.PACKED_FIELDS`, ``[n, Wp]``) laid side by side
    as ``rows`` (lists of indices into them) in ``[len(rows), width]`` rows of :data:`ROW_FIELDS`; ``pair_index [n]``
    is what :data:`PAIR_FIELD` holds for each pair."""
    out = {name: np.zeros((len(rows), width), pairs[name].dtype) for name in PACKED_FIELDS}
    out[PAIR_FIELD] = np.zeros((len(rows), width), np.int32)
    lengths = np.asarray(pairs["packed_valid"]).sum(1)
    for r, members in enumerate(rows):
        offset = 0
        for k, i in enumerate(members):
            n = int(lengths[i])
            span = slice(offset, offset + n)
            for name in (
                "packed_tokens",
                "packed_valid",
                "packed_positions",
                "packed_chosen_mask",
                "packed_rejected_mask",
            ):
                out[name][r, span] = pairs[name][i, :n]
            out["packed_segments"][r, span] = ROLES * k + pairs["packed_segments"][i, :n]
            out["packed_source"][r, span] = offset + pairs["packed_source"][i, :n]
            out[PAIR_FIELD][r, span] = pair_index[i]
            offset += n
    return out


@dataclasses.dataclass(frozen=True)
class PairPacker:
    """Packs each global batch of ``batch_size`` pairs into rows of ``width`` slots (module docstring).

    ``cells``: lcm of ``accum`` (micro-batches per step) and the batch's shards; ``row_buckets``: how many row
    counts (``data.pack_row_buckets``); ``lengths [N]``: each stored pair's packed tokens; ``counts``: the rows
    per cell a batch may take, ascending (:meth:`fitted` chooses them; the last is one pair per row).
    """

    width: int
    row_buckets: int
    batch_size: int
    accum: int
    cells: int
    lengths: np.ndarray
    counts: tuple[int, ...] = ()

    @classmethod
    def build(
        cls, data_cfg, pairs: Mapping[str, np.ndarray], batch_size: int, accum: int, batch_shards: int, multiple: int
    ) -> PairPacker:
        """From ``data.pack_width`` (0: the longest pair of ``pairs``, rounded up to ``multiple``) and
        ``data.pack_row_buckets``; ValueError (one line) if a pair is longer than the width."""
        lengths = np.asarray(pairs["packed_valid"]).sum(1)
        longest = int(lengths.max()) if len(lengths) else 1
        width = data_cfg.pack_width or -(-longest // multiple) * multiple
        if longest > width:
            raise ValueError(
                f"data.pack_width={width} is shorter than the longest pair ({longest} tokens); raise it "
                "or set 0 (= the longest pair)"
            )
        cells = math.lcm(accum, batch_shards)
        if batch_size % cells:
            raise ValueError(
                f"trainer.batch_size ({batch_size}) must divide by {cells} = "
                "lcm(trainer.grad_accum_steps, batch shards) with data.pack_pairs"
            )
        return cls(width, data_cfg.pack_row_buckets, batch_size, accum, cells, lengths)

    @property
    def pairs_per_cell(self) -> int:
        return self.batch_size // self.cells

    def cell_rows(self, batch_rows: np.ndarray) -> list[list[list[int]]]:
        """Each cell's rows (lists of the cell's pair offsets) for the global batch of stored rows ``batch_rows
        [N]``."""
        per_cell = self.pairs_per_cell
        return [
            first_fit(self.lengths[batch_rows[c * per_cell : (c + 1) * per_cell]], self.width)
            for c in range(self.cells)
        ]

    def fitted(self, sample: list[np.ndarray]) -> PairPacker:
        """This packer with its row counts chosen for ``sample`` (global batches of stored rows, ``[N]`` each)."""
        needed = [max(len(rows) for rows in self.cell_rows(batch)) for batch in sample]
        chosen = (
            choose_buckets(np.array(needed), self.row_buckets - 1, 1, self.pairs_per_cell, 1)
            if self.row_buckets > 1 and needed
            else []
        )
        return dataclasses.replace(self, counts=tuple(sorted(set(chosen) | {self.pairs_per_cell})))

    def row_counts(self) -> list[int]:
        """The global row counts its batches can have (one compiled program each), ascending."""
        return [count * self.cells for count in self.counts]

    def pack(
        self, arrays: Mapping[str, np.ndarray], batch_rows: np.ndarray, positions: np.ndarray
    ) -> dict[str, np.ndarray]:
        """This process's part of the global batch of stored rows ``batch_rows [N]``: its ``positions`` (whole
        cells) of every per-pair field, and the packed rows of its cells."""
        if not self.counts:
            raise ValueError("PairPacker.pack: no row counts yet; use the packer fitted() returns")
        per_cell, per_micro = self.pairs_per_cell, self.batch_size // self.accum
        groups = self.cell_rows(batch_rows)
        needed = max(len(g) for g in groups)
        rows = next(count for count in self.counts if count >= needed)
        mine = np.unique(np.asarray(positions) // per_cell)
        if not np.array_equal(np.sort(positions), (mine[:, None] * per_cell + np.arange(per_cell)).ravel()):
            raise ValueError(
                f"data.pack_pairs: this process's batch positions {np.asarray(positions).tolist()} are "
                f"not whole cells of {per_cell} pairs"
            )
        out = {name: np.asarray(a[batch_rows[positions]]) for name, a in arrays.items() if name not in PACKED_FIELDS}
        cells = []
        for c in mine:
            cell_positions = c * per_cell + np.arange(per_cell)
            pairs = {name: np.asarray(arrays[name][batch_rows[cell_positions]]) for name in PACKED_FIELDS}
            cells.append(
                combine_pairs(pairs, groups[c] + [[]] * (rows - len(groups[c])), cell_positions % per_micro, self.width)
            )
        return out | {name: np.concatenate([cell[name] for cell in cells]) for name in ROW_FIELDS}

    def shapes(self, arrays: Mapping[str, np.ndarray]) -> list[dict[str, tuple[tuple[int, ...], np.dtype]]]:
        """Global shape and dtype of every field, one dict per program (row count)."""
        pairs = {
            name: ((self.batch_size,) + np.shape(a)[1:], np.asarray(a[:1]).dtype)
            for name, a in arrays.items()
            if name not in PACKED_FIELDS
        }
        dtypes = {name: np.asarray(arrays[name][:1]).dtype for name in PACKED_FIELDS} | {PAIR_FIELD: np.dtype(np.int32)}
        return [
            pairs | {name: ((rows, self.width), dtype) for name, dtype in dtypes.items()} for rows in self.row_counts()
        ]

    def state(self) -> dict[str, int | list[int]]:
        """The settings a resumed run must share (checkpointed with the pipeline's state)."""
        return {"width": self.width, "cells": self.cells, "row_counts": self.row_counts()}
