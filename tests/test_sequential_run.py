"""The ``sequential`` recipe end to end: cached frozen log-probs and offsets, stage checkpoints, exact resume."""

import dataclasses
import os
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxspo.checkpoint import save_params
from jaxspo.config import load_config
from jaxspo.train.loop import train
from jaxspo.train.run import Run
from jaxspo.train.scoring import PairScorer
from jaxspo.train.stages import SequentialStages
from tests.test_resume import REPO, copy_as_it_stood, final_params, metrics, wait_for_step
from tests.run_overrides import QUIET, TINY_MODEL_AND_DATA

TINY = [
    *TINY_MODEL_AND_DATA,
    "trainer.sft_steps=8",
    "trainer.sft_batch_size=8",
    "trainer.steps=6",
    "trainer.batch_size=8",
    "trainer.eval_every=3",
    "eval.num_pairs=16",
    "eval.num_prompts=8",
    "eval.max_new_tokens=6",
    "logging.log_every=1",
    *QUIET,
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=2",
]
STAGES = "stages=[{dimension: correctness, beta: 0.5}, {dimension: brevity, beta: 0.2, lambdas: [2.0]}]"


@pytest.mark.slow
def test_offsets_come_from_frozen_logps_cached_by_data_and_weights(tmp_path):
    cache = tmp_path / "cache"
    cfg = load_config(
        "configs/sequential.yaml",
        TINY + [STAGES, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", f"loss.reference_cache_dir={cache}"],
    )
    (tmp_path / "run").mkdir()
    run = Run(cfg, tmp_path / "run")
    stages = SequentialStages(run)
    pi0 = run.params
    save_params(pi0, stages.policy_dir(0))
    pi1 = jax.tree.map(lambda x: x * 1.1, pi0)
    scorer = PairScorer(run.graphdef, run.mesh, cfg.mesh.rules, cfg.trainer.batch_size)
    arrays = stages.train_arrays[1]  # brevity pairs
    c0, r0 = scorer(pi0, arrays)
    c1, r1 = scorer(pi1, arrays)

    views = lambda pi_1: lambda n: (run.graphdef, pi_1 if n == 1 else pi0)  # noqa: E731
    fields = stages.prepared(1, views(pi1)).fields
    np.testing.assert_allclose(fields["reference_chosen_logps"], c1, atol=1e-5)
    np.testing.assert_allclose(fields["reference_rejected_logps"], r1, atol=1e-5)
    expected = 2.0 * 0.5 * ((c1 - r1) - (c0 - r0))  # λ_{2,1}·[R_1(y_w) − R_1(y_l)], R_1 = β_1 log π_1/π_0
    np.testing.assert_allclose(fields["offset"], expected, atol=1e-4)
    assert np.abs(expected).max() > 0.1
    cached = set(cache.glob("*.npz"))
    assert len(cached) == 2  # the brevity pairs under π_0 and under π_1

    # λ is not part of the key: a new λ reuses both passes and only changes the offset
    run.cfg = dataclasses.replace(cfg, stages=[cfg.stages[0], dataclasses.replace(cfg.stages[1], lambdas=[0.0])])
    again = stages.prepared(1, views(pi1)).fields
    assert set(cache.glob("*.npz")) == cached
    np.testing.assert_array_equal(again["offset"], 0.0)
    np.testing.assert_array_equal(again["reference_chosen_logps"], fields["reference_chosen_logps"])
    # other data (stage 1's correctness pairs) or other weights (π_1 changed): new keys
    stages.prepared(0, views(pi0))
    assert len(set(cache.glob("*.npz")) - cached) == 1
    stages.prepared(1, views(jax.tree.map(lambda x: x * 1.2, pi0)))
    assert len(set(cache.glob("*.npz")) - cached) == 2  # π_0's pass hit, the new π_1's did not


@pytest.mark.slow
def test_a_stage_evaluates_the_metrics_its_preparations_add_on_its_own_pairs_and_beta(tmp_path):
    """selfsup's preparation in stage 2 adds ``eval/selfsup/*`` (the level rewards of stage 2's held-out brevity
    pairs): level 0, the originals, is β_2·(log π_2 − log π_1) of their chosen responses, with stage 2's β."""
    selfsup = [
        "loss.selfsup.weight=0.5",
        "loss.selfsup.levels=2",
        "loss.selfsup.fraction=0.3",
        "loss.selfsup.degrade=chosen",
    ]
    cfg = load_config("configs/sequential.yaml", TINY + [STAGES, *selfsup, f"loss.reference_cache_dir={tmp_path}"])
    (tmp_path / "run").mkdir()
    run = Run(cfg, tmp_path / "run")
    stages = SequentialStages(run)
    pi0 = run.params
    pi1, pi2 = (jax.tree.map(lambda x, s=s: x * s, pi0) for s in (1.1, 1.2))
    prepared = stages.prepared(1, lambda n: (run.graphdef, pi1 if n == 1 else pi0))
    assert prepared.eval_metrics  # selfsup's level rewards on the stage's held-out pairs
    stages.eval_metrics[1] = prepared.eval_metrics  # as the stage's preparation hook keeps them
    metrics = stages.evaluate(1, run.graphdef, pi2, pi1)

    scorer = PairScorer(run.graphdef, run.mesh, cfg.mesh.rules, cfg.trainer.batch_size)
    chosen = scorer(pi2, stages.eval_arrays[1])[0] - scorer(pi1, stages.eval_arrays[1])[0]
    assert cfg.stages[1].beta == 0.2 != cfg.loss.beta
    assert metrics["eval/selfsup/reward_level_0"] == pytest.approx(0.2 * chosen.mean(), rel=1e-4, abs=1e-5)
    assert abs(metrics["eval/selfsup/reward_level_0"]) > 1e-3  # π_2 ≠ π_1: the check can fail
    assert {"eval/selfsup/reward_level_1", "eval/selfsup/ranking_accuracy"} <= set(metrics)
    assert 0.0 <= metrics["eval/selfsup/ranking_accuracy"] <= 1.0


def run_overrides(run_dir) -> list[str]:
    return [*TINY, STAGES, f"run_dir={run_dir}", f"loss.reference_cache_dir={run_dir / 'cache'}"]


def command(run_dir) -> list[str]:
    return [sys.executable, "-m", "jaxspo", "train", "configs/sequential.yaml", *run_overrides(run_dir)]


def train_here(run_dir) -> None:
    """``jaxspo train`` of the recipe in this process (the runs started below are the same code and settings)."""
    train(load_config("configs/sequential.yaml", run_overrides(run_dir)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train_here(run_dir)
    return run_dir


@pytest.mark.slow
def test_stages_checkpoint_evaluate_and_log_per_stage(uninterrupted):
    checkpoints = uninterrupted / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} >= {"reference", "sft", "stage-1", "stage-2", "policy-1", "policy-2"}
    rows = metrics(uninterrupted)
    assert [r["step"] for r in rows if r["phase"] == "stage-2"] == [1, 2, 3, 4, 5, 6]
    evals = [(r["step"], r["eval/stage"]) for r in rows if r["phase"] == "eval"]
    assert evals == [(0, 0.0), (3, 1.0), (6, 1.0), (9, 2.0), (12, 2.0)]
    assert all({"eval/gold/correctness", "eval/gold/brevity"} <= set(r) for r in rows if r["phase"] == "eval")
    assert all(r["sequential/offset"] == 0.0 for r in rows if r["phase"] == "stage-1")
    assert any(r["sequential/offset"] != 0.0 for r in rows if r["phase"] == "stage-2")
    assert len(list((uninterrupted / "cache").glob("*.npz"))) == 3  # stage 1 under π_0; stage 2 under π_0, π_1


@pytest.mark.slow
def test_sigkill_mid_stages_then_resume_is_bit_identical(uninterrupted, tmp_path):
    """Restarted from the run directory as the SFT warm start left it (its last checkpoint written: a copy of the
    uninterrupted run's), killed for real (SIGKILL) in stage 1, resumed and killed again in stage 2, then resumed to
    the end (in this process, as the uninterrupted run was made): the uninterrupted run's metrics and weights, bit
    for bit."""
    run_dir = tmp_path / "run"
    sft_rows = sum(row["phase"] == "sft" for row in metrics(uninterrupted))
    later = ("reference", "stage-1", "stage-2", "policy-1", "policy-2")
    copy_as_it_stood(uninterrupted, run_dir, ("params", "cache", *(f"checkpoints/{p}" for p in later)), sft_rows)
    rng = random.Random(7)
    kills = [("stage-1", rng.randint(2, 5)), ("stage-2", rng.randint(1, 5))]
    env = os.environ | {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}  # as tests/conftest.py sets for this process
    for phase, step in kills:
        proc = subprocess.Popen(
            command(run_dir), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_step(proc, run_dir, phase, step, timeout=600)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "checkpoints" / "policy-2").exists()
    train_here(run_dir)
    assert metrics(run_dir) == metrics(uninterrupted)
    for a, b in zip(final_params(run_dir), final_params(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)
