"""The grain batch pipeline: per-process shards, deterministic epoch shuffles, exact resume, spilled rows."""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspo import distributed
from jaxspo.data.bucketing import assign_buckets
from jaxspo.data.pipeline import BatchPipeline, make_batches, process_shard
from jaxspo.data.row_store import spill
from tests.run_overrides import QUIET, TINY_MODEL_SMALL_DATA


def columns(n: int, width: int = 16, lengths=None) -> dict[str, np.ndarray]:
    """``row`` = the row's index; ``chosen_valid`` has ``lengths`` (default: all 4) leading True."""
    lengths = np.full(n, 4) if lengths is None else np.asarray(lengths)
    valid = np.arange(width)[None, :] < lengths[:, None]
    return {
        "row": np.arange(n),
        "chosen_valid": valid,
        "chosen_tokens": np.where(valid, np.arange(n)[:, None], 0).astype(np.int32),
    }


def take(pipeline: BatchPipeline, count: int) -> list[list[int]]:
    return [next(pipeline)["row"].tolist() for _ in range(count)]


@pytest.mark.parametrize("processes", [2, 4])
def test_process_shards_are_disjoint_cover_the_epoch_and_form_the_global_batch(processes):
    n, batch = 50, 8  # 6 batches per epoch, 2 rows left over
    whole = BatchPipeline(columns(n), batch, seed=3)
    steps = 2 * whole.batches_per_epoch
    global_batches = take(whole, steps)
    shards = [
        BatchPipeline(columns(n), batch, seed=3, shard=process_shard(batch, p, processes)) for p in range(processes)
    ]
    local = [take(s, steps) for s in shards]  # [process][step] → rows
    for step in range(steps):  # the processes' rows, in process order, are the global batch
        assert sum((local[p][step] for p in range(processes)), []) == global_batches[step]
        assert all(len(local[p][step]) == batch // processes for p in range(processes))
    for epoch in range(2):
        span = range(epoch * whole.batches_per_epoch, (epoch + 1) * whole.batches_per_epoch)
        per_process = [set(sum((local[p][s] for s in span), [])) for p in range(processes)]
        assert sum(len(rows) for rows in per_process) == len(set().union(*per_process)) == 48  # disjoint; one pass
        assert set().union(*per_process) <= set(range(n))
        np.testing.assert_array_equal(
            sorted(set().union(*per_process)), np.sort(np.concatenate([whole.rows(s) for s in span]))
        )


def test_process_shard_errors():
    assert process_shard(8, 3, 4) == slice(6, 8)
    with pytest.raises(ValueError, match="does not divide among 3 processes"):
        process_shard(8, 0, 3)
    with pytest.raises(ValueError, match=r"process_index 4 is not in \[0, 4\)"):
        process_shard(8, 4, 4)


def test_same_seed_same_order_other_seed_other_order():
    first, again = take(BatchPipeline(columns(40), 4, seed=5), 25), take(BatchPipeline(columns(40), 4, seed=5), 25)
    assert first == again
    assert first != take(BatchPipeline(columns(40), 4, seed=6), 25)
    # grain seeds epoch e with seed + e; the pipeline derives its seeds, so seed 0's epoch 1 is not seed 1's epoch 0
    zero, one = BatchPipeline(columns(40), 4, seed=0), BatchPipeline(columns(40), 4, seed=1)
    assert [zero.rows(s).tolist() for s in range(10, 20)] != [one.rows(s).tolist() for s in range(10)]


def test_epochs_reshuffle_deterministically():
    pipeline = BatchPipeline(columns(10), 3, seed=0)
    assert pipeline.batches_per_epoch == 3
    epochs = [sum(take(pipeline, 3), []) for _ in range(3)]
    assert pipeline.step == 9 and pipeline.epoch == 3
    for seen in epochs:
        assert len(seen) == len(set(seen)) == 9  # one pass without repeats, one example left out
    assert epochs[0] != epochs[1] != epochs[2]
    fresh = BatchPipeline(columns(10), 3, seed=0)  # epoch 2 straight away: the same draw
    assert sum((fresh.rows(s).tolist() for s in range(6, 9)), []) == epochs[2]


@pytest.mark.parametrize("buckets", [[], [6, 10]])
def test_resume_mid_epoch_gives_the_uninterrupted_batches(buckets):
    lengths = np.random.default_rng(1).integers(2, 17, size=60)
    uninterrupted = take(BatchPipeline(columns(60, lengths=lengths), 4, seed=2, buckets=buckets), 40)
    original = BatchPipeline(columns(60, lengths=lengths), 4, seed=2, buckets=buckets, shard=process_shard(4, 1, 2))
    take(original, 7)  # mid-epoch
    state = json.loads(json.dumps(original.state()))  # as stored in a checkpoint
    assert state["grain"] == {"next_index": 7}
    resumed = BatchPipeline(columns(60, lengths=lengths), 4, seed=2, buckets=buckets, shard=process_shard(4, 1, 2))
    resumed.restore(state)
    assert resumed.step == 7
    assert take(resumed, 33) == take(original, 33) == [rows[2:] for rows in uninterrupted[7:]]
    with pytest.raises(ValueError, match=r"state\['seed'\]"):
        BatchPipeline(columns(60, lengths=lengths), 4, seed=3, buckets=buckets).restore(state)
    with pytest.raises(ValueError, match=r"state\['num_examples'\]"):
        BatchPipeline(columns(61), 4, seed=2, buckets=buckets).restore(state)
    with pytest.raises(ValueError, match="next_index"):
        resumed.restore(state | {"grain": {}})


def test_reader_threads_and_prefetch_do_not_change_the_batches():
    lengths = np.random.default_rng(0).integers(2, 17, size=64)
    plain = BatchPipeline(columns(64, lengths=lengths), 4, seed=1, buckets=[8])
    threaded = BatchPipeline(columns(64, lengths=lengths), 4, seed=1, buckets=[8], workers=3, prefetch=8)
    for _ in range(40):
        a, b = next(plain), next(threaded)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert threaded.step == 40  # what was consumed, not what was read ahead
    threaded.close()


def test_every_process_batch_comes_from_one_bucket_at_the_same_width():
    lengths = np.random.default_rng(0).integers(3, 33, size=100)
    shards = [
        BatchPipeline(columns(100, 32, lengths), 4, seed=3, buckets=[8, 16], shard=process_shard(4, p, 2))
        for p in range(2)
    ]
    assert shards[0].buckets == [8, 16, 32]
    widths = set()
    for _ in range(shards[0].batches_per_epoch + 5):
        batches = [next(s) for s in shards]
        width = batches[0]["chosen_valid"].shape[1]
        assert all(b["chosen_valid"].shape == b["chosen_tokens"].shape == (2, width) for b in batches)
        rows = np.concatenate([b["row"] for b in batches])
        assert (assign_buckets(lengths[rows], shards[0].buckets) == shards[0].buckets.index(width)).all()
        widths.add(width)
    assert widths == {8, 16, 32}


@pytest.mark.parametrize(
    ("arrays", "kwargs", "message"),
    [
        ({"x": np.arange(4), "y": np.arange(5)}, {}, "equal leading"),
        ({"x": np.arange(4)}, {"batch_size": 5}, "cannot fill"),
        ({"x": np.arange(4)}, {"batch_size": 0}, "batch_size"),
        ({"x": np.arange(4)}, {"workers": -1}, "workers"),
        ({}, {}, "empty"),
    ],
)
def test_bad_input_is_named(arrays, kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchPipeline(arrays, **({"batch_size": 2, "seed": 0} | kwargs))


def test_spilled_rows_give_the_same_batches_and_leave_no_files(tmp_path):
    lengths = np.random.default_rng(0).integers(2, 17, size=40)
    mapped = spill(columns(40, lengths=lengths), tmp_path, "train")
    assert all(isinstance(a, np.memmap) for a in mapped.values()) and os.listdir(tmp_path) == []
    for a, b in zip(
        take(BatchPipeline(mapped, 4, seed=0, buckets=[8]), 20),
        take(BatchPipeline(columns(40, lengths=lengths), 4, seed=0, buckets=[8]), 20),
    ):
        assert a == b


def test_the_loop_reads_the_rows_of_its_devices_and_assembles_the_global_batch():
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    data = columns(24)
    shardings = {"row": sharding, "chosen_tokens": NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))}
    pipeline = make_batches({k: data[k] for k in shardings}, 8, seed=0, shardings=shardings)
    np.testing.assert_array_equal(pipeline.shard, np.arange(8))  # one process holds every row
    local = next(pipeline)
    batch = distributed.from_process_rows(local, shardings, 8)
    np.testing.assert_array_equal(np.asarray(batch["row"]), pipeline.rows(0))
    assert batch["chosen_tokens"].sharding == shardings["chosen_tokens"]


