"""Length bucketing: one-bucket batches cut to static widths, exact resume, and ≤ #buckets compiled steps."""

import numpy as np
import pytest

from jaxspo.data import write_jsonl
from jaxspo.data.bucketing import assign_buckets, choose_buckets, example_lengths, fill_underfull
from jaxspo.data.pipeline import BatchPipeline


def arrays(lengths, width=32):
    valid = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    return {
        "chosen_valid": valid,
        "rejected_valid": valid[:, ::-1] & False,
        "chosen_tokens": np.where(valid, 7, 0),
        "soft_label": np.arange(len(lengths), dtype=np.float32),
    }


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
        rows.append(
            {
                "prompt": "reverse " + " ".join(digits) + " :",
                "chosen": " ".join(answer),
                "rejected": " ".join(["um"] + answer[:-1] or ["um"]),
            }
        )
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("buckets", ["data.buckets=[12, 20]", "data.auto_buckets=3"])
def test_mixed_length_run_compiles_at_most_one_step_per_bucket(tmp_path, monkeypatch, buckets):
    from jaxspo.config import load_config
    from jaxspo.train import initialise, loop, phase

    for split, n in (("train", 96), ("test", 16)):
        write_jsonl(_mixed_length_rows(n), tmp_path / f"{split}.jsonl")
    steps, pipelines = [], []
    real, real_batches = initialise.make_train_step, phase.make_batches

    def recording(*args, **kwargs):
        step = real(*args, **kwargs)
        steps.append((type(args[6]).__name__, step))  # (the objective's type, TrainStep)
        return step

    def recording_batches(fields, batch_size, seed, widths, *args):
        pipelines.append((fields, batch_size, widths, real_batches(fields, batch_size, seed, widths, *args)))
        return pipelines[-1][-1]

    monkeypatch.setattr(initialise, "make_train_step", recording)
    monkeypatch.setattr(phase, "make_batches", recording_batches)
    cfg = load_config(
        "configs/demo.yaml",
        [
            "model.hidden_size=32",
            "model.intermediate_size=64",
            "model.num_layers=2",
            "trainer.sft_steps=0",
            "trainer.sft_batch_size=8",
            "trainer.steps=10",
            "trainer.batch_size=8",
            "trainer.eval_every=0",
            "eval.num_pairs=8",
            "eval.num_prompts=8",
            "eval.max_new_tokens=4",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "logging.plot=false",
            "checkpoint.every_steps=0",
            "checkpoint.save_final=false",
            "data.source.kind=jsonl",
            f"data.source.path={tmp_path}/{{split}}.jsonl",
            "data.max_length=32",
            buckets,
            f"run_dir={tmp_path}/run",
        ],
    )
    loop.train(cfg, "buckets")
    for kind, step in steps:
        compiled = step.fn._cache_size()
        assert 2 <= compiled <= 3, (kind, compiled)  # 3 buckets ([12, 20, 32] or the chosen ones); at least two visited
    for fields, batch_size, widths, pipeline in pipelines:  # the widths each phase's pipeline was given
        if buckets == "data.auto_buckets=3":
            assert widths == choose_buckets(example_lengths(fields), 3, batch_size, width=32) and len(widths) > 1
            assert (np.bincount(pipeline.bucket_of) >= batch_size).all()
        else:
            assert widths == [12, 20]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.buckets=[20, 12]",
            r"data.buckets must be ascending distinct lengths in \[2, data.max_length=32\], got \[20, 12\]",
        ),
        ("data.buckets=[16, 64]", r"data.buckets must be ascending .* got \[16, 64\]"),
        ("data.auto_buckets=-1", r"data.auto_buckets must be ≥ 0 \(0 = off\), got -1"),
        ("data.source.kind=csv", r"data.source.kind must be one of"),
        ("data.source.kind=parquet", r"data.source.path is required for data.source.kind=parquet"),
    ],
)
def test_data_config_errors_name_the_key(override, message):
    from jaxspo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config("configs/demo.yaml", [override])


