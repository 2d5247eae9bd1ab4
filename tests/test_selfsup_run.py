"""End to end: the selfsup recipes run on the built-in task (tiny settings) and log the degree metrics."""

import json

import pytest

from jaxspo.config import load_config
from jaxspo.train.loop import train
from tests.test_run import TINY_RUN


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, extra",
    [
        ("configs/selfsup_dpo.yaml", ["loss.reference=precomputed"]),
        ("configs/selfsup_simpo.yaml", ["loss.selfsup.mode=classify"]),
        ("configs/selfsup_dpo.yaml", ["loss.selfsup.key_scoring=rake", "loss.selfsup.stopwords=[reverse]"]),
    ],
)
def test_selfsup_recipe_runs_and_logs_levels(tmp_path, recipe, extra):
    # no SFT phase: the test reads the preference rows and the last evaluation
    overrides = (
        TINY_RUN
        + extra
        + [
            "trainer.sft_steps=0",
            "logging.plot=false",
            "logging.tensorboard=false",
            f"run_dir={tmp_path}",
            f"loss.reference_cache_dir={tmp_path / 'cache'}",
        ]
    )
    result = train(load_config(recipe, overrides), "selfsup")
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["phase"] == "preference"][-1]
    assert last["selfsup/loss"] > 0 and 0 <= last["selfsup/accuracy"] <= 1
    final = [r for r in rows if r["phase"] == "eval"][-1]
    assert {f"eval/selfsup/reward_level_{k}" for k in range(4)} <= set(final)
