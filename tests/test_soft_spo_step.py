"""soft_spo in the sharded train step: one forward over B·n listed responses, the global KL regulariser
(value, loss, exact gradient accumulation), and tiny end-to-end runs of the shipped configs."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxspo.config import load_config
from jaxspo.data.encode import encode_preference_rows
from jaxspo.data.lists import encode_list_rows
from jaxspo.data.synthetic import SyntheticTaskConfig, build_synthetic_task, labelled_reward
from jaxspo.data.tokenizer import build_task_tokenizer
from jaxspo.losses.kl_config import KLConfig
from jaxspo.objectives import padded_pair_logps
from jaxspo.objectives.batches import ListBatch
from jaxspo.objectives.lists import list_logps
from jaxspo.train.logprobs import sequence_kl, sequence_logps
from jaxspo.train.loop import train
from tests.test_run import TINY_RUN
from tests.test_train_step import fresh_state, random_pairs, tiny_config, tiny_model, train_step

MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def random_lists(batch: int, n: int = 3, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Lists of n responses to one 4-token prompt per row; row 0 has only 2 responses (padding slot)."""
    pairs = [random_pairs(batch, length, seed + j) for j in range(n)]
    arrays = {
        f"list_{k}": np.stack([p[f"chosen_{k}"] for p in pairs], axis=1) for k in ("tokens", "valid", "loss_mask")
    }
    arrays["list_tokens"][:, :, :4] = arrays["list_tokens"][:, :1, :4]  # the same prompt in every slot
    arrays["list_mask"] = np.ones((batch, n), bool)
    arrays["list_mask"][0, -1] = False
    arrays["list_scores"] = np.full((batch, n), np.nan, np.float32)  # no scores: hard winners, best first
    return arrays


def kl_samples(rows: int, length: int = 16, seed: int = 7) -> dict[str, np.ndarray]:
    """Stand-ins for sampled sequences: a 4-token prompt then a response of random length."""
    pairs = random_pairs(rows, length, seed)
    response = pairs["chosen_loss_mask"].copy()
    return {"kl_tokens": pairs["chosen_tokens"], "kl_valid": pairs["chosen_valid"], "kl_response": response}


def with_soft_spo(cfg, terms: dict[str, float], **kl):
    """``cfg`` with ``terms`` (default params) and the KL regulariser's ``loss.kl`` fields ``kl``."""
    loss = dataclasses.replace(cfg.loss, terms=terms, kl=KLConfig(**kl))
    return dataclasses.replace(cfg, loss=loss)


@pytest.fixture(scope="module")
def model():
    """The tiny policy and reference on the (2, 2, 2) mesh, built once: every test below makes its own step on it
    (the steps differ in loss and trainer settings, never in model or optimizer)."""
    return tiny_model(tiny_config(), MESH)


def test_one_forward_over_lists_equals_each_response_scored_alone(model):
    host = random_lists(4)
    logps = jax.jit(list_logps, static_argnums=0)(model.graphdef, model.state.params, ListBatch.from_fields(host))
    score = jax.jit(sequence_logps, static_argnums=0)
    for j in range(3):
        alone, lengths = score(
            model.graphdef,
            model.state.params,
            host["list_tokens"][:, j],
            host["list_valid"][:, j],
            host["list_loss_mask"][:, j],
        )
        np.testing.assert_allclose(logps.policy[:, j], alone, rtol=1e-5)
        np.testing.assert_array_equal(logps.lengths[:, j], lengths)


def step_losses(
    model, terms: dict[str, float], batches: list[dict[str, np.ndarray]], logps_fn
) -> list[tuple[float, object]]:
    """(the step's logged loss, ``logps_fn(graphdef, params, batch)``) of one step from the same state on each batch."""
    step = train_step(model, with_soft_spo(tiny_config(), terms), 8)
    logps = jax.jit(logps_fn, static_argnums=0)
    out = []
    for host in batches:
        batch = step.place(host)
        expected_inputs = jax.device_get(logps(model.graphdef, model.state.params, batch))
        _, metrics = step.fn(fresh_state(model), model.reference, batch)
        out.append((float(metrics["loss"]), expected_inputs))
    return out


def test_soft_labels_reach_the_pairwise_loss_from_the_data_rows(model):
    task = build_synthetic_task(SyntheticTaskConfig(num_sft=0, num_train=8, num_eval=0))
    labels = [0.5, 0.7, 0.3, 0.9, 1.0, 0.6, 0.2, 0.8]  # p̂ < ½ too: the loss is symmetric, no swap needed
    soft = [dict(row, soft_label=p) for row, p in zip(task.splits["train"], labels)]
    hard = [{k: v for k, v in row.items() if k != "soft_label"} for row in soft]  # no label: p̂ = 1
    batches = [encode_preference_rows(rows, build_task_tokenizer(), 32) for rows in (soft, hard)]
    np.testing.assert_array_equal(batches[0]["soft_label"], np.float32(labels))
    (soft_loss, logps), (hard_loss, _) = step_losses(model, {"soft_spo": 1.0}, batches, padded_pair_logps)
    d = np.float64(logps[0]) - np.float64(logps[1])  # log πθ(y_w) − log πθ(y_l), α = 1
    p = np.float64(batches[0]["soft_label"])
    expected = -(p * np.log(1 / (1 + np.exp(-d))) + (1 - p) * np.log(1 / (1 + np.exp(d)))).mean()
    np.testing.assert_allclose(soft_loss, expected, rtol=1e-5)
    np.testing.assert_allclose(hard_loss, -np.log(1 / (1 + np.exp(-d))).mean(), rtol=1e-5)
    assert abs(soft_loss - hard_loss) > 0.05, (soft_loss, hard_loss)


