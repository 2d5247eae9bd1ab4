"""Research code adds a loss from its own module, without editing jaxspo, and it trains like a built-in.

Also: gradient accumulation stays exact for the new losses (soft labels, reference-free, user loss).
"""

import dataclasses
import textwrap

import jax
import numpy as np
import pytest

from jaxspo.config import ConfigError, load_config
from jaxspo.losses import get_loss
from tests.test_train_step import TINY, build, random_pairs

USER_MODULE = "jaxspo_test_user_losses"
USER_CODE = '''
"""A user's losses, outside jaxspo."""
import jax
from jaxspo.losses import register_loss


def shifted_hinge(logps, cfg):
    """relu(0.5 − βh), with an extra per-pair metric."""
    margin = logps.margin()
    return jax.nn.relu(0.5 - cfg.beta * margin), {"user/abs_margin": abs(margin)}


@register_loss("user_length_penalty", needs_reference=False)
def length_penalty(logps, cfg):
    return 1e-2 * logps.policy_chosen / logps.chosen_length
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / f"{USER_MODULE}.py").write_text(textwrap.dedent(USER_CODE))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield USER_MODULE


def config_with(terms: str, accum: int):
    cfg = load_config(None, [f"loss.terms={terms}", "loss.beta=0.5", "mesh.data=-1"])
    return dataclasses.replace(cfg, model=TINY, trainer=dataclasses.replace(cfg.trainer, grad_accum_steps=accum))


def soft_pairs(seed: int) -> dict[str, np.ndarray]:
    pairs = random_pairs(8, seed=seed)
    pairs["soft_label"] = np.random.default_rng(seed).uniform(0.5, 1.0, size=8).astype(np.float32)
    return pairs


def test_module_function_names_resolve_with_clear_errors(user_module):
    spec = get_loss(f"{user_module}:length_penalty")
    assert not spec.needs_reference  # the decorator's flags carry over
    assert get_loss(f"{user_module}:shifted_hinge").needs_reference
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg_xyz.losses'"):
        load_config(None, ['loss.terms={"no_such_pkg_xyz.losses:fn": 1.0}'])
    with pytest.raises(ConfigError, match=f"module '{user_module}' has no function 'missing'"):
        load_config(None, [f'loss.terms={{"{user_module}:missing": 1.0}}'])


def test_user_loss_trains_shards_accumulates_and_logs(user_module):
    """gdpo (soft labels) + orpo (reference-free, extra metrics) + the user's loss, on a (2, 2, 2) mesh."""
    terms = f'{{gdpo: 1.0, orpo: 0.3, "{user_module}:shifted_hinge": 0.5}}'
    host = soft_pairs(seed=4)
    outs = []
    for accum in (1, 4):
        _, _, _, state, reference, step = build(config_with(terms, accum), {"data": 2, "fsdp": 2, "tensor": 2}, 8)
        batch = step.place(host)
        new_state, metrics = step.fn(state, reference, batch)
        outs.append((jax.device_get(metrics), jax.device_get(new_state.params)))
        if accum == 1:  # a few more steps: it keeps training
            before = jax.device_get(new_state.params)
            for seed in (5, 6):
                more = step.place(soft_pairs(seed))
                new_state, later = step.fn(new_state, reference, more)
            assert np.isfinite(float(later["loss"])) and int(new_state.step) == 3
            assert any(
                not np.allclose(a, b)
                for a, b in zip(jax.tree.leaves(jax.device_get(new_state.params)), jax.tree.leaves(before))
            )
    (single, params_single), (accumulated, params_accumulated) = outs
    for name in (
        "loss",
        f"loss/{user_module}:shifted_hinge",
        "loss/gdpo",
        "loss/orpo",
        "user/abs_margin",
        "nll_loss",
        "log_odds_ratio",
        "rewards/margins",
        "grad_norm",
    ):
        assert name in single, name
        np.testing.assert_allclose(single[name], accumulated[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert float(single[f"loss/{user_module}:shifted_hinge"]) > 0
    for a, b in zip(jax.tree.leaves(params_single), jax.tree.leaves(params_accumulated)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
