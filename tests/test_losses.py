"""The spine's losses and the objective's metrics on hand-made log-probs."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.config import LossConfig
from jaxspo.losses import PairLogps, get_loss, loss_names, preference_objective, register_loss


def make_logps(ref=True):
    rng = np.random.default_rng(0)
    a = lambda: jnp.asarray(rng.normal(-20, 5, size=6), jnp.float32)  # noqa: E731
    return PairLogps(a(), a(), a() if ref else None, a() if ref else None, jnp.full(6, 5.0), jnp.full(6, 4.0), jnp.ones(6))


def test_dpo_matches_formula_and_is_log2_at_reference():
    logps = make_logps()
    cfg = LossConfig(beta=0.3)
    h = (logps.policy_chosen - logps.reference_chosen) - (logps.policy_rejected - logps.reference_rejected)
    np.testing.assert_allclose(get_loss("dpo").fn(logps, cfg), np.log1p(np.exp(-0.3 * np.asarray(h))), rtol=1e-5)
    at_ref = PairLogps(logps.policy_chosen, logps.policy_rejected, logps.policy_chosen, logps.policy_rejected, logps.chosen_length, logps.rejected_length, logps.soft_label)
    np.testing.assert_allclose(get_loss("dpo").fn(at_ref, cfg), np.log(2.0), rtol=1e-6)


def test_ipo_and_sft():
    logps = make_logps()
    cfg = LossConfig(beta=0.5)
    h = (logps.policy_chosen - logps.reference_chosen) - (logps.policy_rejected - logps.reference_rejected)
    np.testing.assert_allclose(get_loss("ipo").fn(logps, cfg), (np.asarray(h) - 1.0) ** 2, rtol=1e-5)
    np.testing.assert_allclose(get_loss("sft").fn(logps, cfg), -np.asarray(logps.policy_chosen) / 5.0, rtol=1e-6)
    assert not get_loss("sft").needs_reference and get_loss("dpo").needs_reference


def test_weighted_terms_and_trl_metric_names():
    logps = make_logps()
    cfg = LossConfig(terms={"dpo": 1.0, "sft": 0.2}, beta=0.1)
    weight = jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32)  # last two are padding
    loss_sum, metrics = preference_objective(logps, cfg, weight)
    expected = get_loss("dpo").fn(logps, cfg) + 0.2 * get_loss("sft").fn(logps, cfg)
    np.testing.assert_allclose(loss_sum, expected[:4].sum(), rtol=1e-5)
    for name in ("loss", "loss/dpo", "loss/sft", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        total, count = metrics[name]
        assert float(count) == 4.0, name
    chosen_reward = 0.1 * (logps.policy_chosen - logps.reference_chosen)
    np.testing.assert_allclose(metrics["rewards/chosen"][0], chosen_reward[:4].sum(), rtol=1e-5)


def test_user_registered_loss_is_usable_and_names_are_unique():
    @register_loss("test_scaled_dpo")
    def scaled(logps, cfg):
        return 2.0 * get_loss("dpo").fn(logps, cfg)

    assert "test_scaled_dpo" in loss_names()
    logps = make_logps()
    cfg = LossConfig(terms={"test_scaled_dpo": 1.0})
    loss_sum, _ = preference_objective(logps, cfg, jnp.ones(6))
    np.testing.assert_allclose(loss_sum, 2.0 * get_loss("dpo").fn(logps, cfg).sum(), rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("dpo")(lambda logps, cfg: logps.policy_chosen)
