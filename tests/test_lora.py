"""LoRA: adapted = base at step 0, adapter_off reference = the base without a second copy, adapter-only
training and checkpoints tied to the base's hash, merged and PEFT exports that PyTorch and peft reproduce."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import transformers
from flax import nnx

from jaxspo import cli
from jaxspo.checkpoint import save_params
from jaxspo.compile import abstract_step, compile_step, fit_report
from jaxspo.config import ConfigError, config_from_dict, dump_yaml, load_config, to_dict
from jaxspo.errors import BaseChangedError
from jaxspo.export import export_run
from jaxspo.models.hf_config import model_config_from_hf
from jaxspo.models.hf_io import load_params, load_tokenizer
from jaxspo.sharding import make_mesh
from jaxspo.lora.adapted import AdaptedView
from jaxspo.lora.base import base_record, write_base_record
from jaxspo.lora.model import AdaptedModel
from jaxspo.train.state import abstract_model, init_params, init_state, param_shardings, state_shardings
from jaxspo.train.state import learning_rate_schedule, make_optimizer
from jaxspo.objectives import PairBatch, build_objective, padded_pair_logps
from jaxspo.train.step import make_train_step
from tests import hf_tiny
from tests.test_train_step import TINY, random_pairs

LORA = ["lora.rank=4", "lora.alpha=8.0", "loss.reference=adapter_off", "loss.beta=0.5"]


def lora_config(*overrides: str):
    cfg = load_config(None, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", *LORA, *overrides])
    return dataclasses.replace(cfg, model=TINY)


@dataclasses.dataclass
class Setup:
    graphdef: nnx.GraphDef
    base: nnx.State
    lora: AdaptedView
    step: object
    batch: dict
    fresh_state: object  # () -> a new TrainState (the step donates its state)


@pytest.fixture(scope="module")
def tiny():
    """One compiled LoRA step on a (2, 2, 2) mesh, shared by the tests below."""
    return setup(lora_config())


def setup(cfg, batch_size: int = 8) -> Setup:
    """Base params, a LoRA phase's pieces, its step, a batch on the mesh and a train-state factory."""
    mesh = make_mesh(cfg.mesh.shape())
    graphdef, abstract = abstract_model(cfg.model)
    base = init_params(cfg.model, 1, param_shardings(abstract, mesh, cfg.mesh.rules))
    lora = AdaptedView(cfg, mesh, base, base, {"sha256": "-"})
    schedule = learning_rate_schedule(cfg.optimizer, 10, 1e-2)
    tx = make_optimizer(cfg.optimizer, schedule, lora.model.abstract_adapters)
    shardings = state_shardings(tx, lora.model.abstract_adapters, lora.model.adapter_sharding, mesh)
    step = make_train_step(cfg, mesh, lora.model, tx, schedule, shardings, build_objective(cfg), batch_size)
    batch = step.place(random_pairs(batch_size))
    return Setup(graphdef, base, lora, step, batch, lambda: init_state(tx, lora.initial, 0, shardings))


def randomized(adapters, seed=0, scale=0.3):
    """Adapters with random b (as after training), so the update is not zero."""
    leaves, treedef = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


def test_adapters_start_at_the_base_exactly_and_dpo_starts_at_log2(tiny):
    graphdef, base, lora, step, batch, state = (
        tiny.graphdef,
        tiny.base,
        tiny.lora,
        tiny.step,
        tiny.batch,
        tiny.fresh_state(),
    )
    policy, _ = lora.eval_states(lora.initial)
    adapted = jax.jit(lambda p: padded_pair_logps(lora.model.eval_graphdef, p, batch))(policy)
    plain = jax.jit(lambda p: padded_pair_logps(graphdef, p, batch))(base)
    for a, b in zip(adapted, plain):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # exactly: b = 0 adds exact zeros
    a_leaves = [
        x for path, x in jax.tree_util.tree_leaves_with_path(lora.initial) if "'a'" in jax.tree_util.keystr(path)
    ]
    assert a_leaves and all(float(jnp.abs(x).max()) > 0 for x in a_leaves)  # a is random, only b is zero
    _, metrics = step.fn(state, lora.frozen, batch)
    assert float(metrics["loss"]) == pytest.approx(np.log(2.0), abs=1e-6)
    assert float(metrics["grad_norm"]) > 0  # b gets a gradient through a ≠ 0


