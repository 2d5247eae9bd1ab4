"""``sequential`` (docs/methods/sequential.md): tabular optimum per stage, λ = 0 is DPO, offsets, pairs, config
errors."""

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.config import ConfigError, LossConfig, load_config
from jaxspo.data.dimensions import dimension_pairs, group_responses
from jaxspo.losses import PairLogps, get_loss
from jaxspo.losses.sequential import implicit_rewards, stage_offset


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


# ---------------------------------------------------------------------------------------------
# Tabular theory (float64): each stage's optimum is π_{n−1}·exp((R_n + Σ_i λ_{n,i} R_i)/β_n)/Z
# ---------------------------------------------------------------------------------------------


def _all_pairs(num_prompts: int, num_responses: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt, a, b) index arrays of every ordered pair a ≠ b of each prompt's responses."""
    p, a, b = np.meshgrid(np.arange(num_prompts), np.arange(num_responses), np.arange(num_responses), indexing="ij")
    keep = a != b
    return p[keep], a[keep], b[keep]


@functools.partial(jax.jit, static_argnames="shape")
def _population_loss(theta, log_prev, offset, weight, beta, shape):
    """Σ_pairs BT-weight · sequential loss of the tabular policy softmax(θ) ``[P, K]`` (every ordered pair)."""
    p, a, b = _all_pairs(*shape)
    logp = jax.nn.log_softmax(theta.reshape(shape), axis=-1)
    ones = jnp.ones(len(p))
    logps = PairLogps(logp[p, a], logp[p, b], log_prev[p, a], log_prev[p, b], ones, ones, ones, offset)
    return (weight * get_loss("sequential").fn(logps, types.SimpleNamespace(beta=beta))[0]).sum()


_grad = jax.jit(jax.grad(_population_loss), static_argnames="shape")
_hess = jax.jit(jax.hessian(_population_loss), static_argnames="shape")


def _train_stage(log_prev, frozen, reward, beta, betas, lambdas, stage_lambdas):
    """Minimises the population sequential loss over a tabular policy ``[P, K]`` exactly (Newton).

    Pairs are every ordered (a, b) of a prompt's responses, weighted by the Bradley–Terry probability
    σ(r(a) − r(b)) that ``a`` is chosen under the stage's dimension reward ``reward`` ``[P, K]``.
    ``frozen``: log π_0 … log π_{n−1} ``[P, K]`` each (the last is ``log_prev``).
    """
    shape = log_prev.shape
    p, a, b = _all_pairs(*shape)
    weight = jax.nn.sigmoid(reward[p, a] - reward[p, b])
    offset = stage_offset([f[p, a] for f in frozen], [f[p, b] for f in frozen], betas, lambdas, stage_lambdas)
    args = (log_prev, offset, weight, beta)
    theta = log_prev.reshape(-1)
    for _ in range(100):  # Newton (pseudo-inverse: the loss is flat along per-prompt shifts) with backtracking
        g = _grad(theta, *args, shape=shape)
        if float(jnp.abs(g).max()) < 1e-13:
            break
        direction, step = jnp.linalg.pinv(_hess(theta, *args, shape=shape), rtol=1e-12) @ g, 1.0
        while (
            _population_loss(theta - step * direction, *args, shape=shape) > _population_loss(theta, *args, shape=shape)
            and step > 1e-8
        ):
            step /= 2
        theta = theta - step * direction
    assert float(jnp.abs(_grad(theta, *args, shape=shape)).max()) < 1e-10
    return jax.nn.log_softmax(theta.reshape(shape), axis=-1)


@pytest.mark.parametrize("num_stages", [2, 3])
def test_each_stage_optimum_is_the_closed_form(x64, num_stages):
    rng = np.random.default_rng(num_stages)
    shape = (2, 5)  # prompts × responses
    rewards = [jnp.asarray(rng.normal(size=shape)) for _ in range(num_stages)]
    betas = [0.5, 1.0, 2.0][:num_stages]
    lambdas = [[], [0.7], [0.4, 1.3]][:num_stages]
    policies = [jax.nn.log_softmax(jnp.asarray(rng.normal(size=shape)), axis=-1)]  # log π_0
    for n in range(num_stages):
        learned = _train_stage(policies[-1], policies, rewards[n], betas[n], betas[:n], lambdas[:n], lambdas[n])
        # implicit rewards of the learned earlier stages (the recursion over frozen π_0 … π_{n−1})
        earlier = implicit_rewards(policies, betas[:n], lambdas[:n])
        target = rewards[n] + sum((lam * r for lam, r in zip(lambdas[n], earlier)), jnp.zeros(shape))
        closed = jax.nn.log_softmax(policies[-1] + target / betas[n], axis=-1)  # π_{n−1}·exp(·/β_n)/Z
        np.testing.assert_allclose(np.exp(learned), np.exp(closed), atol=1e-6, rtol=0)
        policies.append(learned)
    # and the recursion recovers every stage's true reward up to a per-prompt constant
    for r_true, r_implicit in zip(rewards, implicit_rewards(policies, betas, lambdas)):
        diff = np.asarray(r_implicit - r_true)
        np.testing.assert_allclose(diff - diff[:, :1], 0.0, atol=1e-6)