def test_data_config_errors_name_the_key():
    from jaxspo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.workers must be >= 0, got -1"):
        load_config("configs/demo.yaml", ["data.workers=-1"])
    with pytest.raises(ConfigError, match="data.prefetch must be >= 0"):
        load_config("configs/demo.yaml", ["data.prefetch=-2"])


@pytest.mark.slow
def test_a_run_on_spilled_rows_with_reader_threads_logs_the_same_metrics(tmp_path):
    """End to end: ``data.spill_dir`` (memory-mapped rows, through the precomputed reference's pass
    too) and ``data.workers=0`` log exactly what in-memory rows read by 2 prefetching threads log."""
    from jaxspo.config import load_config
    from jaxspo.train.loop import train
    from jaxspo.train.metrics_log import read_metrics

    tiny = [
        *TINY_MODEL_SMALL_DATA,
        "data.buckets=[16]",
        "trainer.sft_steps=4",
        "trainer.sft_batch_size=8",
        "trainer.steps=5",
        "trainer.batch_size=8",
        "trainer.eval_every=0",
        "eval.num_pairs=8",
        "eval.num_prompts=4",
        "eval.max_new_tokens=4",
        "logging.log_every=1",
        *QUIET,
        "checkpoint.every_steps=0",
        "checkpoint.save_final=false",
        "loss.reference=precomputed",
        f"loss.reference_cache_dir={tmp_path}/cache",
    ]
    logged = []
    for name, extra in (
        ("spilled", [f"data.spill_dir={tmp_path}/spill", "data.workers=0", "data.prefetch=0"]),
        ("memory", ["data.workers=2", "data.prefetch=4"]),
    ):
        train(load_config("configs/demo.yaml", tiny + extra + [f"run_dir={tmp_path}/{name}"]), name)
        logged.append(
            [
                {k: v for k, v in r.items() if not k.startswith("perf/")}
                for r in read_metrics(tmp_path / name / "metrics.jsonl")
            ]
        )  # perf/*: wall time
    assert len(logged[0]) == 4 + 5 + 2 and logged[0] == logged[1]
    assert os.listdir(tmp_path / "spill") == []
