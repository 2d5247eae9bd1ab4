"""soft_spo with soft labels (docs/methods/soft-spo.md): p̂ = 1 is the hard-label loss to rounding, the pairwise loss is
the Bradley–Terry expectation over both orders, and list rows with scores have soft winners softmax(score/τ)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.config import ConfigError, LossConfig, load_config
from jaxspo.losses import PairLogps, get_loss
from jaxspo.losses.soft_spo import ListLogps, SoftSpoListParams, SoftSpoParams, best_of_n_loss, plackett_luce_loss


def pairs(labels: np.ndarray, dtype, seed: int = 0) -> PairLogps:
    rng = np.random.default_rng(seed)
    n = len(labels)
    a = lambda: jnp.asarray(rng.normal(-12.0, 4.0, size=n), dtype)  # noqa: E731
    return PairLogps(a(), a(), None, None, jnp.full(n, 6.0), jnp.full(n, 4.0), jnp.asarray(labels, dtype))


def pair_cfg(alpha: float, gamma: float = 0.0) -> LossConfig:
    return LossConfig(params={"soft_spo": SoftSpoParams(alpha=alpha, gamma=gamma)})


def list_cfg(alpha: float, temperature: float = 1.0) -> LossConfig:
    params = SoftSpoListParams(alpha=alpha, score_temperature=temperature)
    return LossConfig(params={"soft_spo_best_of_n": params, "soft_spo_ranked": params})


def soft_spo_loss(logps: PairLogps, cfg: LossConfig) -> jax.Array:
    return get_loss("soft_spo").apply(logps, cfg)[0]


def hard_label_loss(logps: PairLogps, alpha: float, gamma: float) -> jax.Array:
    """The loss before soft labels were read, restated: μ·(−(1/α)(s_w − logsumexp(s))),
    s = α·(log πθ(y_w), log πθ(y_l))."""
    scores = alpha * jnp.stack([logps.policy_chosen, logps.policy_rejected], axis=-1)
    loss = -(scores[:, 0] - jax.nn.logsumexp(scores, axis=-1)) / alpha
    if gamma == 0:
        return loss
    log_mu = (gamma / alpha) * jax.nn.logsumexp(scores, axis=-1)
    return jax.lax.stop_gradient(jnp.exp(log_mu - log_mu.mean())) * loss


def hard_label_losses_and_gradients(alpha: float, gamma: float):
    """One compiled program: (new loss, old loss, new gradients, old gradients) at p̂ = 1 for (chosen, rejected)."""

    def losses(logps: PairLogps) -> tuple[jax.Array, jax.Array]:
        return soft_spo_loss(logps, pair_cfg(alpha, gamma)), hard_label_loss(logps, alpha, gamma)

    def both(logps: PairLogps, c: jax.Array, r: jax.Array):
        new, old = (lambda c, r, i=i: losses(logps.replace(policy_chosen=c, policy_rejected=r))[i] for i in (0, 1))
        grads = [jax.grad(lambda c, r, f=f: f(c, r).sum(), argnums=(0, 1))(c, r) for f in (new, old)]
        return new(c, r), old(c, r), *grads

    return jax.jit(both)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(("alpha", "gamma"), [(1.0, 0.0), (0.3, 0.0), (0.5, 0.8)])
def test_hard_label_is_the_old_loss_to_rounding(dtype, alpha, gamma):
    # p̂ = 1 computes −(1/α)[log σ(αd) + 0·log σ(−αd)], the old loss −(1/α)(s_w − logsumexp(s)): the same function by
    # different operations, so they agree to the last bits of the log-probs, not bit for bit (which bits differ
    # depends on the CPU and on how XLA fuses each graph). Compiled, as a training step runs it.
    eps = float(jnp.finfo(dtype).eps)
    with jax.enable_x64(dtype == jnp.float64):
        logps = pairs(np.ones(16), dtype)
        args = (logps.policy_chosen, logps.policy_rejected)
        scale = float(jnp.abs(jnp.stack(args)).max())  # s_w − logsumexp(s) cancels: ulps of the log-probs
        new, old, new_grads, old_grads = hard_label_losses_and_gradients(alpha, gamma)(logps, *args)
        np.testing.assert_allclose(new, old, rtol=0, atol=2 * eps * scale)
        for a, b in zip(new_grads, old_grads):  # each |gradient| ≤ μ ≤ a few units
            np.testing.assert_allclose(a, b, rtol=4 * eps, atol=4 * eps)


def test_soft_pair_loss_is_the_expectation_over_both_orders_and_symmetric():
    with jax.enable_x64(True):
        labels = np.array([0.0, 0.1, 0.3, 0.5, 0.5, 0.7, 0.9, 1.0])
        logps, alpha = pairs(labels, jnp.float64, seed=1), 0.4
        d = np.asarray(logps.policy_chosen - logps.policy_rejected)
        log_sigmoid = lambda x: -np.log1p(np.exp(-x))  # noqa: E731
        expected = -(labels * log_sigmoid(alpha * d) + (1 - labels) * log_sigmoid(-alpha * d)) / alpha
        np.testing.assert_allclose(soft_spo_loss(logps, pair_cfg(alpha)), expected, rtol=1e-12)
        swapped = logps.replace(
            policy_chosen=logps.policy_rejected, policy_rejected=logps.policy_chosen, soft_label=1.0 - logps.soft_label
        )
        np.testing.assert_allclose(soft_spo_loss(swapped, pair_cfg(alpha)), expected, rtol=1e-12)


@pytest.mark.parametrize("label", [0.5, 0.8, 0.2])
def test_a_pair_is_minimised_where_alpha_times_the_logp_gap_is_logit_p(label):
    # p̂ = ½: at equal log-probabilities; in general at α·d = log(p̂ / (1 − p̂)) (σ(α d) = p̂)
    with jax.enable_x64(True):
        alpha = 0.7
        base = pairs(np.full(1, label), jnp.float64)

        def loss(d):
            return soft_spo_loss(base.replace(policy_chosen=base.policy_rejected + d), pair_cfg(alpha)).sum()

        best = np.log(label / (1 - label)) / alpha
        assert abs(float(jax.grad(loss)(jnp.float64(best)))) < 1e-15
        assert all(float(loss(best + delta)) > float(loss(best)) for delta in (-0.5, -1e-3, 1e-3, 0.5))


LIST_LOGPS = np.array([[-1.0, -2.5, -4.0], [-3.0, -1.0, 0.0], [-2.0, -6.0, -1.0]])
LIST_MASK = np.array([[True, True, True], [True, True, False], [True, True, True]])
SCORES = np.array([[0.2, 1.5, -0.3], [np.nan] * 3, [1.0, -1.0, 9.0]])  # row 1 has no scores; row 0's ranking ≠ scores


def list_loss(name: str, scores: jax.Array | None, cfg: LossConfig) -> jax.Array:
    scores = None if scores is None else jnp.asarray(scores)
    logps = ListLogps(
        policy=jnp.asarray(LIST_LOGPS), mask=jnp.asarray(LIST_MASK), lengths=jnp.ones(LIST_LOGPS.shape), scores=scores
    )
    return get_loss(name).apply(logps, cfg)[0]


def by_hand(kind: str, alpha: float, temperature: float) -> np.ndarray:
    """Σ over stages (best-of-n: stage 0 only) of −(1/α) Σ_{j≥k} q_j log softmax(α·logps over j ≥ k),
    q = softmax(c/τ)."""
    out = []
    for logps, mask, scores in zip(LIST_LOGPS, LIST_MASK, SCORES):
        s, c = alpha * logps[mask], scores[mask] / temperature
        stages = range(1 if kind == "best_of_n" else len(s))
        total = 0.0
        for k in stages:
            q = np.exp(c[k:]) / np.exp(c[k:]).sum() if np.isfinite(c).all() else np.eye(len(s) - k)[0]
            total += -(q * (s[k:] - np.log(np.exp(s[k:]).sum()))).sum() / alpha
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize(("alpha", "temperature"), [(1.0, 1.0), (0.5, 2.0), (2.0, 0.3)])
def test_list_rows_with_scores_have_soft_winners_and_rows_without_keep_the_hard_loss(alpha, temperature):
    with jax.enable_x64(True):
        cfg = list_cfg(alpha, temperature)
        for name, kind, hard in (
            ("soft_spo_best_of_n", "best_of_n", best_of_n_loss),
            ("soft_spo_ranked", "ranked", plackett_luce_loss),
        ):
            loss = list_loss(name, SCORES, cfg)
            np.testing.assert_allclose(loss, by_hand(kind, alpha, temperature), rtol=1e-12)
            old = hard(jnp.asarray(LIST_LOGPS), jnp.asarray(LIST_MASK), alpha)
            # unscored: the hard loss to float64 rounding (another sum order); scored: soft
            np.testing.assert_allclose(loss[1], old[1], rtol=1e-13)
            assert abs(float(loss[0] - old[0])) > 1e-3
            np.testing.assert_allclose(list_loss(name, None, cfg), old, rtol=1e-13)  # no scores at all
            np.testing.assert_allclose(list_loss(name, np.full_like(SCORES, np.nan), cfg), old, rtol=1e-13)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["loss.terms={soft_spo_ranked: 1.0}", "loss.params.soft_spo_ranked.score_temperature=0"],
            "loss.params.soft_spo_ranked.score_temperature must be > 0, got 0.0",
        ),
        (
            ["loss.terms={soft_spo: 1.0}", "loss.params.soft_spo.score_temperature=1"],
            "unknown config key 'loss.params.soft_spo.score_temperature'",
        ),
    ],
)
def test_bad_score_temperature_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