def test_only_adapters_are_trained_and_the_base_is_a_frozen_input(tiny):
    base, lora, step, batch, state = tiny.base, tiny.lora, tiny.step, tiny.batch, tiny.fresh_state()
    adapter_shapes = sorted(x.shape for x in jax.tree.leaves(lora.initial))
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert sorted(x.shape for x in moments) == sorted(adapter_shapes * 2)  # Adam's mu and nu of the adapters only
    n_base = sum(x.size for x in jax.tree.leaves(base))
    assert sum(x.size for x in jax.tree.leaves(state.params)) < n_base / 4
    base_before = jax.device_get(base)
    for _ in range(3):
        state, _ = step.fn(state, lora.frozen, batch)
    for a, b in zip(jax.tree.leaves(jax.device_get(base)), jax.tree.leaves(base_before)):  # not donated, not changed
        np.testing.assert_array_equal(a, b)
    assert step.donate_argnums == (0,)
    moved = [
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(jax.device_get(lora.initial)))
    ]
    assert all(moved)


def test_adapters_are_sharded_like_the_matrices_they_adapt(tiny):
    base, lora = tiny.base, tiny.lora
    specs = jax.tree.map(lambda s: tuple(s.spec), lora.model.adapter_sharding)
    layers = specs["layers"]
    # q_proj [L, D, H, Hd] is (None, fsdp, tensor, None): a [L, D, r] keeps D's, b [L, r, H, Hd] keeps H's
    assert tuple(base["layers"]["attn"]["q_proj"].sharding.spec)[:3] == (None, "fsdp", "tensor")
    assert layers["attn"]["q_lora"]["a"][:3] == (None, "fsdp", None)
    assert layers["attn"]["q_lora"]["b"][:3] == (None, None, "tensor")
    assert layers["attn"]["o_lora"]["a"][:2] == (None, "tensor") and layers["attn"]["o_lora"]["b"][:3] == (
        None,
        None,
        "fsdp",
    )
    assert layers["mlp"]["down_lora"]["a"][:3] == (None, "tensor", None)


def test_adapter_off_reference_equals_a_resident_copy_of_the_base(tiny):
    graphdef, base, lora, step, batch, state = (
        tiny.graphdef,
        tiny.base,
        tiny.lora,
        tiny.step,
        tiny.batch,
        tiny.fresh_state(),
    )
    state, _ = step.fn(state, lora.frozen, batch)  # adapters ≠ 0 now
    state, _ = step.fn(state, lora.frozen, batch)
    adapted = jax.jit(lambda p, f: padded_pair_logps(*lora.model.policy(p, f, None), batch))(state.params, lora.frozen)
    reference = jax.jit(lambda f: padded_pair_logps(*lora.model.reference(f), batch))(lora.frozen)
    resident_copy = jax.tree.map(jnp.copy, base)
    resident = jax.jit(lambda p: padded_pair_logps(graphdef, p, batch))(resident_copy)
    np.testing.assert_allclose(np.asarray(reference[0]), np.asarray(resident[0]), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(reference[1]), np.asarray(resident[1]), atol=1e-6, rtol=1e-6)
    assert float(jnp.abs(adapted[0] - reference[0]).max()) > 1e-4  # the policy did move away from it


@pytest.mark.slow
def test_dropout_uses_the_step_key_and_is_off_in_evaluation():
    cfg = lora_config("lora.dropout=0.5", "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1")
    mesh = make_mesh(cfg.mesh.shape(), jax.devices()[:1])
    _, abstract = abstract_model(cfg.model)
    base = init_params(cfg.model, 1, param_shardings(abstract, mesh, cfg.mesh.rules))
    lora = AdaptedView(cfg, mesh, base, base, {"sha256": "-"})
    no_dropout = AdaptedModel.build(
        cfg.model, dataclasses.replace(cfg.lora, dropout=0.0), cfg.loss.reference, mesh, cfg.mesh.rules
    )
    batch = PairBatch.from_fields(random_pairs(8))
    adapters = randomized(lora.initial)
    policy_fn = lambda model: jax.jit(lambda p, k: padded_pair_logps(*model.policy(p, lora.frozen, k), batch)[0])  # noqa: E731
    key = lambda seed: jax.random.key_data(jax.random.key(seed))  # noqa: E731
    fn = policy_fn(lora.model)
    one, two, again = fn(adapters, key(1)), fn(adapters, key(2)), fn(adapters, key(1))
    assert float(jnp.abs(one - two).max()) > 1e-4  # a new key, a new mask
    np.testing.assert_array_equal(np.asarray(one), np.asarray(again))
    policy, _ = lora.eval_states(adapters)
    evaluated = jax.jit(lambda p: padded_pair_logps(lora.model.eval_graphdef, p, batch)[0])(policy)
    np.testing.assert_allclose(
        np.asarray(evaluated), np.asarray(policy_fn(no_dropout)(adapters, None)), atol=1e-5
    )  # no dropout in eval


