"""``trainer.precompile``: every bucket width's step is compiled before step 1, and no step compiles again."""

import logging

import jax
import numpy as np

from jaxspo import host_memory
from jaxspo.config import load_config
from jaxspo.data.pipeline import BatchPipeline
from jaxspo.lora.views import FullView
from jaxspo.train.phase import Phase
from jaxspo.train.run import Run
from tests.test_pipeline import columns

TINY = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=2",
    "data.synthetic.num_train=64",
    "data.synthetic.num_sft=8",
    "data.synthetic.num_eval=8",
    "trainer.sft_steps=0",
    "trainer.steps=8",
    "trainer.batch_size=4",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "logging.plot=false",
    "checkpoint.every_steps=0",
    "data.layout=packed",
    "data.buckets=[24,32]",
]


def test_widths_are_the_buckets_that_fill_a_batch_and_example_does_not_move_the_iterator():
    lengths = np.array([4] * 9 + [12] * 3 + [30] * 4)  # bucket 16 holds 3 rows: no batch of 4
    pipeline = BatchPipeline(columns(16, 32, lengths), 4, seed=0, buckets=[8, 16])
    assert pipeline.buckets == [8, 16, 32] and pipeline.widths == [8, 32]
    next(pipeline)
    example = pipeline.example(32)
    assert pipeline.step == 1
    assert (
        example["chosen_tokens"].shape == (4, 32)
        and example["chosen_tokens"].dtype == np.int32
        and example["row"].shape == (4,)
    )
    seen = {next(pipeline)["chosen_valid"].shape[1] for _ in range(2 * pipeline.batches_per_epoch)}
    assert seen == set(pipeline.widths)


def test_a_bucketed_phase_compiles_each_width_once_before_step_1(tmp_path, caplog):
    cfg = load_config("configs/demo.yaml", TINY + [f"run_dir={tmp_path}"])
    (tmp_path / "run").mkdir()
    run = Run(cfg, tmp_path / "run")
    phase = Phase(
        run, "preference", cfg.trainer.steps, 1e-3, cfg.trainer.batch_size, run.encoded("train"), FullView.of(run)
    )
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


def test_a_held_heap_is_trimmed_exactly_before_a_batch_larger_than_any_before(tmp_path, monkeypatch, request):
    """trainer.host_heap=hold keeps freed temporaries mapped; a larger program's would need a new region, so the
    heap is trimmed first (docs/speed.md) — and only then, not at every change of width."""
    trims, waited = [], []
    monkeypatch.setattr(host_memory, "hold_freed_memory", lambda mode: True)  # leaves this process's heap alone
    monkeypatch.setattr(host_memory, "_held", True)
    monkeypatch.setattr(host_memory, "heap_bytes_in_use", lambda: 0)  # the wait is tested in test_host_memory.py
    monkeypatch.setattr(host_memory, "release_freed_memory", lambda: trims.append(phase.batches.step))
    monkeypatch.setattr(jax, "block_until_ready", lambda tree: waited.append(tree is phase.state))
    request.addfinalizer(host_memory.install("hold"))  # the loop hooks jaxspo train registers; removed at the end
    cfg = load_config("configs/demo.yaml", TINY + [f"run_dir={tmp_path}"])
    (tmp_path / "run").mkdir()
    run = Run(cfg, tmp_path / "run")
    phase = Phase(
        run, "preference", cfg.trainer.steps, 1e-3, cfg.trainer.batch_size, run.encoded("train"), FullView.of(run)
    )
    sizes = []
    for i in range(1, phase.batches.batches_per_epoch + 1):
        _, local = phase.take_step(i, run.params)
        sizes.append(sum(v.size for v in local.values()))
    new_largest = [
        i + 1 for i in range(1, len(sizes)) if sizes[i] > max(sizes[:i])
    ]  # pipeline steps taken when trimming
    assert new_largest and trims == new_largest, (sizes, trims)
    assert waited == [True] * len(sizes)  # every step first waited for the previous state
    run.log.close()
