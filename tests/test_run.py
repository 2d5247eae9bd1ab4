"""End to end: a tiny run of the whole pipeline on a (2, 2, 2) mesh, and what it leaves in the run dir."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from transformers import AutoTokenizer

from jaxspo.config import load_config
from jaxspo.train.loop import train
from jaxspo.train.summary import summary_table
from tests.run_overrides import TINY_MODEL_AND_DATA

TINY_RUN = [
    *TINY_MODEL_AND_DATA,
    "trainer.sft_steps=6",
    "trainer.sft_batch_size=8",
    "trainer.steps=6",
    "trainer.batch_size=8",
    "trainer.eval_every=3",
    "trainer.grad_accum_steps=2",
    "eval.num_pairs=20",
    "eval.num_prompts=16",
    "eval.max_new_tokens=8",
    "logging.log_every=2",
    "logging.progress_bar=false",
    "mesh.data=2",
    "mesh.fsdp=2",
    "mesh.tensor=2",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config("configs/demo.yaml", TINY_RUN + [f"run_dir={run_dir}", "logging.peak_flops=3e9"])
    return cfg, train(cfg, "tiny")


def test_metrics_jsonl_has_trl_names_for_every_phase(run):
    _, result = run
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in rows]
    assert phases.count("sft") == 3 and phases.count("preference") == 3 and phases.count("eval") == 3
    pref = [r for r in rows if r["phase"] == "preference"][-1]
    for name in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "grad_norm",
        "learning_rate",
        "perf/tokens_per_second",
        "perf/computed_tokens_per_second",
        "perf/model_flops_per_second",
        "perf/mfu",
    ):
        assert np.isfinite(pref[name]), name
    assert pref["perf/computed_tokens_per_second"] >= pref["perf/tokens_per_second"] > 0  # padding is computed too
    assert pref["perf/mfu"] == pytest.approx(
        pref["perf/model_flops_per_second"] / 3e9
    )  # logging.peak_flops, × 1 process
    evals = [r for r in rows if r["phase"] == "eval"]
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert evals[0]["eval/kl"] == pytest.approx(0.0, abs=1e-5)  # before: policy is the reference
    for name in ("eval/gold/correctness", "eval/gold/brevity", "eval/logps_accuracy", "eval/rewards/accuracies"):
        assert 0.0 <= evals[-1][name] <= 1.0


def test_run_dir_artefacts(run):
    cfg, result = run
    d = result.run_dir
    assert load_config(d / "config.yaml").trainer.steps == 6
    assert AutoTokenizer.from_pretrained(str(d / "tokenizer")).eos_token == "<eos>"
    assert (d / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("events.out.tfevents") for p in (d / "tensorboard").iterdir())
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore((d / "params").resolve())
    expected = nnx.to_pure_dict(result.params)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_policy_moved_away_from_frozen_reference(run):
    cfg, result = run
    diffs = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(result.reference_params))
    ]
    assert min(diffs) > 0.0
    table = summary_table(result.before, result.after, "dpo")
    assert "gold correctness" in table and table.count("\n") >= 5
