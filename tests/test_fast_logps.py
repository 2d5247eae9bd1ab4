"""Speed paths are exact: chunked log-probs, packed pair rows and an unrolled layer scan equal the plain padded
computation (fp32, ≤ 1e-5), values and gradients, through whole train steps (resident, precomputed, LoRA
adapter_off)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.config import ConfigError, load_config
from jaxspo.data.layout import PACKED_FIELDS, pack_pairs
from jaxspo.models import ModelConfig
from jaxspo.lora.adapted import AdaptedView
from jaxspo.train.state import (
    abstract_model,
    init_params,
    init_state,
    learning_rate_schedule,
    make_optimizer,
    param_shardings,
    state_shardings,
)
from jaxspo.objectives import build_objective
from jaxspo.objectives.batches import PackedPairBatch, PairBatch
from jaxspo.objectives.pairs import PACKED, PADDED
from jaxspo.train.step import make_train_step
from jaxspo.sharding import DEFAULT_RULES, make_mesh
from tests.test_train_step import TINY, random_pairs

ATOL = 1e-5
GEMMA2_LIKE = dataclasses.replace(
    TINY,
    sliding_window=3,
    layer_types=["sliding_attention", "full_attention"],
    attn_softcap=20.0,
    final_softcap=15.0,
    tie_embeddings=False,
)


def pairs(batch: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Pairs with prompts of different lengths (2–6 tokens) and responses of 1–8 tokens, width 16."""
    rng = np.random.default_rng(seed)
    out = {
        f"{s}_{k}": np.zeros((batch, 16), d)
        for s in ("chosen", "rejected")
        for k, d in (("tokens", np.int32), ("valid", bool), ("loss_mask", bool))
    }
    for i in range(batch):
        prompt = rng.integers(4, TINY.vocab_size, int(rng.integers(2, 7)))
        for side in ("chosen", "rejected"):
            row = np.concatenate([prompt, rng.integers(4, TINY.vocab_size, int(rng.integers(1, 9)))])
            out[f"{side}_tokens"][i, : len(row)], out[f"{side}_valid"][i, : len(row)] = row, True
            out[f"{side}_loss_mask"][i, len(prompt) : len(row)] = True
    out["soft_label"] = np.ones(batch, np.float32)
    return out


def model_params(model_cfg: ModelConfig, seed: int = 1):
    graphdef, abstract = abstract_model(model_cfg)
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    return graphdef, init_params(model_cfg, seed, param_shardings(abstract, mesh, DEFAULT_RULES))


def logps_and_grads(model_cfg: ModelConfig, batch: PairBatch | PackedPairBatch) -> tuple:
    graphdef, params = model_params(model_cfg)
    layout = PACKED if isinstance(batch, PackedPairBatch) else PADDED  # the batch type chooses the layout

    def f(p):
        chosen, rejected, chosen_len, rejected_len = layout.logps(graphdef, p, batch)
        return (chosen - 0.7 * rejected).sum(), (chosen, rejected, chosen_len, rejected_len)

    (_, out), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return out, grads


