"""``trainer.precompile``: every bucket width's step is compiled before step 1, and no step compiles again."""

import logging

import jax
import numpy as np

from jaxspo.config import load_config
from jaxspo.data.pipeline import BatchPipeline
from jaxspo.train import loop
from tests.test_pipeline import columns

TINY = [
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "data.synthetic.num_train=64",
    "data.synthetic.num_sft=8", "data.synthetic.num_eval=8", "trainer.sft_steps=0", "trainer.steps=8", "trainer.batch_size=4",
    "logging.progress_bar=false", "logging.tensorboard=false", "logging.plot=false", "checkpoint.every_steps=0",
    "data.layout=packed", "data.buckets=[24,32]",
]


def test_widths_are_the_buckets_that_fill_a_batch_and_example_does_not_move_the_iterator():
    lengths = np.array([4] * 9 + [12] * 3 + [30] * 4)  # bucket 16 holds 3 rows: no batch of 4
    pipeline = BatchPipeline(columns(16, 32, lengths), 4, seed=0, buckets=[8, 16])
    assert pipeline.buckets == [8, 16, 32] and pipeline.widths == [8, 32]
    next(pipeline)
    example = pipeline.example(32)
    assert pipeline.step == 1
    assert example["chosen_tokens"].shape == (4, 32) and example["chosen_tokens"].dtype == np.int32 and example["row"].shape == (4,)
    seen = {next(pipeline)["chosen_valid"].shape[1] for _ in range(2 * pipeline.batches_per_epoch)}
    assert seen == set(pipeline.widths)


def test_a_bucketed_phase_compiles_each_width_once_before_step_1(tmp_path, caplog):
    cfg = load_config("configs/demo.yaml", TINY + [f"run_dir={tmp_path}"])
    (tmp_path / "run").mkdir()
    run = loop.Run(cfg, tmp_path / "run")
    phase = loop.Phase(run, "preference", cfg.trainer.steps, 1e-3, cfg.trainer.batch_size, run.encoded("train"))
    assert len(phase.batches.widths) >= 2, phase.batches.widths  # the test needs several programs
    compiled = lambda: [r for r in caplog.records if "compilation of jit(step)" in r.getMessage()]  # noqa: E731
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        phase.precompile(run.params)
        assert len(compiled()) == len(phase.batches.widths)
        taken = set()
        for i in range(1, phase.batches.batches_per_epoch + 1):  # one epoch: every batch, so every width
            metrics, local = phase.take_step(i, run.params)
            jax.block_until_ready(metrics)
            taken.add(local["packed_tokens"].shape[1])
        assert taken == set(phase.batches.widths)
        assert len(compiled()) == len(phase.batches.widths)  # the steps found every program compiled
    run.log.close()


def test_a_held_heap_is_trimmed_exactly_when_the_batch_width_changes(tmp_path, monkeypatch):
    """trainer.host_heap=hold keeps each program's freed temporaries mapped; a new width trims them first."""
    trims = []
    monkeypatch.setattr(loop, "heap_is_held", lambda: True)
    monkeypatch.setattr(loop, "release_freed_memory", lambda: trims.append(phase.batches.step))
    cfg = load_config("configs/demo.yaml", TINY + [f"run_dir={tmp_path}"])
    (tmp_path / "run").mkdir()
    run = loop.Run(cfg, tmp_path / "run")
    phase = loop.Phase(run, "preference", cfg.trainer.steps, 1e-3, cfg.trainer.batch_size, run.encoded("train"))
    widths = []
    for i in range(1, phase.batches.batches_per_epoch + 1):
        _, local = phase.take_step(i, run.params)
        widths.append(local["packed_tokens"].shape[1])
    changes = [i + 1 for i in range(1, len(widths)) if widths[i] != widths[i - 1]]  # pipeline steps taken when trimming
    assert changes and trims == changes, (widths, trims)
    run.log.close()