def test_response_scores_give_soft_winners_in_the_list_step(model):
    task = build_synthetic_task(SyntheticTaskConfig(num_sft=0, num_train=8, num_eval=0))
    rows = [dict(row, best=0) for row in task.splits["train"]]
    scored, unscored = (
        encode_list_rows(r, build_task_tokenizer(), 32, False, task.config.label_weights)
        for r in (rows, [{k: v for k, v in row.items() if k != "response_scores"} for row in rows])
    )
    (soft_loss, logps), (hard_loss, _) = step_losses(model, {"soft_spo_best_of_n": 1.0}, [scored, unscored], list_logps)
    rewards = np.array(
        [[labelled_reward(c, task.config.label_weights) for c in row["response_scores"]] for row in rows]
    )
    q = np.exp(rewards) / np.exp(rewards).sum(-1, keepdims=True)  # softmax(r/τ), τ = 1 (default)
    s = np.float64(logps.policy)
    log_choice = s - np.log(np.exp(s).sum(-1, keepdims=True))
    np.testing.assert_allclose(soft_loss, -(q * log_choice).sum(-1).mean(), rtol=1e-5)
    np.testing.assert_allclose(hard_loss, -log_choice[:, 0].mean(), rtol=1e-5)
    assert abs(soft_loss - hard_loss) > 0.05, (soft_loss, hard_loss)


@pytest.mark.slow
@pytest.mark.parametrize("terms", [{"soft_spo": 1.0}, {"soft_spo_ranked": 1.0}])
def test_kl_regulariser_adds_beta_times_the_sampled_kl_and_accumulates_exactly(model, terms):
    kl_beta = 0.5
    host = (random_lists(8) if "soft_spo_ranked" in terms else random_pairs(8)) | kl_samples(8)
    # the sampled KL of the policy every step below starts from: computed once
    samples = (host["kl_tokens"], host["kl_valid"], host["kl_response"])
    kl_fn = jax.jit(lambda p, r, *s: sequence_kl((model.graphdef, p), (model.graphdef, r), *s))
    kl = np.asarray(kl_fn(model.state.params, model.reference, *samples))
    assert kl.mean() > 1e-3  # policy ≠ reference
    outs = []
    for accum in (1, 2):
        step = train_step(model, with_soft_spo(tiny_config(grad_accum_steps=accum), terms, beta=kl_beta, prompts=8), 8)
        assert set(step.batch_sharding.fields()) == set(host) and step.reference_sharding is not None
        new_state, metrics = step.fn(fresh_state(model), model.reference, step.place(host))
        metrics = jax.device_get(metrics)
        outs.append((metrics, jax.device_get(new_state.params)))
        np.testing.assert_allclose(metrics["kl/value"], kl.mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics["loss"], metrics["loss/preference"] + kl_beta * kl.mean(), rtol=1e-5)
    for name in ("loss", "kl/value", "grad_norm"):
        np.testing.assert_allclose(outs[0][0][name], outs[1][0][name], rtol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_kl_gradient_is_zero_when_the_policy_is_the_reference_and_pulls_back_otherwise(model):
    graphdef, reference = model.graphdef, model.reference
    samples = kl_samples(8)

    def kl_of(params):
        return sequence_kl(
            (graphdef, params), (graphdef, reference), samples["kl_tokens"], samples["kl_valid"], samples["kl_response"]
        ).mean()

    kl_and_grad = jax.jit(jax.value_and_grad(kl_of))  # one program for the three points below
    _, at_reference = kl_and_grad(reference)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(at_reference)) < 1e-6
    value, grad = kl_and_grad(model.state.params)
    moved = jax.tree.map(lambda p, g: p - 1e-2 * g, model.state.params, grad)
    assert float(kl_and_grad(moved)[0]) < float(value)  # a gradient step on the KL moves the policy toward π_ref


@pytest.fixture(scope="module", params=["soft_spo", "soft_spo_best_of_n"])
def tiny_run(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp(request.param)
    # no SFT phase: the tests read the preference rows and the evaluations (the reference is then the initial policy)
    overrides = TINY_RUN + [
        "trainer.sft_steps=0",
        "loss.kl.prompts=8",
        "loss.kl.max_new_tokens=6",
        "loss.kl.refresh=2",
        "logging.plot=false",
        f"run_dir={run_dir}",
    ]
    cfg = load_config(f"configs/{request.param}.yaml", overrides)
    assert cfg.loss.kl.beta > 0  # the shipped recipe runs the regulariser
    return request.param, train(cfg, "tiny")


@pytest.mark.slow
def test_shipped_configs_run_end_to_end_with_the_kl_regulariser(tiny_run):
    name, result = tiny_run
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    pref = [r for r in rows if r["phase"] == "preference"]
    assert len(pref) == 3
    for row in pref:
        # a KL is >= 0; at the first step the policy is the reference, so the float32 sum over the vocabulary and the
        # response positions is zero within its rounding (a few ulps of the per-position terms, machine-dependent)
        assert np.isfinite(row["loss"]) and row["kl/value"] >= -1e-6 and row["kl/samples_per_second"] > 0
        assert row["kl/sample_seconds_per_step"] > 0 and row["kl/sample_tokens_per_second"] > 0
        assert row["loss"] == pytest.approx(row["loss/preference"] + 0.05 * row["kl/value"], rel=1e-4)
    assert pref[-1]["kl/value"] > 0  # the policy has moved by the last logged step
    assert ("list/top1_accuracy" in pref[-1]) == (name == "soft_spo_best_of_n")
    after = [r for r in rows if r["phase"] == "eval"][-1]
    assert after["eval/response_nll"] > 0 and after["eval/kl"] > 0
