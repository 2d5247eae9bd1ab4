"""The spine's losses and the objective's metrics on hand-made log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.config import LossConfig
from jaxspo.losses import PairLogps, get_loss, loss_names, preference_objective, register_loss
from jaxspo.losses.dpo_family import RdpoParams, RopoParams
from jaxspo.losses.reference_free import CpoParams, OrpoParams, SimpoParams


def make_logps(ref=True):
    rng = np.random.default_rng(0)
    a = lambda: jnp.asarray(rng.normal(-20, 5, size=6), jnp.float32)  # noqa: E731
    return PairLogps(
        a(), a(), a() if ref else None, a() if ref else None, jnp.full(6, 5.0), jnp.full(6, 4.0), jnp.ones(6)
    )


def test_dpo_matches_formula_and_is_log2_at_reference():
    logps = make_logps()
    cfg = LossConfig(beta=0.3)
    h = (logps.policy_chosen - logps.reference_chosen) - (logps.policy_rejected - logps.reference_rejected)
    np.testing.assert_allclose(get_loss("dpo").apply(logps, cfg), np.log1p(np.exp(-0.3 * np.asarray(h))), rtol=1e-5)
    at_ref = PairLogps(
        logps.policy_chosen,
        logps.policy_rejected,
        logps.policy_chosen,
        logps.policy_rejected,
        logps.chosen_length,
        logps.rejected_length,
        logps.soft_label,
    )
    np.testing.assert_allclose(get_loss("dpo").apply(at_ref, cfg), np.log(2.0), rtol=1e-6)


def test_ipo_and_sft():
    logps = make_logps()
    cfg = LossConfig(beta=0.5)
    h = (logps.policy_chosen - logps.reference_chosen) - (logps.policy_rejected - logps.reference_rejected)
    np.testing.assert_allclose(get_loss("ipo").fn(logps, cfg), (np.asarray(h) - 1.0) ** 2, rtol=1e-5)
    np.testing.assert_allclose(get_loss("sft").apply(logps, cfg), -np.asarray(logps.policy_chosen) / 5.0, rtol=1e-6)
    assert not get_loss("sft").needs_reference and get_loss("dpo").needs_reference


def test_weighted_terms_and_trl_metric_names():
    logps = make_logps()
    cfg = LossConfig(terms={"dpo": 1.0, "sft": 0.2}, beta=0.1)
    weight = jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32)  # last two are padding
    loss_sum, metrics = preference_objective(logps, cfg, weight)
    expected = get_loss("dpo").apply(logps, cfg) + 0.2 * get_loss("sft").apply(logps, cfg)
    np.testing.assert_allclose(loss_sum, expected[:4].sum(), rtol=1e-5)
    for name in (
        "loss",
        "loss/dpo",
        "loss/sft",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        total, count = metrics[name]
        assert float(count) == 4.0, name
    chosen_reward = 0.1 * (logps.policy_chosen - logps.reference_chosen)
    np.testing.assert_allclose(metrics["rewards/chosen"][0], chosen_reward[:4].sum(), rtol=1e-5)


def test_user_registered_loss_is_usable_and_names_are_unique():
    @register_loss("test_scaled_dpo")
    def scaled(logps, cfg):
        return 2.0 * get_loss("dpo").apply(logps, cfg)

    assert "test_scaled_dpo" in loss_names()
    logps = make_logps()
    cfg = LossConfig(terms={"test_scaled_dpo": 1.0})
    loss_sum, _ = preference_objective(logps, cfg, jnp.ones(6))
    np.testing.assert_allclose(loss_sum, 2.0 * get_loss("dpo").apply(logps, cfg).sum(), rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("dpo")(lambda logps, cfg: logps.policy_chosen)


# ---------------------------------------------------------------------------------------------
# The full library (TRL parity: test_losses_trl.py; soft labels: test_losses_geometric.py)
# ---------------------------------------------------------------------------------------------

BUILT_IN = {
    "dpo",
    "cdpo",
    "robust",
    "hinge",
    "ipo",
    "ipo_norm",
    "sigmoid_norm",
    "exo_pair",
    "discopop",
    "rdpo",
    "ropo",
    "aot",
    "aot_unpaired",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "sft",
    "simpo",
    "cpo",
    "orpo",
    "gdpo",
    "gipo",
    "gropo",
    "cdpo_soft",
    "cipo",
}


def margin(logps):
    return np.asarray(
        (logps.policy_chosen - logps.reference_chosen) - (logps.policy_rejected - logps.reference_rejected)
    )


def test_every_built_in_is_registered_documented_and_finite_with_finite_gradients():
    assert BUILT_IN <= set(loss_names())
    logps = make_logps()
    cfg = LossConfig(label_smoothing=0.1)
    for name in BUILT_IN:
        spec = get_loss(name)
        assert "arXiv" in spec.fn.__doc__ or name in ("sft", "cdpo"), name
        assert spec.needs_reference == (name not in ("sft", "simpo", "cpo", "orpo")), name
        assert spec.needs_soft_label == (name in ("gdpo", "gipo", "gropo", "cdpo_soft", "cipo")), name

        def total(chosen):
            result = spec.apply(logps.replace(policy_chosen=chosen), cfg)
            return (result[0] if isinstance(result, tuple) else result).sum()

        value, grad = jax.value_and_grad(total)(logps.policy_chosen)
        assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all(), name


def test_losses_trl_lacks_match_their_formulas():
    logps = make_logps()
    cfg = LossConfig(
        beta=0.2, label_smoothing=0.1, params={"rdpo": RdpoParams(alpha=0.05), "ropo": RopoParams(alpha=14.0)}
    )
    z = 0.2 * margin(logps)
    softplus = lambda x: np.logaddexp(0.0, x)  # noqa: E731  (= −log σ(−x))
    np.testing.assert_allclose(get_loss("cdpo").fn(logps, cfg), 0.9 * softplus(-z) + 0.1 * softplus(z), rtol=1e-5)
    np.testing.assert_allclose(get_loss("rdpo").apply(logps, cfg), softplus(-(z + 0.05 * (5.0 - 4.0))), rtol=1e-5)
    ropo = 4 * 14 / 225 * (softplus(-z) + 14 / (1 + np.exp(z)))
    np.testing.assert_allclose(get_loss("ropo").apply(logps, cfg), ropo, rtol=1e-5)


def test_reference_free_losses_ignore_the_reference_and_report_policy_rewards():
    with_ref, without = make_logps(), make_logps(ref=False)
    cfg = LossConfig(
        beta=2.0,
        params={
            "simpo": SimpoParams(gamma=0.5),
            "cpo": CpoParams(nll_weight=1.0),
            "orpo": OrpoParams(odds_ratio_weight=0.1),
        },
    )
    for name in ("sft", "simpo", "cpo", "orpo"):
        a, b = get_loss(name).apply(with_ref, cfg), get_loss(name).apply(without, cfg)
        np.testing.assert_array_equal(a[0] if isinstance(a, tuple) else a, b[0] if isinstance(b, tuple) else b)
    _, metrics = preference_objective(with_ref, LossConfig(terms={"simpo": 1.0, "dpo": 1.0}, beta=2.0), jnp.ones(6))
    np.testing.assert_allclose(metrics["rewards/chosen"][0], (2.0 * with_ref.policy_chosen / 5.0).sum(), rtol=1e-5)
    _, metrics = preference_objective(with_ref, LossConfig(terms={"dpo": 1.0, "simpo": 1.0}, beta=2.0), jnp.ones(6))
    np.testing.assert_allclose(
        metrics["rewards/chosen"][0], (2.0 * (with_ref.policy_chosen - with_ref.reference_chosen)).sum(), rtol=1e-5
    )


def test_orpo_log_odds_are_stable_for_near_certain_responses():
    logps = make_logps(ref=False)
    logps = logps.replace(policy_chosen=jnp.asarray([-1e-6, -1e-3, -0.5, -3.0, -20.0, 0.0]))
    cfg = LossConfig(terms={"orpo": 1.0})

    def total(chosen):
        return get_loss("orpo").apply(logps.replace(policy_chosen=chosen), cfg)[0].sum()

    value, grad = jax.value_and_grad(total)(logps.policy_chosen)
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
    mean = np.asarray(logps.policy_chosen, np.float64)[2:5] / 5.0
    expected = np.log(-np.expm1(mean))
    from jaxspo.losses.reference_free import log1mexp

    np.testing.assert_allclose(log1mexp(jnp.asarray(mean, jnp.float32)), expected, rtol=1e-5)


def test_extra_metrics_are_reduced_over_real_pairs_only():
    logps = make_logps(ref=False)
    weight = jnp.asarray([1, 1, 1, 0, 0, 0], jnp.float32)
    _, metrics = preference_objective(logps, LossConfig(terms={"orpo": 1.0}), weight)
    expected_nll = (-np.asarray(logps.policy_chosen) / 5.0)[:3].sum()
    np.testing.assert_allclose(metrics["nll_loss"][0], expected_nll, rtol=1e-5)
    assert float(metrics["nll_loss"][1]) == 3.0 and "log_odds_chosen" in metrics
