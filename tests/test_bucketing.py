"""Length bucketing: one-bucket batches cut to static widths, exact resume, and ≤ #buckets compiled steps."""

import numpy as np
import pytest

from jaxspo.data import write_jsonl
from jaxspo.data.bucketing import assign_buckets
from jaxspo.data.pipeline import BatchPipeline


def arrays(lengths, width=32):
    valid = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    return {"chosen_valid": valid, "rejected_valid": valid[:, ::-1] & False, "chosen_tokens": np.where(valid, 7, 0), "soft_label": np.arange(len(lengths), dtype=np.float32)}


def test_batches_come_from_one_bucket_and_resume_exactly():
    lengths = np.random.default_rng(0).integers(3, 33, size=100)
    it = BatchPipeline(arrays(lengths), 4, seed=3, buckets=[8, 16])
    assert it.buckets == [8, 16, 32]
    counts = np.bincount(assign_buckets(lengths, it.buckets), minlength=3)
    assert it.batches_per_epoch == (counts // 4).sum()
    seen = []
    for step in range(2 * it.batches_per_epoch + 3):
        batch = next(it)
        rows = batch["soft_label"].astype(int)
        width = batch["chosen_valid"].shape[1]
        assert width in it.buckets and batch["chosen_tokens"].shape == (4, width)
        bucket = it.buckets.index(width)
        assert (assign_buckets(lengths[rows], it.buckets) == bucket).all()  # one bucket per batch
        assert (lengths[rows] <= width).all() and batch["chosen_valid"].sum(1).tolist() == lengths[rows].tolist()
        seen.append(rows.tolist())
    first_epoch = sum(seen[: it.batches_per_epoch], [])
    assert len(set(first_epoch)) == len(first_epoch)  # no repeats within an epoch
    resumed = BatchPipeline(arrays(lengths), 4, seed=3, buckets=[8, 16])
    resumed.restore(BatchPipeline(arrays(lengths), 4, seed=3, buckets=[8, 16]).state() | {"grain": {"next_index": 5}})
    assert [next(resumed)["soft_label"].astype(int).tolist() for _ in range(len(seen) - 5)] == seen[5:]
    with pytest.raises(ValueError, match=r"state\['buckets'\]"):
        BatchPipeline(arrays(lengths), 4, seed=3, buckets=[8]).restore(it.state())


def test_without_buckets_every_batch_has_the_full_width():
    lengths = np.full(10, 5)
    one = BatchPipeline(arrays(lengths), 3, seed=1, buckets=[])
    assert one.buckets == [32] and one.batches_per_epoch == 3
    assert {next(one)["chosen_valid"].shape for _ in range(7)} == {(3, 32)}


def _mixed_length_rows(n):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        digits = [str(d) for d in rng.integers(0, 10, size=1 + i % 10)]
        answer = digits[::-1]
        rows.append({"prompt": "reverse " + " ".join(digits) + " :", "chosen": " ".join(answer), "rejected": " ".join(["um"] + answer[:-1] or ["um"])})
    return rows


@pytest.mark.slow
def test_mixed_length_run_compiles_at_most_one_step_per_bucket(tmp_path, monkeypatch):
    from jaxspo.config import load_config
    from jaxspo.train import loop

    for split, n in (("train", 96), ("test", 16)):
        write_jsonl(_mixed_length_rows(n), tmp_path / f"{split}.jsonl")
    steps = []
    real = loop.make_train_step

    def recording(*args, **kwargs):
        step = real(*args, **kwargs)
        steps.append((args[6], step))  # (phase, TrainStep)
        return step

    monkeypatch.setattr(loop, "make_train_step", recording)
    cfg = load_config("configs/demo.yaml", [
        "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "trainer.sft_steps=0",
        "trainer.sft_batch_size=8", "trainer.steps=10", "trainer.batch_size=8", "trainer.eval_every=0",
        "eval.num_pairs=8", "eval.num_prompts=8", "eval.max_new_tokens=4", "logging.progress_bar=false",
        "logging.tensorboard=false", "logging.plot=false", "checkpoint.every_steps=0", "checkpoint.save_final=false",
        "data.source.kind=jsonl", f"data.source.path={tmp_path}/{{split}}.jsonl", "data.max_length=32",
        "data.buckets=[12, 20]", f"run_dir={tmp_path}/run",
    ])
    loop.train(cfg, "buckets")
    for phase, step in steps:
        compiled = step.fn._cache_size()
        assert 2 <= compiled <= 3, (phase, compiled)  # 3 buckets: [12, 20, 32]; at least two of them visited


@pytest.mark.parametrize(("override", "message"), [
    ("data.buckets=[20, 12]", r"data.buckets must be ascending distinct lengths in \[2, data.max_length=32\], got \[20, 12\]"),
    ("data.buckets=[16, 64]", r"data.buckets must be ascending .* got \[16, 64\]"),
    ("data.source.kind=csv", r"data.source.kind must be one of"),
    ("data.source.kind=parquet", r"data.source.path is required for data.source.kind=parquet"),
])
def test_data_config_errors_name_the_key(override, message):
    from jaxspo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config("configs/demo.yaml", [override])
