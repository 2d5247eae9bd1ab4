"""Precomputed reference log-probs: equal to the resident reference, reused, invalidated on change."""

import json

import jax
import numpy as np
import pytest

from jaxspo.config import load_config
from jaxspo.data.tokenizer import build_task_tokenizer
from jaxspo.sharding import DEFAULT_RULES, make_mesh
from jaxspo.train.loop import train
from jaxspo.train.reference_cache import cached_reference_logps
from jaxspo.train.scoring import PairScorer
from jaxspo.train.state import abstract_model, init_params, param_shardings
from tests.test_train_step import TINY, random_pairs
from tests.run_overrides import QUIET

RUN = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=2",
    "data.synthetic.num_sft=128",
    "data.synthetic.num_train=64",
    "data.synthetic.num_eval=16",
    "trainer.sft_steps=0",
    "trainer.sft_batch_size=8",
    "trainer.steps=6",
    "trainer.batch_size=8",  # the preference phase is compared
    "trainer.eval_every=0",
    "eval.num_pairs=8",
    "eval.num_prompts=8",
    "eval.max_new_tokens=4",
    "logging.log_every=1",
    *QUIET,
    "mesh.data=2",
    "mesh.fsdp=2",
    "mesh.tensor=2",
]


@pytest.mark.slow  # two whole runs
def test_training_with_precomputed_reference_matches_resident(tmp_path):
    results = {}
    for mode in ("resident", "precomputed"):
        cfg = load_config(
            "configs/demo.yaml",
            RUN
            + [
                f"loss.reference={mode}",
                f"loss.reference_cache_dir={tmp_path / 'cache'}",
                f"run_dir={tmp_path / mode}",
            ],
        )
        result = train(cfg, mode)
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        results[mode] = ([r for r in rows if r["phase"] == "preference"], result.params)
    (resident_rows, resident_params), (pre_rows, pre_params) = results["resident"], results["precomputed"]
    assert len(resident_rows) == len(pre_rows) == 6
    for a, b in zip(resident_rows, pre_rows):
        for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "grad_norm"):
            assert a[name] == pytest.approx(b[name], abs=1e-5), (name, a["step"])
    for a, b in zip(jax.tree.leaves(resident_params), jax.tree.leaves(pre_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1


def test_cache_is_reused_and_invalidated(tmp_path):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, abstract = abstract_model(TINY)
    shardings = param_shardings(abstract, mesh, DEFAULT_RULES)
    params = init_params(TINY, 0, shardings)
    scorer = PairScorer(graphdef, mesh, DEFAULT_RULES, 8)
    tokenizer = build_task_tokenizer()
    arrays = random_pairs(12)

    first, hit = cached_reference_logps(tmp_path, scorer, params, arrays, tokenizer)
    assert not hit and first["reference_chosen_logps"].shape == (12,)
    again, hit = cached_reference_logps(tmp_path, scorer, params, arrays, tokenizer)
    assert hit
    np.testing.assert_array_equal(again["reference_rejected_logps"], first["reference_rejected_logps"])
    chosen, rejected = scorer(params, arrays)  # the resident computation
    np.testing.assert_allclose(first["reference_chosen_logps"], chosen, atol=1e-5)

    changed_data = dict(
        arrays, chosen_tokens=np.where(arrays["chosen_valid"], (arrays["chosen_tokens"] % 20) + 4, 0).astype(np.int32)
    )
    _, hit = cached_reference_logps(tmp_path, scorer, params, changed_data, tokenizer)
    assert not hit
    _, hit = cached_reference_logps(tmp_path, scorer, init_params(TINY, 1, shardings), arrays, tokenizer)
    assert not hit
    assert len(list(tmp_path.glob("*.npz"))) == 3
