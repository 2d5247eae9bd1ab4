"""Host memory and throughput of the training data path (the grain pipeline) on a large synthetic source.

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/data_pipeline.py [--rows 100000] [--length 512]
        [--out /tmp/jaxspo-pipeline]

Builds ``--rows`` encoded preference pairs (chosen/rejected tokens int32, loss masks and valid bool,
``[rows, length]``; random lengths) as the encoder would, and prints JSON:

- ``memory``: this process's anonymous resident memory (RssAnon) with the encoded rows in host memory
  (the old path, on every process), then after ``spill`` (``data.spill_dir``), and after reading one
  epoch as process 0 of 4 — with the file-backed pages mapped in meanwhile (RssFile: clean page-cache
  pages, reclaimable; the kernel maps up to 16 neighbouring pages per fault, so reading a quarter of the
  rows at random maps nearly all pages).
- ``throughput``: rows per second this process reads (its shard of each batch of 64), with the rows
  in memory or spilled, 1 or 4 processes, 0 or 2 reader threads, buckets [128, 256].
- ``setup_seconds``: building the pipeline (bucket of every row); ``ms_per_global_batch_of_row_indices``:
  computing one global batch's 64 row indices from grain's shuffles.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np

from jaxspo.data.pipeline import BatchPipeline, process_shard
from jaxspo.data.row_store import spill

BATCH = 64


def rss_mib() -> dict[str, float]:
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Rss")
    )
    return {k: round(int(v.split()[0]) / 1024, 1) for k, v in fields.items()}


def encoded_rows(n: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"soft_label": np.ones(n, np.float32)}
    for side in ("chosen", "rejected"):
        lengths = rng.integers(16, length + 1, size=n)
        valid = np.arange(length)[None, :] < lengths[:, None]
        out[f"{side}_tokens"] = np.where(valid, rng.integers(3, 32000, size=(n, length), dtype=np.int32), 0).astype(
            np.int32
        )
        out[f"{side}_valid"] = valid
        out[f"{side}_loss_mask"] = valid & (np.arange(length)[None, :] >= 8)
    return out


def throughput(arrays: dict, processes: int, workers: int, batches: int) -> float:
    pipeline = BatchPipeline(
        arrays,
        BATCH,
        seed=0,
        buckets=[128, 256],
        shard=process_shard(BATCH, 0, processes),
        workers=workers,
        prefetch=4 * workers,
    )
    next(pipeline)  # plans the epoch
    start = time.perf_counter()
    rows = sum(len(next(pipeline)["soft_label"]) for _ in range(batches))
    pipeline.close()
    return round(rows / (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--out", default="/tmp/jaxspo-pipeline")
    args = parser.parse_args()
    base = rss_mib()["RssAnon"]
    arrays = encoded_rows(args.rows, args.length)
    size_mib = sum(a.nbytes for a in arrays.values()) / 2**20
    in_memory = rss_mib()["RssAnon"] - base
    start = time.perf_counter()
    pipeline = BatchPipeline(arrays, BATCH, seed=0, buckets=[128, 256])
    setup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(args.batches):
        pipeline.rows(step)
    index_ms = (time.perf_counter() - start) / args.batches * 1e3
    del pipeline
    result = {
        "rows": args.rows,
        "length": args.length,
        "encoded_mib": round(size_mib, 1),
        "setup_seconds": round(setup_seconds, 2),
        "ms_per_global_batch_of_row_indices": round(index_ms, 2),
        "throughput_rows_per_s": {},
    }
    for processes in (1, 4):
        for workers in (0, 2):
            result["throughput_rows_per_s"][f"memory, {processes} proc, {workers} threads"] = throughput(
                arrays, processes, workers, args.batches
            )
    mapped = spill(arrays, args.out, "bench")
    del arrays
    gc.collect()
    after_spill = rss_mib()
    for processes in (1, 4):
        for workers in (0, 2):
            result["throughput_rows_per_s"][f"spilled, {processes} proc, {workers} threads"] = throughput(
                mapped, processes, workers, args.batches
            )
    del mapped
    gc.collect()
    mapped = spill(encoded_rows(args.rows, args.length), args.out, "bench")  # fresh maps: no page read yet
    gc.collect()
    fresh = rss_mib()
    pipeline = BatchPipeline(mapped, BATCH, seed=0, buckets=[128, 256], shard=process_shard(BATCH, 0, 4))
    for _ in range(pipeline.batches_per_epoch):
        next(pipeline)
    epoch = rss_mib()
    result["memory_mib"] = {
        "rows in host memory (old path, every process): RssAnon": round(in_memory, 1),
        "after spill: RssAnon": round(after_spill["RssAnon"] - base, 1),
        "after one epoch as process 0 of 4: RssAnon": round(epoch["RssAnon"] - base, 1),
        "after one epoch as process 0 of 4: RssFile of the maps": round(epoch["RssFile"] - fresh["RssFile"], 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