@pytest.mark.slow
def test_compiled_adapter_off_step_holds_one_copy_of_the_base():
    """Compiled memory analysis (CPU mesh of 4): adapter_off's arguments are the base + adapters + Adam +
    batch; a resident reference adds exactly one more base; full fine-tuning adds the base's Adam moments."""
    tiny = [
        "model.vocab_size=256",
        "model.hidden_size=128",
        "model.intermediate_size=256",
        "model.num_layers=2",
        "model.num_heads=4",
        "model.num_kv_heads=2",
        "data.max_length=32",
        "trainer.batch_size=8",
        "mesh.data=1",
        "mesh.fsdp=4",
    ]
    devices = jax.devices()[:4]
    report = {}
    for name, extra in {
        "adapter_off": LORA,
        "lora_resident": LORA[:2] + ["loss.reference=resident"],
        "full_resident": [],
    }.items():
        report[name] = compile_step(load_config(None, tiny + extra), devices)
    base_bytes = report["full_resident"]["parameters"] * 4 / 4  # float32, split over 4 devices
    lora_off, lora_res, full = (
        report[k]["argument_bytes_per_device"] for k in ("adapter_off", "lora_resident", "full_resident")
    )
    assert lora_res - lora_off == pytest.approx(base_bytes, rel=0.02)  # the resident copy is the only difference
    cfg = load_config(None, tiny + LORA)
    model = AdaptedModel.build(
        cfg.model, cfg.lora, cfg.loss.reference, make_mesh(cfg.mesh.shape(), devices), cfg.mesh.rules
    )
    adapter_bytes = sum(
        4 * np.prod(s.shard_shape(a.shape))
        for a, s in zip(jax.tree.leaves(model.abstract_adapters), jax.tree.leaves(model.adapter_sharding))
    )
    assert lora_off == pytest.approx(
        base_bytes + 3 * adapter_bytes, abs=8 * 1024
    )  # base + adapters + 2 moments (+ batch)
    assert full - lora_off > 1.9 * base_bytes  # full FT: reference + Adam moments of the whole model


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="loss.reference 'adapter_off' needs LoRA adapters"):
        load_config(None, ["loss.reference=adapter_off"])
    with pytest.raises(ConfigError, match="lora.targets: 'qq_proj' matches no projection of a llama model"):
        load_config(None, ["lora.rank=4", "lora.targets=[qq_proj]"])
    with pytest.raises(ConfigError, match="lora.dropout must be in"):
        load_config(None, ["lora.rank=4", "lora.dropout=1.0"])
    with pytest.raises(ConfigError, match="lora.targets: 'c_attn' matches no projection of a llama model"):
        load_config(None, ["lora.rank=4", "lora.targets=[c_attn]"])