def test_raising_lambda_keeps_more_of_the_first_dimension(x64):
    """Stage 2 optimised against a reward that conflicts with stage 1's: E_π2[r_1] grows with λ."""
    rng = np.random.default_rng(7)
    r1 = jnp.asarray(rng.normal(size=(2, 5)))
    r2 = -r1 + 0.3 * jnp.asarray(rng.normal(size=(2, 5)))
    pi0 = jax.nn.log_softmax(jnp.zeros((2, 5)), axis=-1)
    pi1 = _train_stage(pi0, [pi0], r1, 1.0, [], [], [])
    kept = []
    for lam in (0.0, 0.5, 1.0, 2.0):
        pi2 = _train_stage(pi1, [pi0, pi1], r2, 1.0, [1.0], [[]], [lam])
        kept.append(float((jnp.exp(pi2) * r1).sum()))
    assert all(a < b for a, b in zip(kept, kept[1:])), kept


# ---------------------------------------------------------------------------------------------
# Reductions and hand-computed offsets
# ---------------------------------------------------------------------------------------------


def test_lambda_zero_is_dpo_against_previous_policy_exactly():
    rng = np.random.default_rng(0)
    logs = [jnp.asarray(rng.normal(size=8) * 5 - 20, jnp.float32) for _ in range(6)]
    frozen_c, frozen_r = [logs[0], logs[2]], [logs[1], logs[3]]  # π_0, π_1 on y_w / y_l
    offset = stage_offset(frozen_c, frozen_r, [0.1], [[]], [0.0])
    cfg = LossConfig(terms={"sequential": 1.0}, beta=0.1)
    ones = jnp.ones(8)

    def total(name, policy, off):
        logps = PairLogps(policy[0], policy[1], frozen_c[1], frozen_r[1], ones, ones, ones, off)
        out = get_loss(name).apply(logps, cfg)
        return (out[0] if isinstance(out, tuple) else out).sum()

    policy = (logs[4], logs[5])
    for name_off in (offset, None):  # the computed offset at λ = 0, and no offset field at all
        loss, grad = jax.value_and_grad(lambda pol: total("sequential", pol, name_off))(policy)
        dpo_loss, dpo_grad = jax.value_and_grad(lambda pol: total("dpo", pol, None))(policy)
        assert loss == dpo_loss
        for g, d in zip(grad, dpo_grad):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(d))


def test_offset_by_hand():
    lp0, lp1, lp2 = np.array([-3.0, -5.0]), np.array([-2.0, -6.0]), np.array([-2.5, -4.0])  # log π_i(y) of y_w, y_l
    beta1, beta2, lam21, lam31, lam32 = 0.5, 2.0, 0.3, 1.5, 0.7
    r1 = beta1 * (lp1 - lp0)
    r2 = beta2 * (lp2 - lp1) - lam21 * r1
    expected = lam31 * (r1[0] - r1[1]) + lam32 * (r2[0] - r2[1])
    got = stage_offset(
        [lp0[:1], lp1[:1], lp2[:1]], [lp0[1:], lp1[1:], lp2[1:]], [beta1, beta2], [[], [lam21]], [lam31, lam32]
    )
    assert got[0] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="stage 3 needs 2 λ values"):
        stage_offset([lp0, lp1, lp2], [lp0, lp1, lp2], [beta1, beta2], [[], [lam21]], [lam31])


# ---------------------------------------------------------------------------------------------
# Scored dimensions → per-dimension pairs
# ---------------------------------------------------------------------------------------------

GROUPED = {
    "prompt": "p",
    "responses": ["a", "b", "c", "d"],
    "response_scores": [{"x": 1.0, "y": 0.0}, {"x": 3.0, "y": 0.0}, {"x": 1.0, "y": 1.0}, {"x": 1.5, "y": 2.0}],
}


def test_dimension_pairs_orient_by_score_drop_ties_and_small_gaps():
    pairs = dimension_pairs([GROUPED], "x")
    assert [(r["chosen"], r["rejected"]) for r in pairs] == [
        ("b", "a"),
        ("d", "a"),
        ("b", "c"),
        ("b", "d"),
        ("d", "c"),
    ]  # a–c tie dropped
    assert pairs[0]["chosen_scores"] == {"x": 3.0, "y": 0.0}
    gapped = dimension_pairs([GROUPED], "x", min_gap=1.0)
    assert [(r["chosen"], r["rejected"]) for r in gapped] == [("b", "a"), ("b", "c"), ("b", "d")]
    assert [(r["chosen"], r["rejected"]) for r in dimension_pairs([GROUPED], "y")] == [
        ("c", "a"),
        ("d", "a"),
        ("c", "b"),
        ("d", "b"),
        ("d", "c"),
    ]


