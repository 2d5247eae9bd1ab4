"""A LoRA run end to end: checkpoints hold adapters only (resume checks the base), soft_spo with its KL regulariser
trains adapters against the adapter_off reference, and `jaxspo eval` of the run merges its adapters."""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxspo import cli
from jaxspo.config import load_config
from jaxspo.errors import BaseChangedError
from jaxspo.train import loop
from tests.run_overrides import QUIET, TINY_MODEL_SMALL_DATA

RUN = [
    *TINY_MODEL_SMALL_DATA,
    "lora.rank=2",
    "trainer.sft_steps=0",
    "trainer.steps=4",
    "trainer.batch_size=8",
    "trainer.eval_every=0",
    "eval.num_pairs=16",
    "eval.num_prompts=8",
    "eval.max_new_tokens=4",
    "checkpoint.every_steps=2",
    *QUIET,
]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One LoRA run that the tests below read: soft_spo_ranked (the list forward) with its KL regulariser (the
    sampler on the adapted policy, the in-step KL against the base with adapters off), checkpoints every 2 steps."""
    run_dir = tmp_path_factory.mktemp("lora_run")
    overrides = RUN + ["loss.terms={soft_spo_ranked: 1.0}", "loss.kl.beta=0.5", "loss.kl.prompts=8"]
    return overrides, run_dir, loop.train(load_config("configs/lora_dpo.yaml", overrides + [f"run_dir={run_dir}"]))


@pytest.mark.slow
def test_lora_run_checkpoints_adapters_only_and_resume_refuses_a_changed_base(lora_run, tmp_path):
    overrides, run_dir, result = lora_run
    assert result.before["eval/kl"] == 0.0 and result.before["eval/rewards/margins"] == 0.0  # adapted = base at step 0
    saved = json.loads((run_dir / "checkpoints" / "preference" / "4" / "state" / "_METADATA").read_text())[
        "tree_metadata"
    ]
    weights = [key for key in saved if key.endswith("'value')")]  # params and Adam's mu / nu
    assert len(weights) == 3 * 14 and all("_lora'" in key for key in weights), (
        weights
    )  # 7 adapters × (a, b); no base weight
    assert (
        sum(x.size for x in jax.tree.leaves(result.params))
        < sum(x.size for x in jax.tree.leaves(result.reference_params)) / 3
    )
    assert not (run_dir / "checkpoints" / "reference").exists()  # the base is the seeded init: a pointer suffices
    assert json.loads((run_dir / "base.json").read_text())["kind"] == "init"
    shutil.copytree(run_dir, tmp_path / "run")  # the run the other test reads stays as it ended
    changed = [f"run_dir={tmp_path / 'run'}", "trainer.steps=6", "trainer.seed=1"]
    with pytest.raises(BaseChangedError, match=r"checkpoint .*preference/4 was made on a base model with sha256"):
        loop.train(load_config("configs/lora_dpo.yaml", overrides + changed))


@pytest.mark.slow
def test_soft_spo_with_its_kl_regulariser_trains_adapters_against_the_adapter_off_reference(lora_run):
    """The list forward, the sampler (adapted policy) and the in-step KL (base with adapters off) all see LoRA (the
    pairwise forward with LoRA: the DPO step tests above and tests/test_lora_stages.py's runs)."""
    _, run_dir, result = lora_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r["phase"] == "preference"]
    assert trained and all(np.isfinite(r["kl/value"]) and r["kl/samples_per_second"] > 0 for r in trained)
    assert trained[-1]["kl/value"] > 0.0  # the adapters moved the policy away from the base
    np.testing.assert_allclose(
        trained[-1]["loss"], trained[-1]["loss/preference"] + 0.5 * trained[-1]["kl/value"], rtol=1e-5
    )
    assert result.after["eval/kl"] > 0.0 and result.before["eval/kl"] == 0.0


@pytest.mark.slow
def test_jaxspo_eval_of_a_lora_run_merges_its_adapters_and_reproduces_its_last_evaluation(lora_run, tmp_path):
    """`jaxspo eval RUN_DIR` reads the adapters of RUN_DIR/params, merges them into the base RUN_DIR/base.json names
    and evaluates that policy with training's evaluator and key: the run's final evaluation (base + adapters)."""
    _, run_dir, result = lora_run
    assert cli.main(["eval", str(run_dir), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())
    shared = sorted(set(metrics) & set(result.after))
    assert {"eval/kl", "eval/rewards/margins", "eval/logps_accuracy"} <= set(shared)
    assert metrics["eval/kl"] > 0.0  # the adapters are in: π_0 against itself would give 0
    for key in shared:
        assert metrics[key] == pytest.approx(result.after[key], rel=1e-3, abs=1e-4), key
