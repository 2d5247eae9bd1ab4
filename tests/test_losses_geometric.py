"""Soft-label losses (docs/methods/gdpo.md), float64 tabular checks: GDPO's special cases, soft cDPO's optimum, the
bandit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxspo.config import LossConfig
from jaxspo.losses import PairLogps, get_loss
from jaxspo.losses.dpo_family import RopoParams
from tests.long_loops import compile_optimised

SOFT = ("gdpo", "gipo", "gropo", "cdpo_soft", "cipo")
PARENT = {"gdpo": "dpo", "gipo": "ipo", "gropo": "ropo", "cdpo_soft": "dpo", "cipo": "ipo"}


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def random_logps(soft_label: float | np.ndarray, n: int = 16, seed: int = 0) -> PairLogps:
    rng = np.random.default_rng(seed)
    a = lambda: jnp.asarray(rng.normal(-20.0, 5.0, size=n))  # noqa: E731
    return PairLogps(
        a(),
        a(),
        a(),
        a(),
        jnp.full(n, 7.0),
        jnp.full(n, 5.0),
        jnp.broadcast_to(jnp.asarray(soft_label, jnp.float64), (n,)),
    )


def loss_of(name: str, logps: PairLogps, cfg: LossConfig) -> jax.Array:
    return get_loss(name).apply(logps, cfg)


def policy_grad(name: str, logps: PairLogps, cfg: LossConfig) -> tuple[jax.Array, jax.Array]:
    def total(chosen, rejected):
        return loss_of(name, logps.replace(policy_chosen=chosen, policy_rejected=rejected), cfg).sum()

    return jax.grad(total, argnums=(0, 1))(logps.policy_chosen, logps.policy_rejected)


def test_gdpo_at_one_half_is_log2_with_exactly_zero_gradient():
    cfg = LossConfig(beta=0.3)
    logps = random_logps(0.5)
    np.testing.assert_array_equal(loss_of("gdpo", logps, cfg), np.log(2.0))
    for grad in policy_grad("gdpo", logps, cfg):
        np.testing.assert_array_equal(grad, 0.0)
    assert np.abs(np.asarray(policy_grad("dpo", logps, cfg)[0])).max() > 1e-3  # DPO does move on the same pairs


@pytest.mark.parametrize("name", SOFT)
def test_soft_losses_at_p_one_equal_their_hard_parent_exactly(name):
    cfg = LossConfig(beta=0.3)
    logps = random_logps(1.0)
    np.testing.assert_array_equal(loss_of(name, logps, cfg), loss_of(PARENT[name], logps, cfg))


@pytest.mark.parametrize("name", SOFT)
def test_swapping_a_pair_with_its_label_leaves_the_loss_unchanged(name):
    cfg = LossConfig(beta=0.3)
    labels = np.linspace(0.05, 0.95, 16)
    logps = random_logps(labels)
    swapped = PairLogps(
        logps.policy_rejected,
        logps.policy_chosen,
        logps.reference_rejected,
        logps.reference_chosen,
        logps.rejected_length,
        logps.chosen_length,
        1.0 - logps.soft_label,
    )
    np.testing.assert_allclose(loss_of(name, swapped, cfg), loss_of(name, logps, cfg), rtol=1e-12)
    assert not np.allclose(loss_of(name, logps, cfg), loss_of(name, random_logps(0.9), cfg))  # p̂ matters


def test_geometric_losses_scale_the_margin_by_2p_minus_1():
    cfg = LossConfig(beta=0.3, params={"gropo": RopoParams(alpha=14.0)})
    logps = random_logps(np.linspace(0.5, 1.0, 16))
    h = np.asarray(logps.margin())
    z = 0.3 * (2 * np.asarray(logps.soft_label) - 1) * h
    np.testing.assert_allclose(loss_of("gdpo", logps, cfg), np.logaddexp(0.0, -z), rtol=1e-12)
    np.testing.assert_allclose(loss_of("gipo", logps, cfg), (z / 0.3 - 1 / 0.6) ** 2, rtol=1e-12)
    ropo = 4 * 14 / 15**2 * (np.logaddexp(0.0, -z) + 14 / (1 + np.exp(z)))
    np.testing.assert_allclose(loss_of("gropo", logps, cfg), ropo, rtol=1e-12)
    cipo = (h - (2 * np.asarray(logps.soft_label) - 1) / 0.6) ** 2
    np.testing.assert_allclose(loss_of("cipo", logps, cfg), cipo, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Tabular policies: π = softmax(θ) over K responses to one prompt, every pair (i, j) weighted.
# ---------------------------------------------------------------------------------------------


def tabular_loss(name: str, cfg: LossConfig, ref: jax.Array, labels: jax.Array, weights: jax.Array):
    """θ ↦ Σ_ij w_ij loss(pair i ≻ j with p̂_ij), ``ref`` the reference log-probs ``[K]``."""
    k = ref.shape[0]
    i, j = jnp.meshgrid(jnp.arange(k), jnp.arange(k), indexing="ij")
    ones = jnp.ones((k, k))

    def loss(theta: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(theta)
        pairs = PairLogps(logp[i], logp[j], ref[i], ref[j], ones, ones, labels)
        return (weights * get_loss(name).apply(pairs, cfg)).sum() / weights.sum()

    return loss


@pytest.mark.slow  # an optimisation to convergence
def test_soft_cdpo_tabular_optimum_is_reference_tilted_by_reward():
    k, beta = 6, 0.7
    rng = np.random.default_rng(1)
    ref = jax.nn.log_softmax(jnp.asarray(rng.normal(size=k)))
    reward = jnp.asarray(rng.normal(size=k))
    labels = jax.nn.sigmoid(reward[:, None] - reward[None, :])  # Bradley–Terry p̂_ij
    weights = jnp.asarray(rng.uniform(0.5, 2.0, size=(k, k))) * (1 - jnp.eye(k))
    loss = tabular_loss("cdpo_soft", LossConfig(beta=beta), ref, labels, weights)
    free = lambda x: loss(jnp.concatenate([jnp.zeros(1), x]))  # noqa: E731  (θ_0 = 0 removes the shift freedom)
    newton = jax.jit(lambda x: x - jnp.linalg.solve(jax.hessian(free)(x), jax.grad(free)(x)))  # compiled once
    x = jnp.zeros(k - 1)
    for _ in range(30):  # Newton's method on a strictly convex problem
        x = newton(x)
    assert np.abs(np.asarray(jax.grad(free)(x))).max() < 1e-12
    theta = jnp.concatenate([jnp.zeros(1), x])
    expected = jax.nn.softmax(ref + reward / beta)
    np.testing.assert_allclose(jax.nn.softmax(theta), expected, atol=1e-7)
    assert np.abs(np.asarray(expected - jnp.exp(ref))).max() > 0.05  # the optimum really differs from π_ref


def bandit_policies(names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """100 arms; reward peaks at arm 80; π_ref and 90% of the data sit around arm 30 (10% uniform)."""
    k, beta, temperature = 100, 1.0, 0.5
    arms = jnp.arange(k, dtype=jnp.float64)
    reward = jnp.exp(-((arms - 80.0) ** 2) / (2 * 10.0**2))
    ref_logits = -((arms - 30.0) ** 2) / (2 * 8.0**2)
    data = 0.9 * jax.nn.softmax(ref_logits) + 0.1 / k
    labels = jax.nn.sigmoid((reward[:, None] - reward[None, :]) / temperature)
    weights = jnp.where(labels > 0.5, 2 * data[:, None] * data[None, :], 0.0)  # pairs oriented: p̂ > ½
    tx = optax.adam(0.3)
    out = {}
    for name in names:
        loss = tabular_loss(name, LossConfig(beta=beta), jax.nn.log_softmax(ref_logits), labels, weights)

        def step(_, carry):
            theta, state = carry
            updates, state = tx.update(jax.grad(loss)(theta), state)
            return optax.apply_updates(theta, updates), state

        descend = compile_optimised(lambda t: jax.lax.fori_loop(0, 5000, step, (t, tx.init(t)))[0], ref_logits)
        theta = descend(ref_logits)
        out[name] = np.asarray(jax.nn.softmax(theta))
    closed_form = np.asarray(jax.nn.softmax(ref_logits + reward / (beta * temperature)))
    return out, closed_form


@pytest.mark.slow  # three optimisations to convergence
def test_bandit_cdpo_stays_near_the_data_while_dpo_and_gdpo_move_to_the_reward_peak():
    policies, cdpo_optimum = bandit_policies(("cdpo_soft", "dpo", "gdpo"))
    assert abs(int(np.argmax(policies["cdpo_soft"])) - 30) <= 3
    np.testing.assert_allclose(policies["cdpo_soft"], cdpo_optimum, atol=2e-3)
    for name in ("dpo", "gdpo"):
        assert abs(int(np.argmax(policies[name])) - 80) <= 5, (name, int(np.argmax(policies[name])))