def assert_trees_close(a, b, atol=ATOL):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_pack_pairs_layout_by_hand():
    """Prompt [1 5], chosen [6 7], rejected [8]: one row, positions restart after the prompt."""
    arrays = {
        f"{s}_{k}": np.zeros((1, 6), d)
        for s in ("chosen", "rejected")
        for k, d in (("tokens", np.int32), ("valid", bool), ("loss_mask", bool))
    }
    arrays["chosen_tokens"][0, :4], arrays["chosen_valid"][0, :4], arrays["chosen_loss_mask"][0, 2:4] = (
        [1, 5, 6, 7],
        True,
        True,
    )
    arrays["rejected_tokens"][0, :3], arrays["rejected_valid"][0, :3], arrays["rejected_loss_mask"][0, 2:3] = (
        [1, 5, 8],
        True,
        True,
    )
    packed = pack_pairs(arrays)
    assert set(packed) == set(PACKED_FIELDS) and packed["packed_tokens"].shape == (1, 8)
    np.testing.assert_array_equal(packed["packed_tokens"][0, :5], [1, 5, 6, 7, 8])
    np.testing.assert_array_equal(packed["packed_segments"][0, :5], [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(packed["packed_positions"][0, :5], [0, 1, 2, 3, 2])
    np.testing.assert_array_equal(
        packed["packed_source"][0, :5], [0, 0, 1, 2, 1]
    )  # token 8 is predicted by the prompt's end
    np.testing.assert_array_equal(packed["packed_chosen_mask"][0, :5], [0, 0, 1, 1, 0])
    np.testing.assert_array_equal(packed["packed_rejected_mask"][0, :5], [0, 0, 0, 0, 1])
    assert packed["packed_valid"][0].sum() == 5


def test_pack_pairs_refuses_rows_without_a_shared_prompt():
    arrays = pairs(3)
    arrays["rejected_tokens"][1, 0] += 1
    with pytest.raises(ValueError, match="row 1: data.layout=packed needs chosen and rejected to share their prompt"):
        pack_pairs(arrays)


MODELS = {"llama": TINY, "gemma2_like": GEMMA2_LIKE}


@pytest.fixture(scope="module")
def padded_reference():
    """name of :data:`MODELS` → (log-probs, gradients) of the padded ``pairs()`` batch, computed once per module
    and shared by the tests below that compare a speed path against it."""
    computed = {}

    def reference(name: str) -> tuple:
        if name not in computed:
            computed[name] = logps_and_grads(MODELS[name], PairBatch.from_fields(pairs()))
        return computed[name]

    return reference


@pytest.mark.parametrize("name", ["llama", pytest.param("gemma2_like", marks=pytest.mark.slow)])
def test_packed_and_chunked_log_probs_and_gradients_equal_the_padded_ones(padded_reference, name):
    model_cfg, padded = MODELS[name], pairs()
    reference, reference_grads = padded_reference(name)
    packed_batch = PackedPairBatch.from_fields(pack_pairs(padded) | {"soft_label": padded["soft_label"]})
    for cfg, batch in [
        (
            dataclasses.replace(model_cfg, logprob_chunk=4),
            PairBatch.from_fields(padded),
        ),  # 15 targets: 4 chunks, the last padded
        (model_cfg, packed_batch),
        (dataclasses.replace(model_cfg, logprob_chunk=5), packed_batch),
    ]:
        out, grads = logps_and_grads(cfg, batch)
        assert_trees_close(out, reference)
        assert_trees_close(grads, reference_grads)
    assert float(jnp.abs(reference[0] - reference[1]).max()) > 1.0  # chosen ≠ rejected: the masks matter


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["dots", "dots_no_batch"])
def test_remat_policies_keep_gradients(padded_reference, policy):
    remat = logps_and_grads(dataclasses.replace(TINY, remat=True, remat_policy=policy), PairBatch.from_fields(pairs()))
    assert_trees_close(remat, padded_reference("llama"))


def test_an_unrolled_layer_scan_equals_the_rolled_one(padded_reference):
    rolled = padded_reference("gemma2_like")  # sliding/full layers: per-layer inputs of the scan
    for unroll in (2, 5):  # both unroll all 2 layers (5 is clamped to num_layers)
        unrolled = logps_and_grads(dataclasses.replace(GEMMA2_LIKE, scan_unroll=unroll), PairBatch.from_fields(pairs()))
        assert_trees_close(unrolled, rolled)


def full_step(overrides: list[str], host: dict, lora: bool = False, steps: int = 3):
    """Metrics and final trainable params of ``steps`` preference steps on a (2, 2, 2) mesh."""
    cfg = load_config(None, ["loss.beta=0.5", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", *overrides])
    # the tiny model, with the log-prob chunk the overrides chose
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(TINY, logprob_chunk=cfg.model.logprob_chunk))
    mesh = make_mesh(cfg.mesh.shape())
    graphdef, abstract = abstract_model(cfg.model)
    sharding = param_shardings(abstract, mesh, cfg.mesh.rules)
    policy, reference = init_params(cfg.model, 1, sharding), init_params(cfg.model, 2, sharding)
    schedule = learning_rate_schedule(cfg.optimizer, 10, 1e-2)
    if lora:
        run = AdaptedView(cfg, mesh, policy, policy, {"sha256": "-"})
        model, abstract, sharding, params, frozen = (
            run.model,
            run.model.abstract_adapters,
            run.model.adapter_sharding,
            run.initial,
            run.frozen,
        )
        # LoRA starts at B = 0 (policy = reference, every margin a tie whose sign is rounding): move it off the tie
        noise = jax.random.split(jax.random.key(3), len(jax.tree.leaves(params)))
        params = jax.tree.unflatten(
            jax.tree.structure(params),
            [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(jax.tree.leaves(params), noise)],
        )
    else:
        model, params, frozen = graphdef, policy, reference
    tx = make_optimizer(cfg.optimizer, schedule, abstract)
    shardings = state_shardings(tx, abstract, sharding, mesh)
    state = init_state(tx, params, 0, shardings)
    step = make_train_step(cfg, mesh, model, tx, schedule, shardings, build_objective(cfg), 8)
    arrays = host | (pack_pairs(host) if cfg.data.layout == "packed" else {})
    batch = step.place(arrays)
    frozen = frozen if step.reference_sharding is not None else None
    history = []
    for _ in range(steps):
        state, metrics = step.fn(state, frozen, batch)
        history.append(jax.device_get(metrics))
    return history, jax.device_get(state.params)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["resident", "precomputed", "adapter_off"])
def test_packed_train_steps_equal_padded_ones(setting):
    host = random_pairs(8)
    host["reference_chosen_logps"] = np.linspace(-30, -20, 8).astype(np.float32)
    host["reference_rejected_logps"] = np.linspace(-25, -35, 8).astype(np.float32)
    overrides = {
        "resident": [],
        "precomputed": ["loss.reference=precomputed"],
        "adapter_off": ["lora.rank=4", "lora.alpha=8.0", "loss.reference=adapter_off"],
    }[setting]
    runs = [
        full_step(overrides + layout, host, lora=setting == "adapter_off")
        for layout in ([], ["data.layout=packed", "model.logprob_chunk=4"])
    ]
    (padded_metrics, padded_params), (packed_metrics, packed_params) = runs
    for a, b in zip(padded_metrics, packed_metrics):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(b[name], a[name], atol=ATOL, rtol=1e-5, err_msg=name)
    assert_trees_close(packed_params, padded_params)
    assert padded_metrics[2]["loss"] != padded_metrics[0]["loss"]  # the steps did update (step 0's learning rate is 0)


def test_config_keys_are_checked_and_name_themselves():
    cfg = load_config(
        None,
        [
            "data.layout=packed",
            "data.max_length=32",
            "data.buckets=[40,64]",
            "model.logprob_chunk=16",
            "model.remat=true",
            "model.remat_policy=dots",
        ],
    )
    assert (cfg.data.layout, cfg.data.buckets, cfg.model.logprob_chunk, cfg.model.remat_policy) == (
        "packed",
        [40, 64],
        16,
        "dots",
    )
    for overrides, message in [
        (["data.layout=rows"], "data.layout must be one of padded, packed"),
        (
            ["data.buckets=[40]", "data.max_length=32"],
            r"data.buckets must be ascending distinct lengths in \[2, data.max_length=32\]",
        ),
        (["model.logprob_chunk=-1"], "model.logprob_chunk must be >= 0"),
        (["model.remat_policy=some"], "model.remat_policy must be one of"),
        (["model.scan_unroll=0"], "model.scan_unroll must be >= 1"),
        (
            ["data.layout=packed", "loss.selfsup.weight=0.5"],
            "data.layout: 'packed' is not supported here \\(loss.selfsup.weight",
        ),
        (
            ["data.layout=packed", "loss.terms={soft_spo_ranked: 1.0}"],
            "data.layout: 'packed' is not supported here \\(loss.terms: list losses",
        ),
        (["data.layout=packed", "loss.kl.beta=0.1"], "data.layout: 'packed' is not supported here \\(loss.kl.beta"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)


def test_compilation_cache_dir_is_set_and_the_environment_wins(tmp_path, monkeypatch):
    from jaxspo.compilation_cache import enable_compilation_cache

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        assert enable_compilation_cache("") is None
        assert enable_compilation_cache(
            str(tmp_path / "a")
        ) == tmp_path / "a" and jax.config.jax_compilation_cache_dir == str(tmp_path / "a")
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "b"))
        assert enable_compilation_cache(str(tmp_path / "a")) == tmp_path / "b" and (tmp_path / "b").is_dir()
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_bf16_projections_run_bf16_dots_forward_and_backward_with_float32_results():
    """The custom backward of a bf16 projection takes bf16 operands (XLA:CPU's native path) and its
    gradients stay within bf16 rounding of the float32 ones."""
    from jaxspo.models.layers import project

    x = jax.random.normal(jax.random.key(0), (2, 16, 32))
    w = 0.1 * jax.random.normal(jax.random.key(1), (32, 48))

    def loss(x, w, dtype):
        return (project("btd,df->btf", x.astype(dtype), w, dtype).astype(jnp.float32) ** 2).sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    for exact, low in zip(grad(x, w, "float32"), grad(x, w, "bfloat16")):
        assert low.dtype == jnp.float32 and float(jnp.abs(low - exact).max() / jnp.abs(exact).max()) < 2e-2
    hlo = grad.lower(x, w, "bfloat16").compile().as_text().splitlines()
    dots = [line for line in hlo if " dot(" in line]
    bf16_dots = [
        line
        for line in hlo
        if line.startswith("%fused_computation") and line.count(": bf16[") == 2 and "-> f32[" in line
    ]
    assert len(dots) == 3 and len(bf16_dots) == 3, dots  # forward, d/dx, d/dw: each bf16 × bf16 → float32
