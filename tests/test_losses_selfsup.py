"""selfsup degree losses on hand-made arrays (float64): formulas, masking, special cases, gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.losses.selfsup import classify_loss, level_rewards, pairwise_accuracy, pairwise_loss, plackett_luce_loss


@pytest.fixture(autouse=True)
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def pl_reference(r: list[float]) -> float:
    """−(1/(L−1)) Σ_k log(exp(r_k) / Σ_{j≥k} exp(r_j)), written out."""
    terms = [r[k] - math.log(sum(math.exp(x) for x in r[k:])) for k in range(len(r) - 1)]
    return -sum(terms) / len(terms)


def pairwise_reference(r: list[float]) -> float:
    pairs = [(i, j) for i in range(len(r)) for j in range(i + 1, len(r))]
    return sum(math.log1p(math.exp(-(r[i] - r[j]))) for i, j in pairs) / len(pairs)


R = [0.7, -0.2, 0.4, -1.3]


def test_plackett_luce_matches_its_formula():
    rewards = jnp.array([R, R[::-1]], jnp.float64)
    valid = jnp.ones((2, 4), bool)
    np.testing.assert_allclose(plackett_luce_loss(rewards, valid), [pl_reference(R), pl_reference(R[::-1])], rtol=1e-12)


def test_pairwise_matches_its_formula():
    np.testing.assert_allclose(
        pairwise_loss(jnp.array([R], jnp.float64), jnp.ones((1, 4), bool)), [pairwise_reference(R)], rtol=1e-12
    )


@pytest.mark.parametrize("loss, reference", [(plackett_luce_loss, pl_reference), (pairwise_loss, pairwise_reference)])
def test_an_invalid_level_is_dropped_exactly(loss, reference):
    rewards = jnp.array([R], jnp.float64)
    valid = jnp.array([[True, True, False, True]])
    np.testing.assert_allclose(loss(rewards, valid), [reference([R[0], R[1], R[3]])], rtol=1e-12)
    grad = jax.grad(lambda r: loss(r, valid).sum())(rewards)
    assert np.all(np.isfinite(grad)) and grad[0, 2] == 0.0  # the dropped level gets no gradient


@pytest.mark.parametrize("loss", [plackett_luce_loss, pairwise_loss])
def test_only_the_original_valid_gives_zero_loss_and_gradient(loss):
    rewards = jnp.array([R], jnp.float64)
    valid = jnp.array([[True, False, False, False]])
    assert float(loss(rewards, valid)[0]) == 0.0
    grad = jax.grad(lambda r: loss(r, valid).sum())(rewards)
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


@pytest.mark.parametrize("loss", [plackett_luce_loss, pairwise_loss])
def test_ordered_rewards_cost_less_than_reversed_and_gradient_pushes_the_order(loss):
    ordered = jnp.array([[3.0, 1.0, -1.0, -3.0]], jnp.float64)
    valid = jnp.ones((1, 4), bool)
    assert float(loss(ordered, valid)[0]) < float(loss(ordered[:, ::-1], valid)[0])
    grad = jax.grad(lambda r: loss(r, valid).sum())(jnp.zeros((1, 4), jnp.float64))
    assert grad[0, 0] < 0 < grad[0, 3]  # descent raises the original, lowers the most degraded copy


def test_classify_loss_is_cross_entropy_of_the_level():
    levels = 4
    uniform = jnp.zeros((1, levels, levels), jnp.float64)
    valid = jnp.ones((1, levels), bool)
    np.testing.assert_allclose(classify_loss(uniform, valid), [math.log(levels)], rtol=1e-12)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, levels, levels)))
    manual = -np.mean([jax.nn.log_softmax(logits[0, k])[k] for k in range(levels)])
    np.testing.assert_allclose(classify_loss(logits, valid), [manual], rtol=1e-12)
    masked = jnp.array([[True, True, False, False]])
    manual = -np.mean([jax.nn.log_softmax(logits[0, k])[k] for k in range(2)])
    np.testing.assert_allclose(classify_loss(logits, masked), [manual], rtol=1e-12)


def test_level_rewards_and_accuracy():
    policy, reference, lengths = jnp.array([-4.0, -6.0]), jnp.array([-5.0, -5.0]), jnp.array([2.0, 3.0])
    np.testing.assert_allclose(level_rewards("log_ratio", 0.1, policy, reference, lengths), [0.1, -0.1])
    np.testing.assert_allclose(level_rewards("log_ratio", 0.1, policy, None, lengths), [-0.4, -0.6])
    np.testing.assert_allclose(level_rewards("mean_logp", 2.0, policy, None, lengths), [-4.0, -4.0])
    np.testing.assert_allclose(level_rewards("logp", 0.5, policy, reference, lengths), [-2.0, -3.0])
    right, pairs = pairwise_accuracy(jnp.array([[2.0, 3.0, 1.0, 0.0]]), jnp.array([[True, True, True, False]]))
    assert (float(right[0]), float(pairs[0])) == (2.0, 3.0)  # (0,2) and (1,2) right, (0,1) wrong; level 3 invalid


@pytest.mark.parametrize(
    "override, key",
    [
        ("loss.selfsup.unit=paragraph", "loss.selfsup.unit"),
        ("loss.selfsup.fraction=0", "loss.selfsup.fraction"),
        ("loss.selfsup.mode=rank", "loss.selfsup.mode"),
        ("loss.selfsup.weight=-1", "loss.selfsup.weight"),
        ("loss.selfsup.levles=2", "levels"),
    ],
)
def test_bad_selfsup_config_names_the_key(override, key):
    from jaxspo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])