def test_dimension_pairs_sample_per_prompt_reproducibly():
    one = dimension_pairs([GROUPED, GROUPED], "x", pairs_per_prompt=2, seed=3)
    assert len(one) == 4 and one == dimension_pairs([GROUPED, GROUPED], "x", pairs_per_prompt=2, seed=3)
    everything = {(r["chosen"], r["rejected"]) for r in dimension_pairs([GROUPED], "x")}
    assert {(r["chosen"], r["rejected"]) for r in one} <= everything


def test_bad_rows_name_row_and_field():
    with pytest.raises(ValueError, match=r"row 1: field 'response_scores\[2\]' has no score for dimension 'y'"):
        scores = GROUPED["response_scores"][:2] + [{"x": 1.0}] + GROUPED["response_scores"][3:]
        dimension_pairs([GROUPED, {**GROUPED, "response_scores": scores}], "y")
    with pytest.raises(ValueError, match=r"row 0: field 'response_scores\[0\]'\['x'\] must be a finite number"):
        dimension_pairs([{**GROUPED, "response_scores": [{"x": float("nan")}] + GROUPED["response_scores"][1:]}], "x")
    with pytest.raises(ValueError, match="row 0: missing field 'responses'"):
        dimension_pairs([{"prompt": "p"}], "x")


def test_helpsteer2_layout_groups_then_pairs():
    rows = [  # HelpSteer2: one response per row, five 0–4 attribute scores
        {
            "prompt": "q1",
            "response": "r1",
            "helpfulness": 3,
            "correctness": 3,
            "coherence": 4,
            "complexity": 1,
            "verbosity": 1,
        },
        {
            "prompt": "q1",
            "response": "r2",
            "helpfulness": 1,
            "correctness": 3,
            "coherence": 4,
            "complexity": 2,
            "verbosity": 3,
        },
        {
            "prompt": "q2",
            "response": "r3",
            "helpfulness": 2,
            "correctness": 2,
            "coherence": 3,
            "complexity": 1,
            "verbosity": 1,
        },
        {
            "prompt": "q2",
            "response": "r4",
            "helpfulness": 2,
            "correctness": 0,
            "coherence": 3,
            "complexity": 1,
            "verbosity": 2,
        },
    ]
    attributes = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    grouped = group_responses(rows, attributes)
    assert [g["responses"] for g in grouped] == [["r1", "r2"], ["r3", "r4"]]
    helpful = dimension_pairs(grouped, "helpfulness")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in helpful] == [("q1", "r1", "r2")]  # q2 tied
    correct = dimension_pairs(grouped, "correctness", min_gap=2)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in correct] == [("q2", "r3", "r4")]
    with pytest.raises(ValueError, match="row 1: missing field 'verbosity'"):
        group_responses([rows[0], {k: v for k, v in rows[1].items() if k != "verbosity"}], attributes)


# ---------------------------------------------------------------------------------------------
# Config errors name the key
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "stages=[{dimension: correctness}, {dimension: brevity, lambdas: [1.0, 2.0]}]",
            r"stages\[1\]\.lambdas: stage 2 needs 1 λ values",
        ),
        ("stages=[{dimension: correctness, lambdas: [0.5]}]", r"stages\[0\]\.lambdas: stage 1 needs 0 λ values"),
        (
            "stages=[{dimension: correctness}, {dimension: helpfulness, lambdas: [1.0]}]",
            r"stages\[1\]\.dimension: unknown dimension 'helpfulness'",
        ),
        ("stages=[{dimension: correctness, beta: -1}]", r"stages\[0\]\.beta must be >= 0"),
        (
            "stages=[{dimension: correctness, lambda: [1]}]",
            r"unknown config key 'stages\[0\]\.lambda'; did you mean 'lambdas'",
        ),
        ("loss.reference=resident", r"loss\.reference: a 'stages' recipe"),
        ("loss.terms={dpo: 1.0}", r"loss\.terms: a 'stages' recipe"),
        ("stages=[]", r"loss\.terms: 'sequential' needs a 'stages' list"),
        ("model.reference_path=/tmp/some_model", r"model\.reference_path: a 'stages' recipe"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/sequential.yaml", [override])


def test_shipped_recipe_loads():
    cfg = load_config("configs/sequential.yaml")
    assert [s.dimension for s in cfg.stages] == ["correctness", "brevity"]
    assert [len(s.lambdas) for s in cfg.stages] == [0, 1]
    assert dataclasses.asdict(cfg)["stages"][1]["lambdas"] == [1.0]