def adapted_run_dir(arch, tmp_path):
    """A run directory ``tmp_path/run`` holding trained-like adapters on a tiny HF ``arch`` base (saved in
    ``tmp_path/base``): (base folder, run directory, the adapted view, its adapters, base graph and params)."""
    source = hf_tiny.save(hf_tiny.build_hf(arch), tmp_path / "base")
    targets = (
        "[c_attn, attn.c_proj, c_fc, mlp.c_proj]"
        if arch == "gpt2"
        else "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"
    )
    shape = "lora.rank=4 lora.alpha=12.0 loss.reference=adapter_off trainer.sft_steps=0 mesh.data=1 mesh.fsdp=4"
    overrides = [f"model.path={source}", f"lora.targets={targets}", *shape.split(), "mesh.tensor=2"]
    cfg = config_from_dict(to_dict(load_config(None, overrides)))
    cfg = dataclasses.replace(cfg, model=model_config_from_hf(source, cfg.model))
    mesh = make_mesh(cfg.mesh.shape())
    graphdef, abstract = abstract_model(cfg.model)
    base = load_params(source, cfg.model, abstract, param_shardings(abstract, mesh, cfg.mesh.rules))
    run = tmp_path / "run"
    run.mkdir()
    lora = AdaptedView(cfg, mesh, base, base, base_record(cfg, run, base))
    adapters = randomized(lora.initial, scale=0.2)
    save_params(adapters, run / "params")
    write_base_record(lora.record, run)
    dump_yaml(cfg, run / "config.yaml")
    load_tokenizer(source).save_pretrained(str(run / "tokenizer"))
    return source, run, lora, adapters, graphdef, base


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama3", "gpt2"])
def test_merged_and_peft_exports_reproduce_the_adapted_model(arch, tmp_path):
    """A run directory with trained-like adapters: the merged HF export (transformers) and the PEFT export
    (peft on the HF base) give jaxspo's adapted logits; a changed base is refused."""
    source, run, lora, adapters, graphdef, base = adapted_run_dir(arch, tmp_path)
    tokens, valid, positions = hf_tiny.batch()
    policy, _ = lora.eval_states(adapters)
    ours = np.asarray(jax.jit(lambda p: nnx.merge(lora.model.eval_graphdef, p)(tokens, positions, valid))(policy))
    plain = np.asarray(jax.jit(lambda p: nnx.merge(graphdef, p)(tokens, positions, valid))(base))
    assert np.abs(ours - plain)[valid].max() > 1e-2  # the adapters change the logits

    assert cli.main(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager").eval()
    np.testing.assert_allclose(
        hf_tiny.hf_forward(merged, tokens, valid, positions)[0][valid], ours[valid], atol=1e-4, rtol=0
    )

    assert cli.main(["export", str(run), "--out", str(tmp_path / "peft"), "--peft"]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 12.0 and config["peft_type"] == "LORA"
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager")
    adapted = peft.PeftModel.from_pretrained(hf_base, tmp_path / "peft").eval()  # wrong key names would leave B = 0
    np.testing.assert_allclose(
        hf_tiny.hf_forward(adapted.get_base_model(), tokens, valid, positions)[0][valid], ours[valid], atol=1e-4, rtol=0
    )

    record = json.loads((run / "base.json").read_text())
    (run / "base.json").write_text(json.dumps(record | {"sha256": "0" * 64}))
    with pytest.raises(BaseChangedError, match="the adapters only fit the base they were trained on"):
        export_run(run, tmp_path / "again")


@pytest.mark.slow
def test_tiny_lora_step_compiles_for_a_tpu_slice_with_less_memory(monkeypatch):
    """`jaxspo compile`'s path with libtpu's compiler: LoRA's arguments are smaller than full fine-tuning's."""
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5p-8")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    tiny = [
        "model.vocab_size=64",
        "model.hidden_size=64",
        "model.intermediate_size=128",
        "model.num_layers=2",
        "model.num_heads=4",
        "model.num_kv_heads=2",
        "data.max_length=32",
        "trainer.batch_size=8",
        "mesh.data=1",
        "mesh.fsdp=-1",
    ]
    full = fit_report(load_config("configs/demo.yaml", tiny), "v5p-8")
    lora = fit_report(load_config("configs/demo.yaml", tiny + LORA), "v5p-8")
    assert lora["fits"] and lora["devices"] == 4
    # layers × rank × Σ (in + out): q (64 + 4·16), k and v (64 + 2·16), o (4·16 + 64), gate, up, down (64 + 128)
    assert lora["trained_parameters"] == 2 * 4 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 128))
    assert lora["argument_bytes_per_device"] < 0.6 * full["argument_bytes_per_device"]


@pytest.mark.parametrize("lora", [False, True])
def test_jaxspo_compile_takes_the_trained_tree_and_frozen_input_from_the_chosen_view(lora):
    """`jaxspo compile`'s abstract step: full fine-tuning trains the whole model with the resident reference as its
    frozen input; LoRA trains the adapters, and the base (adapter_off: no second copy) is the frozen input."""
    cfg = load_config("configs/demo.yaml", ["mesh.data=1", "mesh.fsdp=4", *(LORA if lora else [])])
    cfg = dataclasses.replace(cfg, model=TINY)
    _, step, state, frozen, view = abstract_step(cfg, make_mesh(cfg.mesh.shape(), jax.devices()[:4]))
    _, whole = abstract_model(cfg.model)
    assert view.frozen_base == lora
    assert jax.tree.structure(state.params) == jax.tree.structure(view.abstract)
    base = frozen["base"] if lora else frozen
    assert jax.tree.map(lambda x: x.shape, base) == jax.tree.map(lambda x: x.shape, whole)
    assert jax.tree.leaves(jax.tree.map(lambda x: x.sharding, frozen)) == jax.tree.leaves(step.reference_sharding)
    if lora:
        assert frozen["reference"] is None  # adapter_off: the reference is the base with adapters off
        assert sum(x.size for x in jax.tree.leaves(state.params)) < sum(x.size for x in jax.tree.leaves(whole)) / 3
