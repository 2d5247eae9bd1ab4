"""Typed per-loss hyper-parameters: ``loss.params.<term>`` sections checked against the dataclass a loss registers,
a user loss's own hyper-parameter set from the config, ``loss.kl``, and old keys naming their new home."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.config import ConfigError, dump_yaml, load_config
from jaxspo.losses import PairLogps, get_loss, hyperparameter, preference_objective, register_loss
from jaxspo.moved_keys import MOVED_KEYS
from tests.user_losses.margin_shift import ShiftParams

REPO = Path(__file__).resolve().parents[1]
USER_LOSS = "tests.user_losses.margin_shift:shifted_dpo"
USER_KEY = f'loss.params."{USER_LOSS}"'


def pairs(n: int = 6) -> PairLogps:
    rng = np.random.default_rng(0)
    a = lambda: jnp.asarray(rng.normal(-10.0, 3.0, size=n), jnp.float32)  # noqa: E731
    return PairLogps(a(), a(), a(), a(), jnp.full(n, 5.0), jnp.full(n, 4.0), jnp.ones(n))


def test_a_user_loss_reads_its_hyper_parameter_from_loss_params():
    """Set by override at two values (and left at its default), the shift reaches the jitted objective: −log σ(βh −
    δ)."""
    logps = pairs()
    h = np.asarray(logps.margin())
    values = {}
    for shift, overrides in ((0.0, []), (0.7, [f"{USER_KEY}.shift=0.7"]), (2.5, [f"{USER_KEY}.shift=2.5"])):
        cfg = load_config(None, [f"loss.terms={{'{USER_LOSS}': 1.0}}", "loss.beta=0.5", *overrides]).loss
        assert cfg.params[USER_LOSS] == ShiftParams(shift=shift)
        loss_sum, _ = jax.jit(lambda x, cfg=cfg: preference_objective(x, cfg, jnp.ones(6)))(logps)
        values[shift] = float(loss_sum)
        np.testing.assert_allclose(values[shift], np.logaddexp(0.0, -(0.5 * h - shift)).sum(), rtol=1e-5)
    assert values[0.0] < values[0.7] < values[2.5]


def test_a_recipe_sets_a_user_loss_section_by_its_quoted_name_and_round_trips(tmp_path):
    recipe = tmp_path / "user.yaml"
    recipe.write_text(f'loss:\n  terms: {{"{USER_LOSS}": 1.0}}\n  params:\n    "{USER_LOSS}": {{shift: 0.3}}\n')
    cfg = load_config(recipe)
    assert cfg.loss.params == {USER_LOSS: ShiftParams(shift=0.3)}
    dump_yaml(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([f"{USER_KEY}.shift=-1"], f"{USER_KEY}.shift must be >= 0, got -1"),
        (
            [f"{USER_KEY}.shfit=1"],
            f"unknown config key '{USER_KEY}.shfit'; did you mean 'shift'? {USER_LOSS}'s params: shift",
        ),
        ([f"{USER_KEY}.shift=far"], f"{USER_KEY}.shift: expected a number, got 'far'"),
        (
            ["loss.terms={simpo: 1.0}", "loss.params.simpo.delta=1"],
            "unknown config key 'loss.params.simpo.delta'; simpo's params: gamma",
        ),
        (
            ["loss.terms={cpo: 1.0}", "loss.params.cpo.nll_weight=-0.5"],
            "loss.params.cpo.nll_weight must be >= 0, got -0.5",
        ),
        (["loss.terms={discopop: 1.0}", "loss.params.discopop.tau=0"], "loss.params.discopop.tau must be > 0, got 0"),
        (
            ["loss.params.dpo.divergence=kl"],
            "loss.params.dpo.divergence must be one of reverse_kl, forward_kl, js_divergence, alpha_divergence, "
            "got 'kl'",
        ),
        (
            ["loss.params.nca_pair.beta=0.2"],
            "loss.params.nca_pair: loss 'nca_pair' declares no hyper-parameters (the shared ones are loss.beta",
        ),
        (["loss.params.simpoo.gamma=1"], "loss.params.simpoo: unknown loss 'simpoo'; did you mean 'simpo'?"),
        (["loss.params.simpo=3"], "loss.params.simpo: expected a section with gamma, got 3"),
        (['loss.params."a.b.c=1'], "malformed key"),
    ],
)
def test_bad_loss_params_name_the_key_in_one_line(overrides, message):
    terms = [f"loss.terms={{'{USER_LOSS}': 1.0}}"] if any(USER_LOSS in o for o in overrides) else []
    with pytest.raises(ConfigError) as err:
        load_config(None, terms + overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_terms_with_params_get_their_defaults_and_a_section_outside_the_terms_warns(caplog):
    cfg = load_config(None, ["loss.terms={simpo: 1.0, cpo: 0.5, nca_pair: 1.0}"]).loss
    assert {name: type(p).__name__ for name, p in cfg.params.items()} == {"simpo": "SimpoParams", "cpo": "CpoParams"}
    assert (cfg.params["simpo"].gamma, cfg.params["cpo"].nll_weight) == (0.5, 1.0)  # TRL's defaults
    with caplog.at_level(logging.WARNING, logger="jaxspo"):
        cfg = load_config(
            REPO / "configs/gropo.yaml", ["loss.terms={gdpo: 1.0}"]
        ).loss  # the recipe keeps its gropo section
    assert "loss.params.gropo is set but 'gropo' is not in loss.terms" in caplog.text
    assert cfg.params["gropo"].alpha == 14.0


def test_ropo_and_gropo_each_read_their_own_section():
    cfg = load_config(
        None, ["loss.terms={ropo: 1.0, gropo: 1.0}", "loss.params.ropo.alpha=2", "loss.params.gropo.alpha=30"]
    ).loss
    assert (get_loss("ropo").params_of(cfg).alpha, get_loss("gropo").params_of(cfg).alpha) == (2.0, 30.0)


@pytest.mark.parametrize("old", [key for key in MOVED_KEYS if key != "loss.soft_spo"])
def test_every_old_key_names_its_new_home(old):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{old}=1"])
    assert str(err.value) == f"{old} moved to {MOVED_KEYS[old]}"


def test_old_sections_in_a_recipe_name_their_new_home(tmp_path):
    (tmp_path / "old.yaml").write_text("loss:\n  terms: {soft_spo: 1.0}\n  soft_spo:\n    kl_beta: 0.05\n")
    with pytest.raises(ConfigError, match=r"^loss.soft_spo.kl_beta moved to loss.kl.beta \(config "):
        load_config(tmp_path / "old.yaml")
    (tmp_path / "empty.yaml").write_text("loss:\n  soft_spo: {}\n")
    with pytest.raises(
        ConfigError, match=r"^loss.soft_spo moved to loss.params.<soft_spo term> \(alpha, gamma\) and loss.kl"
    ):
        load_config(tmp_path / "empty.yaml")


def test_cli_names_the_new_home_of_an_old_key_in_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxspo", "train", "configs/selfsup_simpo.yaml", "loss.simpo_gamma=0.8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "jaxspo: config error: loss.simpo_gamma moved to loss.params.simpo.gamma (config "
        f"{REPO / 'configs/selfsup_simpo.yaml'} with its overrides)"
    ]


def test_register_loss_takes_only_frozen_params_with_defaults():
    @dataclasses.dataclass
    class Mutable:
        x: float = 1.0

    @dataclasses.dataclass(frozen=True)
    class NoDefault:
        x: float

    with pytest.raises(ValueError, match="params must be a @dataclasses.dataclass\\(frozen=True\\) class"):
        register_loss("test_mutable_params", params=Mutable)
    with pytest.raises(ValueError, match="params field\\(s\\) x need a default"):
        register_loss("test_no_default_params", params=NoDefault)


def test_a_range_declared_with_hyperparameter_is_checked_at_both_ends():
    @dataclasses.dataclass(frozen=True)
    class Rate:
        rate: float = hyperparameter(0.1, ge=0.0, lt=0.5)

    @register_loss("test_bounded_rate", params=Rate)
    def bounded(logps, cfg, params):
        return params.rate * logps.margin()

    assert load_config(
        None, ["loss.terms={test_bounded_rate: 1.0}", "loss.params.test_bounded_rate.rate=0.0"]
    ).loss.params["test_bounded_rate"] == Rate(0.0)
    for value, message in (("0.5", r"must be < 0.5, got 0.5$"), ("-0.1", r"must be >= 0, got -0.1$")):
        with pytest.raises(ConfigError, match=rf"^loss.params.test_bounded_rate.rate {message}"):
            load_config(None, ["loss.terms={test_bounded_rate: 1.0}", f"loss.params.test_bounded_rate.rate={value}"])
