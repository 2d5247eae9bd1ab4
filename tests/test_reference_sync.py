"""TR-DPO (``loss.reference_sync``): the moving reference against TRL 1.16's ``SyncRefModelCallback``, in the step
(the closed form from the policy at the sync steps), through checkpoint and resume, and its refusals."""

from __future__ import annotations

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_losses_trl import torch
from tests.test_resume import TINY as TINY_RUN
from tests.test_resume import final_params, metrics
from tests.test_train_step import random_pairs, tiny_config

from jaxspo.config import ConfigError, load_config
from jaxspo.config_sections import ReferenceSyncConfig
from jaxspo.lora.views import as_model
from jaxspo.objectives import build_objective
from jaxspo.sharding import make_mesh
from jaxspo.train import loop
from jaxspo.train.initialise import initialise
from jaxspo.train.reference_sync import mixed
from jaxspo.train.state import abstract_model, init_params, param_shardings

TOL = 1e-12


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_mixed_matches_trl_sync_callback(alpha):
    from trl.trainer.callbacks import SyncRefModelCallback

    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (2, 3, 2)]
    policy, reference = ([rng.normal(size=s) for s in shapes] for _ in range(2))
    target, source = (
        torch.nn.ParameterList(map(torch.tensor, reference)),
        torch.nn.ParameterList(map(torch.tensor, policy)),
    )
    SyncRefModelCallback._sync_target_model(source, target, alpha)
    with jax.enable_x64(True):
        ours = mixed([jnp.asarray(r) for r in reference], [jnp.asarray(p) for p in policy], alpha)
    for mine, theirs in zip(ours, target, strict=True):
        np.testing.assert_allclose(np.asarray(mine), theirs.detach().numpy(), atol=TOL, rtol=0)
    if alpha == 1.0:  # the hard update copies the policy exactly
        for mine, p in zip(ours, policy):
            np.testing.assert_array_equal(np.asarray(mine), p)


def _leaves(tree) -> list[np.ndarray]:
    return [np.array(x) for x in jax.tree.leaves(tree)]


def test_step_moves_the_reference_to_the_closed_form_of_the_policy_at_the_sync_steps():
    every, alpha, steps = 2, 0.3, 5
    base = tiny_config()
    cfg = dataclasses.replace(
        base, loss=dataclasses.replace(base.loss, reference_sync=ReferenceSyncConfig(every, alpha))
    )
    mesh = make_mesh({"data": 8})
    graphdef, abstract = abstract_model(cfg.model)
    shardings = param_shardings(abstract, mesh, cfg.mesh.rules)
    policy, reference = init_params(cfg.model, 1, shardings), init_params(cfg.model, 2, shardings)
    objective = build_objective(cfg)
    state, step = initialise(cfg, mesh, graphdef, abstract, shardings, policy, objective, 10, 1e-2, 8, reference)
    assert step.reference_sharding is None  # the state carries the reference; the step's frozen input is empty
    batch = step.place(random_pairs(8, seed=1))
    expected, snapshots, losses = _leaves(reference), [], []
    for k in range(1, steps + 1):
        state, out = step.fn(state, None, batch)
        snapshots.append((_leaves(state.params), _leaves(state.reference)))
        losses.append(float(out["loss"]))
        if k % every == 0:  # TRL: target ← (1 − α)·target + α·policy after global step k
            expected = [(1 - alpha) * r + alpha * p for r, p in zip(expected, snapshots[-1][0])]
        for mine, hand in zip(snapshots[-1][1], expected, strict=True):
            np.testing.assert_allclose(mine, hand, atol=1e-6, rtol=0)
    assert max(np.abs(a - b).max() for a, b in zip(snapshots[-1][1], _leaves(reference))) > 1e-4  # it moved
    # step 3 reads the reference moved after step 2 (and the policy of step 2)
    params_2, reference_2 = (
        jax.tree.unflatten(jax.tree.structure(reference), [jnp.asarray(x) for x in leaves]) for leaves in snapshots[1]
    )
    total, _ = jax.jit(lambda p, r: objective.loss(as_model(graphdef), p, r, batch))(params_2, reference_2)
    np.testing.assert_allclose(losses[2], float(total) / 8, rtol=1e-5)


@pytest.mark.slow  # two tiny runs of 12 preference steps
def test_resume_restores_the_moving_reference_bit_identically(tmp_path):
    """Stopped after the step-10 checkpoint (syncs at 3, 6, 9 behind it), the resumed run is the uninterrupted
    one, bit for bit: steps 11-12 read the restored reference. No SFT phase: the reference moves in the preference
    phase only (it starts at the initial policy)."""
    settings = [*TINY_RUN, "trainer.sft_steps=0", "loss.reference_sync.every_steps=3", "loss.reference_sync.alpha=0.5"]
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    loop.train(load_config("configs/demo.yaml", [*settings, f"run_dir={uninterrupted}"]))
    shutil.copytree(uninterrupted, resumed)
    checkpoints = resumed / "checkpoints" / "preference"
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [10, 12]
    shutil.rmtree(checkpoints / "12")
    shutil.rmtree(resumed / "params")
    loop.train(load_config("configs/demo.yaml", [*settings, f"run_dir={resumed}"]))
    assert metrics(resumed) == metrics(uninterrupted)
    for a, b in zip(final_params(resumed), final_params(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["loss.reference_sync.alpha=0"], "loss.reference_sync.alpha must be in (0, 1], got 0"),
        (["loss.reference_sync.every_steps=-1"], "loss.reference_sync.every_steps must be >= 0"),
        (["loss.reference=precomputed"], "loss.reference_sync updates the resident reference; it needs"),
        (["loss.reference=none"], "loss.reference_sync updates the resident reference; it needs"),
        (["loss.terms={simpo: 1.0}"], "loss.reference_sync: no term of loss.terms reads the reference"),
        (["lora.rank=4"], "loss.reference_sync is not supported with LoRA adapters"),
    ],
)
def test_bad_reference_sync_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["loss.reference_sync.every_steps=4", *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_reference_sync_is_refused_with_sequential_stages():
    with pytest.raises(ConfigError, match="loss.reference_sync is not supported with stages"):
        load_config("configs/sequential.yaml", ["loss.reference_sync.every_steps=4"])
