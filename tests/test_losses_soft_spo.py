"""soft_spo (docs/methods/soft-spo.md): hand-made list arrays, the CPO reduction, μ, and float64 tabular optima."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.config import ConfigError, LossConfig, load_config
from jaxspo.losses import PairLogps, get_loss
from jaxspo.losses.reference_free import CpoParams
from jaxspo.losses.soft_spo import ListLogps, best_of_n_loss, mu_weights, plackett_luce_loss
from jaxspo.train.logprobs import full_vocab_kl


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


SOFT_SPO_TERMS = ("soft_spo", "soft_spo_best_of_n", "soft_spo_ranked")


def spo_cfg(alpha: float = 1.0, gamma: float = 0.0, **loss) -> LossConfig:
    """The same α, γ for the three soft_spo terms (``loss.params.<term>``)."""
    return LossConfig(params={name: get_loss(name).params(alpha=alpha, gamma=gamma) for name in SOFT_SPO_TERMS}, **loss)


def random_pairs(n: int = 16, seed: int = 0) -> PairLogps:
    rng = np.random.default_rng(seed)
    a = lambda: jnp.asarray(rng.normal(-12.0, 4.0, size=n))  # noqa: E731
    return PairLogps(a(), a(), a(), a(), jnp.full(n, 6.0), jnp.full(n, 4.0), jnp.ones(n))


def pair_loss(name: str, logps: PairLogps, cfg: LossConfig) -> jax.Array:
    return get_loss(name).apply(logps, cfg)[0]


# --------------------------------------------------------------------------------------------
# Hand-made arrays
# --------------------------------------------------------------------------------------------


def test_plackett_luce_and_best_of_n_match_hand_computation():
    logps = jnp.array([[-1.0, -2.0, -4.0]])
    mask = jnp.ones((1, 3), bool)
    alpha = 0.5
    s = 0.5 * np.array([-1.0, -2.0, -4.0])
    lse = lambda x: np.log(np.exp(x).sum())  # noqa: E731
    ranked = -((s[0] - lse(s)) + (s[1] - lse(s[1:]))) / alpha  # the last term is 0
    np.testing.assert_allclose(plackett_luce_loss(logps, mask, alpha), [ranked], rtol=1e-12)
    np.testing.assert_allclose(best_of_n_loss(logps, mask, alpha), [-(s[0] - lse(s)) / alpha], rtol=1e-12)


def test_missing_entries_are_ignored_and_get_no_gradient():
    short = jnp.array([[-1.0, -3.0]])
    padded = jnp.array([[-1.0, -3.0, 123.0]])  # the third entry is padding: any value
    mask = jnp.array([[True, True, False]])
    for fn in (plackett_luce_loss, best_of_n_loss):
        np.testing.assert_allclose(fn(padded, mask, 0.7), fn(short, jnp.ones((1, 2), bool), 0.7), rtol=1e-12)
        grad = jax.grad(lambda x: fn(x, mask, 0.7).sum())(padded)
        assert np.isfinite(np.asarray(grad)).all() and grad[0, 2] == 0.0 and abs(grad[0, 0]) > 0


def test_pairwise_best_of_two_and_ranked_two_agree():
    logps = random_pairs()
    cfg = spo_cfg(alpha=0.4)
    lists = ListLogps(
        policy=jnp.stack([logps.policy_chosen, logps.policy_rejected], -1),
        mask=jnp.ones((16, 2), bool),
        lengths=jnp.ones((16, 2)),
    )
    pairwise = pair_loss("soft_spo", logps, cfg)
    np.testing.assert_allclose(get_loss("soft_spo_best_of_n").apply(lists, cfg)[0], pairwise, rtol=1e-12)
    np.testing.assert_allclose(get_loss("soft_spo_ranked").apply(lists, cfg)[0], pairwise, rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0, 2.0])
def test_pairwise_soft_spo_is_cpo_at_beta_alpha_without_nll_divided_by_alpha(alpha):
    logps = random_pairs(seed=1)
    spo, cpo = spo_cfg(alpha=alpha), LossConfig(beta=alpha, params={"cpo": CpoParams(nll_weight=0.0)})
    # exact up to float64 rounding (logsumexp here, log-sigmoid in cpo)
    np.testing.assert_allclose(
        pair_loss("soft_spo", logps, spo), pair_loss("cpo", logps, cpo) / alpha, rtol=1e-9, atol=1e-15
    )

    def grads(name, cfg):
        fn = lambda c, r: pair_loss(name, logps.replace(policy_chosen=c, policy_rejected=r), cfg).sum()  # noqa: E731
        return jax.grad(fn, argnums=(0, 1))(logps.policy_chosen, logps.policy_rejected)

    for a, b in zip(grads("soft_spo", spo), grads("cpo", cpo)):
        np.testing.assert_allclose(a, b / alpha, rtol=1e-9, atol=1e-15)
    rewards = get_loss("soft_spo").apply(logps, spo)[1]["rewards/chosen"]
    np.testing.assert_allclose(rewards, get_loss("cpo").apply(logps, cpo)[1]["rewards/chosen"], rtol=1e-12)


def test_mu_weighting_values_and_stop_gradient():
    logps = jnp.array([[-1.0, -2.0], [-6.0, -9.0], [-3.0, -3.5]])
    mask = jnp.ones((3, 2), bool)
    alpha, gamma = 0.5, 0.8
    np.testing.assert_array_equal(mu_weights(logps, mask, alpha, 0.0), np.ones(3))
    log_mu = (gamma / alpha) * np.log(np.exp(alpha * np.asarray(logps)).sum(-1))  # log (Σ π^α)^(γ/α)
    expected = np.exp(log_mu - log_mu.mean())
    np.testing.assert_allclose(mu_weights(logps, mask, alpha, gamma), expected, rtol=1e-12)
    assert expected[0] > expected[2] > expected[1]  # the model's unlikely pairs weigh less
    weighted = jax.grad(lambda x: (mu_weights(x, mask, alpha, gamma) * best_of_n_loss(x, mask, alpha)).sum())(logps)
    plain = jax.grad(lambda x: best_of_n_loss(x, mask, alpha).sum())(logps)
    np.testing.assert_allclose(weighted, expected[:, None] * plain, rtol=1e-12)  # no gradient through μ
    pairs = PairLogps(logps[:, 0], logps[:, 1], None, None, jnp.ones(3), jnp.ones(3), jnp.ones(3))
    loss, metrics = get_loss("soft_spo").apply(pairs, spo_cfg(alpha, gamma))
    np.testing.assert_allclose(loss, expected * best_of_n_loss(logps, mask, alpha), rtol=1e-12)
    np.testing.assert_allclose(metrics["soft_spo/mu"], expected, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Tabular theory: minimiser softmax(r/α), independent of π_ref; β_KL pulls it toward π_ref
# --------------------------------------------------------------------------------------------

REWARDS = np.array([1.0, 0.3, -0.5, 0.0])  # Bradley–Terry / Plackett–Luce with temperature 1
K = len(REWARDS)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def pair_data(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(w, l, p̂, weight) per pair. ``pairwise``: every ordered pair, hard label, weighted by P(w ≻ l) = σ(r_w − r_l).

    ``pairwise_soft``: each unordered pair once (w < l), weight 1, soft label p̂ = σ(r_w − r_l) (below ½ for some);
    ``pairwise_soft_as_hard``: the same pairs oriented so p̂ ≥ ½, then read as p̂ = 1 (the label ignored).
    """
    if kind == "pairwise":
        pairs = np.array(list(itertools.permutations(range(K), 2)))
        weights = sigmoid(REWARDS[pairs[:, 0]] - REWARDS[pairs[:, 1]])
        return pairs[:, 0], pairs[:, 1], np.ones(len(pairs)), weights
    pairs = np.array(list(itertools.combinations(range(K), 2)))
    labels = sigmoid(REWARDS[pairs[:, 0]] - REWARDS[pairs[:, 1]])
    if kind == "pairwise_soft_as_hard":
        pairs, labels = np.where((labels < 0.5)[:, None], pairs[:, ::-1], pairs), np.ones(len(pairs))
    return pairs[:, 0], pairs[:, 1], labels, np.ones(len(pairs))


