"""Checkpoints: exact resume after SIGKILL, SIGTERM save-and-exit, corrupt checkpoints, non-finite steps."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxspo.checkpoint import PhaseCheckpoints
from jaxspo.config import load_config
from jaxspo.errors import PREEMPTED_EXIT_CODE, NonFiniteError
from jaxspo.losses import get_loss, register_loss
from jaxspo.train import loop
from jaxspo.train import run as run_module
from tests.run_overrides import TINY_MODEL_AND_DATA

REPO = Path(__file__).resolve().parents[1]
TINY = [
    *TINY_MODEL_AND_DATA,
    "trainer.sft_steps=8",
    "trainer.sft_batch_size=8",
    "trainer.steps=12",
    "trainer.batch_size=8",
    "trainer.eval_every=4",
    "eval.num_pairs=16",
    "eval.num_prompts=8",
    "eval.max_new_tokens=6",
    "logging.log_every=1",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "logging.plot=false",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=2",
]


def command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxspo", "train", "configs/demo.yaml", *TINY, f"run_dir={run_dir}", *extra]


# the `jaxspo train` processes below run with this process's numerics (tests/conftest.py sets the precision here)
ENV = os.environ | {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}


def train_here(run_dir: Path, *extra: str) -> None:
    """``jaxspo train`` of :data:`TINY` in this process (the same code and settings as :func:`command`; a process
    of its own would only import and start JAX again)."""
    loop.train(load_config("configs/demo.yaml", [*TINY, f"run_dir={run_dir}", *extra]))


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # perf/*: wall-time figures


def final_params(run_dir: Path):
    with ocp.StandardCheckpointer() as checkpointer:
        return jax.tree.leaves(checkpointer.restore((run_dir / "params").resolve()))


def wait_for_step(proc: subprocess.Popen, run_dir: Path, phase: str, step: int, timeout: float = 300) -> None:
    """Polls metrics.jsonl until ``phase`` has logged ``step``."""
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training exited early with {proc.returncode}"
        if path.exists() and any(
            r["phase"] == phase and r["step"] >= step for r in map(json.loads, path.read_text().splitlines())
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{phase} step {step} not reached")


def copy_as_it_stood(finished: Path, run_dir: Path, removed: tuple[str, ...], rows: int) -> None:
    """``finished``'s run directory as the run left it earlier: a copy without the paths ``removed`` (relative to
    it) and with only the first ``rows`` rows of metrics.jsonl (a run restarted from it redoes what they held)."""
    shutil.copytree(finished, run_dir)
    for path in removed:
        shutil.rmtree(run_dir / path)
    lines = (finished / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("".join(lines[:rows]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train_here(run_dir)
    return run_dir


@pytest.mark.slow
def test_sigkill_and_sigterm_at_random_steps_then_resume_is_bit_identical(uninterrupted, tmp_path):
    """Killed in SFT and early in the preference phase, preempted (SIGTERM) late in it, each a `jaxspo train`
    process of its own, then resumed to the end (in this process, as the uninterrupted run was made): the
    uninterrupted run, bit for bit."""
    rng = random.Random(1234)
    stops = [
        ("sft", rng.randint(2, 7), signal.SIGKILL),
        ("preference", rng.randint(1, 5), signal.SIGKILL),
        ("preference", rng.randint(6, 11), signal.SIGTERM),
    ]
    for phase, step, stop in stops:
        proc = subprocess.Popen(
            command(tmp_path), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        wait_for_step(proc, tmp_path, phase, step)
        proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=120)
    # the SIGTERM: a checkpoint of the step it arrived at, then the preemption exit status
    assert proc.returncode == PREEMPTED_EXIT_CODE, stderr
    assert "SIGTERM received: saved preference step" in stderr
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints" / "preference").iterdir() if p.name.isdigit())
    assert saved and saved[-1] >= stops[-1][1]
    train_here(tmp_path)
    assert metrics(tmp_path) == metrics(uninterrupted)
    for a, b in zip(final_params(tmp_path), final_params(uninterrupted)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resume_on_another_mesh_reshards_the_checkpoint(uninterrupted, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    checkpoints = run_dir / "checkpoints" / "preference"
    *_, before, latest = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    shutil.rmtree(checkpoints / str(latest))  # as if stopped after the checkpoint before it
    shutil.rmtree(run_dir / "params")
    # resume with a different mesh shape: Orbax reshards onto the new layout
    with caplog.at_level("INFO", logger="jaxspo"):
        train_here(run_dir, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    assert f"resuming preference at step {before}" in caplog.text
    for a, b in zip(final_params(run_dir), final_params(uninterrupted)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    ours, theirs = metrics(run_dir), metrics(uninterrupted)
    assert [(r["phase"], r["step"]) for r in ours] == [(r["phase"], r["step"]) for r in theirs]


@pytest.mark.slow  # reads the checkpoints of the uninterrupted whole run (a subprocess)
def test_corrupt_latest_checkpoint_falls_back_to_previous(uninterrupted, tmp_path, caplog):
    directory = tmp_path / "preference"
    shutil.copytree(uninterrupted / "checkpoints" / "preference", directory)
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    assert len(steps) == 2
    for path in (directory / str(steps[-1]) / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")
    cfg = load_config(None, TINY)
    checkpoints = PhaseCheckpoints(directory, cfg.checkpoint)
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.metadata(
            (uninterrupted / "checkpoints" / "preference" / str(steps[0]) / "state").resolve()
        )
    # restore needs a target with shapes and shardings: the state as saved, placed on the default device
    target = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), saved.item_metadata.tree)
    with caplog.at_level("WARNING", logger="jaxspo"):
        found = checkpoints.restore_latest(target)
    checkpoints.close()
    assert found is not None and found[0] == steps[0]
    assert f"checkpoint {directory / str(steps[-1])} is unreadable" in caplog.text


MARK = 0.7777


@register_loss("test_nan_on_marked_pair")
def nan_on_marked_pair(logps, cfg):
    """DPO, but NaN for the pair whose soft label is the marker."""
    marked = jnp.abs(logps.soft_label - MARK) < 1e-4
    return get_loss("dpo").apply(logps, cfg) + jnp.where(marked, jnp.nan, 0.0)


@pytest.fixture
def marked_task(monkeypatch):
    real = run_module.build_synthetic_task

    def with_marked_row(cfg):
        task = real(cfg)
        task.splits["train"][5]["soft_label"] = MARK
        return task

    monkeypatch.setattr(run_module, "build_synthetic_task", with_marked_row)


# the NaN runs evaluate only before and after (their tests read the steps and checkpoints, not the evaluations)
NAN_RUN = TINY + ["loss.terms={test_nan_on_marked_pair: 1.0}", "trainer.sft_steps=0", "trainer.eval_every=0"]


@pytest.mark.slow  # a whole run until the marked row
def test_nan_mid_run_stops_and_keeps_last_good_checkpoint(marked_task, tmp_path):
    cfg = load_config("configs/demo.yaml", NAN_RUN + ["trainer.steps=40", f"run_dir={tmp_path}"])
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite loss or gradient at preference step \d+ \(batch \d+, data rows "
        r"\[.*\b5\b.*\]\); the update was not applied and the last good checkpoint is step \d+",
    ):
        loop.train(cfg, "nan")
    found = PhaseCheckpoints(tmp_path / "checkpoints" / "preference", cfg.checkpoint)
    step = found.latest_step()
    assert step is not None
    found.close()


@pytest.mark.slow  # a whole 20-step run
def test_nan_mid_run_skip_mode_completes_with_finite_params(marked_task, tmp_path):
    # 64 rows / 8 per batch: 20 steps are 2.5 epochs; no checkpoints (the test reads the final params and metrics)
    run = ["data.synthetic.num_train=64", "trainer.steps=20", "trainer.on_nonfinite=skip", "checkpoint.every_steps=0"]
    cfg = load_config("configs/demo.yaml", NAN_RUN + run + [f"run_dir={tmp_path}"])
    result = loop.train(cfg, "nan")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result.params))
    last = [r for r in metrics(tmp_path) if r["phase"] == "preference"][-1]
    assert last["skipped_steps"] >= 2  # the marked row is seen in each of 2+ epochs