def _brute_force_buckets(lengths, count, batch_size, width):
    """The cheapest ≤ ``count`` tops (fewest on ties) over every subset of the candidate tops, by enumeration."""
    import itertools

    rounded = np.minimum(-(-lengths // 8) * 8, width)
    tops = sorted(set(rounded.tolist()))
    best = None
    for k in range(1, count + 1):
        for chosen in itertools.combinations(tops[:-1], k - 1):
            widths = list(chosen) + [tops[-1]]
            members = np.bincount(assign_buckets(rounded, widths), minlength=k)
            if (members < batch_size).any():
                continue
            cost = int(np.asarray(widths)[assign_buckets(rounded, widths)].sum())
            if best is None or cost < best[0]:
                best = (cost, widths)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_chosen_buckets_are_the_cheapest_with_every_bucket_filling_a_batch(seed):
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([rng.integers(5, 30, size=40), rng.integers(40, 61, size=int(rng.integers(1, 12)))])
    for count, batch_size in ((1, 4), (2, 4), (3, 8), (4, 3), (5, 6)):
        widths = choose_buckets(lengths, count, batch_size, width=64)
        cost, expected = _brute_force_buckets(lengths, count, batch_size, 64)
        assert widths == expected, (count, batch_size)
        assert np.asarray(widths)[assign_buckets(lengths, widths)].sum() == cost
        assert len(widths) <= count and widths == sorted(set(widths)) and all(w % 8 == 0 for w in widths)
        assert (np.bincount(assign_buckets(lengths, widths)) >= batch_size).all()


def test_chosen_buckets_edge_cases():
    assert choose_buckets(np.full(10, 5), 4, 2, width=32) == [8]  # one length: one bucket, however many are allowed
    assert choose_buckets(np.array([3, 30]), 2, 4, width=32) == [32]  # fewer examples than a batch: the full width
    assert choose_buckets(np.array([60, 61, 62]), 1, 1, width=61) == [61]  # the top is capped at the row width
    with pytest.raises(ValueError, match="count and batch_size must be ≥ 1"):
        choose_buckets(np.array([3]), 0, 1, width=8)


def test_a_bucket_too_small_for_a_batch_passes_its_rows_up_and_no_row_is_starved():
    lengths = np.array([3] * 6 + [10] * 2 + [20] * 9 + [30] * 3)  # buckets 8 / 16 / 24 / 32 hold 6 / 2 / 9 / 3
    bucket_of = fill_underfull(assign_buckets(lengths, [8, 16, 24, 32]), lengths, 4)
    assert np.bincount(bucket_of).tolist() == [6, 0, 10, 4]  # 16's two rows go up to 24; 32 takes a row of 20 from 24
    assert (np.asarray([8, 16, 24, 32])[bucket_of] >= lengths).all()
    it = BatchPipeline(arrays(lengths), 4, seed=0, buckets=[8, 16, 24])
    assert it.widths == [8, 24, 32]
    seen = {row for _ in range(8 * it.batches_per_epoch) for row in next(it)["soft_label"].astype(int).tolist()}
    assert seen == set(range(len(lengths)))  # given buckets alone would never draw the rows of 16 and 32
    assert it.token_fraction() == pytest.approx(lengths.sum() / (6 * 8 + 10 * 24 + 4 * 32))
    assert it.token_fraction(one_width=True) == pytest.approx(lengths.sum() / (20 * 32))


def test_auto_buckets_and_given_buckets_exclude_each_other():
    from jaxspo.config import ConfigError, load_config

    with pytest.raises(
        ConfigError, match=r"data.auto_buckets=3 picks the bucket widths itself; set data.buckets=\[\] \(got \[12\]\)"
    ):
        load_config("configs/demo.yaml", ["data.auto_buckets=3", "data.buckets=[12]"])