def list_data(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Lists of 2, 3 and 4 responses (subsets, uniform per size), padded to 4, with their probabilities and scores.

    best-of-n: best first, P(b best | S) = softmax(r_S)[b]; ranked: the Plackett–Luce probability of the order.
    ``*_soft``: each subset once (weight 1, in index order, not best first), scored with r: soft winners only.
    """
    orders, weights = [], []
    for size in (2, 3, 4):
        for subset in itertools.combinations(range(K), size):
            e = np.exp(REWARDS[list(subset)])
            if kind.endswith("_soft"):
                orders.append(list(subset))
                weights.append(1.0)
            elif kind == "best_of_n":
                for b, p in zip(subset, e / e.sum()):
                    orders.append([b] + [j for j in subset if j != b])
                    weights.append(p)
            else:
                for perm in itertools.permutations(subset):
                    r = np.exp(REWARDS[list(perm)])
                    weights.append(np.prod(r / np.cumsum(r[::-1])[::-1]))
                    orders.append(list(perm))
    index = np.array([o + [o[0]] * (K - len(o)) for o in orders])  # padding repeats the best
    mask = np.array([[j < len(o) for j in range(K)] for o in orders])
    return index, mask, np.array(weights), REWARDS[index] if kind.endswith("_soft") else None


@functools.cache
def tabular_problem(kind: str):
    """Jitted (f, ∇f, ∇²f) of θ ↦ E_data[loss] + β_KL·KL(softmax θ ‖ π_ref), args (θ, α, π_ref logits, β_KL).

    The preference term calls the registered loss; the KL is the step's full-vocabulary formula.
    """
    if kind.startswith("pairwise"):
        w, l, labels, weights = pair_data(kind)

        def preference(logp, ref, cfg):
            n = len(w)
            logps = PairLogps(logp[w], logp[l], ref[w], ref[l], jnp.ones(n), jnp.ones(n), jnp.asarray(labels))
            return (weights * get_loss("soft_spo").apply(logps, cfg)[0]).sum()
    else:
        index, mask, weights, scores = list_data(kind)
        name = "soft_spo_best_of_n" if kind.startswith("best_of_n") else "soft_spo_ranked"

        def preference(logp, ref, cfg):
            logps = ListLogps(policy=logp[index], mask=jnp.asarray(mask), lengths=jnp.ones(index.shape), scores=scores)
            return (weights * get_loss(name).apply(logps, cfg)[0]).sum()

    def total(theta, alpha, reference_logits, kl_beta):
        ref = jax.nn.log_softmax(reference_logits)
        return preference(jax.nn.log_softmax(theta), ref, spo_cfg(alpha=alpha)) + kl_beta * full_vocab_kl(theta, ref)

    return jax.jit(total), jax.jit(jax.grad(total)), jax.jit(jax.hessian(total))


def minimise(kind: str, alpha: float, reference_logits: np.ndarray, kl_beta: float = 0.0) -> np.ndarray:
    """The optimal tabular policy, by damped Newton in float64 (pseudo-inverse: the objective is shift-invariant in
    θ)."""
    f, grad, hess = tabular_problem(kind)
    args = (jnp.float64(alpha), jnp.asarray(reference_logits, jnp.float64), jnp.float64(kl_beta))
    theta = jnp.zeros(K, jnp.float64)
    for _ in range(100):
        g = grad(theta, *args)
        if float(jnp.abs(g).max()) < 1e-12 * (1 + kl_beta):
            break
        step = -jnp.linalg.pinv(hess(theta, *args), rtol=1e-10) @ g
        if float(g @ step) >= 0:
            step = -g
        t = 1.0
        if float(jnp.abs(g).max()) > 1e-6:  # Armijo backtracking far from the optimum; full Newton steps near it
            while float(f(theta + t * step, *args)) > float(f(theta, *args)) + 1e-4 * t * float(g @ step) and t > 1e-10:
                t /= 2
        theta = theta + t * step
    assert float(jnp.abs(grad(theta, *args)).max()) < 1e-10 * (1 + kl_beta)
    return np.asarray(jax.nn.softmax(theta))


KINDS = ("pairwise", "best_of_n", "ranked")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0, 2.0])
def test_tabular_minimiser_is_softmax_r_over_alpha_whatever_the_reference(kind, alpha):
    target = np.exp(REWARDS / alpha) / np.exp(REWARDS / alpha).sum()
    for seed in (0, 1):
        reference = np.random.default_rng(seed).normal(size=K) * 2
        policy = minimise(kind, alpha, reference)
        np.testing.assert_allclose(policy, target, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["pairwise_soft", "best_of_n_soft", "ranked_soft"])
@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_soft_labelled_data_alone_has_the_tabular_minimiser_softmax_r_over_alpha(kind, alpha):
    # pairs with p̂ = σ(r_w − r_l) (no order sampled), lists with scores r (soft winners at τ = 1, no ranking used)
    target = np.exp(REWARDS / alpha) / np.exp(REWARDS / alpha).sum()
    policy = minimise(kind, alpha, np.random.default_rng(0).normal(size=K) * 2)
    np.testing.assert_allclose(policy, target, atol=1e-9, rtol=0)  # Newton stops at |∇| < 1e-12


def test_the_same_pairs_read_as_hard_labels_do_not_recover_softmax_r_over_alpha():
    alpha, reference = 0.5, jnp.zeros(K)
    target_theta = jnp.asarray(REWARDS / alpha)  # log softmax(r/α) up to a constant
    soft_grad = tabular_problem("pairwise_soft")[1](target_theta, alpha, reference, 0.0)
    f, grad, _ = tabular_problem("pairwise_soft_as_hard")
    assert (
        float(jnp.abs(soft_grad).max()) < 1e-12
        and float(jnp.abs(grad(target_theta, alpha, reference, 0.0)).max()) > 0.05
    )
    theta = target_theta
    for _ in range(200):  # gradient descent from softmax(r/α): the hard-label loss keeps falling, away from it
        theta = theta - 0.5 * grad(theta, alpha, reference, 0.0)
    policy, target = np.asarray(jax.nn.softmax(theta)), np.asarray(jax.nn.softmax(target_theta))
    assert float(f(theta, alpha, reference, 0.0)) < float(f(target_theta, alpha, reference, 0.0))
    assert np.abs(policy - target).sum() / 2 > 0.1 and policy[0] > target[0]  # mass piles onto the top response


@pytest.mark.parametrize("kind", KINDS)
def test_kl_regulariser_moves_the_optimum_toward_the_reference(kind):
    alpha = 0.5
    reference = np.array([-1.0, 1.5, 0.5, -0.5])  # its mode (response 1) is not the reward's (response 0)
    ref = np.exp(reference) / np.exp(reference).sum()
    distances = []
    for kl_beta in (0.0, 0.1, 1.0, 10.0, 100.0):
        policy = minimise(kind, alpha, reference, kl_beta)
        distances.append(float((policy * np.log(policy / ref)).sum()))
    assert all(a > b for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] < 0.01 * distances[0], distances


def test_full_vocab_kl_matches_its_definition():
    p, q = np.array([0.2, 1.0, -0.5]), np.array([1.0, 0.0, 0.3])
    pp, qq = np.exp(p) / np.exp(p).sum(), np.exp(q) / np.exp(q).sum()
    np.testing.assert_allclose(full_vocab_kl(jnp.asarray(p), jnp.asarray(q)), (pp * np.log(pp / qq)).sum(), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["loss.terms={soft_spo: 1.0}", "loss.kl.beta=0.1", "loss.reference=none"],
            "loss.kl.beta > 0 needs the frozen reference",
        ),
        (["loss.terms={soft_spo: 1.0}", "loss.kl.beta=0.1", "loss.reference=precomputed"], "loss.reference: resident"),
        (
            ["loss.terms={soft_spo: 1.0}", "loss.params.soft_spo.alpha=0"],
            "loss.params.soft_spo.alpha must be > 0, got 0.0",
        ),
        (
            ["loss.terms={soft_spo_ranked: 1.0}", "loss.params.soft_spo_ranked.alpha=-1"],
            "loss.params.soft_spo_ranked.alpha must be > 0",
        ),
        (["loss.terms={soft_spo_ranked: 1.0, dpo: 1.0}"], "list losses and pair losses cannot be combined"),
        (
            ["loss.kl.beta=0.1", "loss.kl.prompts=3", "trainer.grad_accum_steps=2"],
            "must divide by trainer.grad_accum_steps",
        ),
        (["loss.kl.prompt_source=test"], "loss.kl.prompt_source must be"),
        (
            ["loss.terms={soft_spo: 1.0}", "loss.params.soft_spo.alpah=1"],
            "unknown config key 'loss.params.soft_spo.alpah'; did you mean 'alpha'?",
        ),
        (["loss.kl.bta=1"], "unknown config key 'loss.kl.bta'; did you mean 'beta'?"),
    ],
)
def test_bad_soft_spo_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        load_config(None, overrides)
