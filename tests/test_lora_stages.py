"""The sequential recipe with one LoRA adapter per stage (``lora.stages: merged | stacked``): each stage starts
at π_{n−1} exactly, stacked stages train only their own adapter, both modes agree, resume after SIGKILL is
exact, and the merged and per-stage PEFT exports reproduce the final policy in PyTorch."""

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import transformers
from flax import nnx

from jaxspo import cli
from jaxspo.config import ConfigError, load_config
from jaxspo.models.hf_io import save_hf
from jaxspo.sharding import make_mesh
from jaxspo.train import loop
from jaxspo.lora.base import load_base, read_base_record
from jaxspo.lora.stages import LoRAStages, restore_stage_adapters
from jaxspo.objectives.stage_rows import stage_config
from jaxspo.train.state import (
    abstract_model,
    init_state,
    learning_rate_schedule,
    make_optimizer,
    param_shardings,
    state_shardings,
)
from jaxspo.objectives import build_objective
from jaxspo.train.step import make_train_step
from tests import hf_tiny
from tests.test_resume import REPO, copy_as_it_stood, final_params, metrics, wait_for_step
from tests.test_train_step import random_pairs
from tests.run_overrides import QUIET, TINY_MODEL

TINY = [
    *TINY_MODEL,
    "data.synthetic.num_sft=128",
    "data.synthetic.num_train=64",
    "data.synthetic.num_eval=16",
    "trainer.sft_steps=4",
    "trainer.sft_batch_size=8",
    "trainer.steps=4",
    "trainer.batch_size=8",
    "trainer.eval_every=0",
    "eval.num_pairs=16",
    "eval.num_prompts=8",
    "eval.max_new_tokens=4",
    "logging.log_every=1",
    *QUIET,
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=2",
    "stages=[{dimension: correctness, beta: 0.5}, {dimension: brevity, beta: 0.2, lambdas: [2.0]}]",
    "lora.rank=2",
    "loss.reference=adapter_off",
    "optimizer.learning_rate=1e-2",
    "optimizer.warmup_steps=0",
]
MODES = ("merged", "stacked")


def overrides(mode: str, run_dir, cache) -> list[str]:
    return TINY + [f"lora.stages={mode}", f"run_dir={run_dir}", f"loss.reference_cache_dir={cache}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both modes, uninterrupted, in this process: mode → run directory."""
    root = tmp_path_factory.mktemp("lora_stages")
    out = {}
    for mode in MODES:
        loop.train(load_config("configs/sequential.yaml", overrides(mode, root / mode, root / "cache")))
        out[mode] = root / mode
    return out


def stages_of(run_dir, finished: int) -> tuple:
    """The run's config and a :class:`LoRAStages` on its π_0 with its first ``finished`` stages' adapters."""
    cfg = load_config(run_dir / "config.yaml")
    mesh = make_mesh(cfg.mesh.shape())
    _, abstract = abstract_model(cfg.model)
    record = read_base_record(run_dir)
    stages = LoRAStages(
        cfg, mesh, load_base(record, cfg.model, abstract, param_shardings(abstract, mesh, cfg.mesh.rules)), record
    )
    for adapters in restore_stage_adapters(run_dir / "params", stages, len(cfg.stages))[:finished]:
        stages.finish(adapters)
    return cfg, stages


def token_batch(vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(4, 10)).astype(np.int32)
    return tokens, np.ones_like(tokens, bool), np.broadcast_to(np.arange(10, dtype=np.int32), tokens.shape).copy()


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens, positions, valid):
    return nnx.merge(graphdef, params)(tokens, positions, valid)


def logits(graphdef, params, batch) -> np.ndarray:
    """``[B, T, V]`` logits of (graph, params) on ``batch`` (one compile per graph)."""
    tokens, valid, positions = batch
    return np.asarray(_forward(graphdef, params, tokens, positions, valid))


def test_config_keys_and_the_recipe():
    for mode in MODES:
        cfg = load_config("configs/sequential_lora.yaml", [f"lora.stages={mode}"])
        assert cfg.lora.enabled and cfg.lora.stages == mode and cfg.loss.reference == "adapter_off"
    assert load_config("configs/sequential_lora.yaml", ["loss.reference=precomputed"]).loss.reference == "precomputed"
    with pytest.raises(ConfigError, match="lora.stages must be one of merged, stacked, got 'stack'"):
        load_config("configs/sequential_lora.yaml", ["lora.stages=stack"])
    with pytest.raises(
        ConfigError,
        match=r"loss.reference: a 'stages' recipe's reference is π_\(n-1\); set loss.reference to "
        r"precomputed or adapter_off, got 'resident'",
    ):
        load_config("configs/sequential_lora.yaml", ["loss.reference=resident"])
    with pytest.raises(ConfigError, match="set loss.reference to precomputed, got 'resident'"):
        load_config("configs/sequential.yaml", ["loss.reference=resident"])  # without LoRA: precomputed only


@pytest.mark.slow
def test_both_modes_run_two_stages_checkpoint_adapters_only_and_agree_after_stage_1(runs):
    saved = {}
    for mode, run_dir in runs.items():
        checkpoints = run_dir / "checkpoints"
        assert {p.name for p in checkpoints.iterdir()} >= {
            "reference",
            "sft",
            "stage-1",
            "stage-2",
            "policy-1",
            "policy-2",
        }
        for stage in ("stage-1", "stage-2"):
            tree = json.loads((checkpoints / stage / "4" / "state" / "_METADATA").read_text())["tree_metadata"]
            weights = [key for key in tree if key.endswith("'value')")]  # params and Adam's mu / nu
            assert len(weights) == 3 * 14 and all("_lora', 'a'" in k or "_lora', 'b'" in k for k in weights), (
                weights
            )  # no base, no frozen_*
        rows = metrics(run_dir)
        assert [r["step"] for r in rows if r["phase"] == "stage-2"] == [1, 2, 3, 4]
        assert [(r["step"], r["eval/stage"]) for r in rows if r["phase"] == "eval"] == [(0, 0.0), (4, 1.0), (8, 2.0)]
        first = {r["phase"]: r for r in rows if r["step"] == 1 and r["phase"].startswith("stage-")}
        for row in first.values():  # each stage's policy starts at its adapter_off reference π_{n−1}
            assert abs(row["rewards/margins"]) < 1e-6
        assert first["stage-1"]["loss"] == pytest.approx(np.log(2.0), abs=1e-6)  # no offset in stage 1
        assert first["stage-2"]["sequential/offset"] != 0.0
        saved[mode] = restore_stage_adapters(run_dir / "params", stages_of(run_dir, 0)[1], 2)
        assert json.loads((run_dir / "base.json").read_text())["kind"] == "orbax"  # π_0 = the SFT result
        moved = jax.tree.leaves(jax.tree.map(lambda x: float(jnp.abs(x).max()), saved[mode][1]))
        assert min(moved) > 0  # stage 2's adapter (b too) left zero
    for a, b in zip(jax.tree.leaves(saved["merged"][0]), jax.tree.leaves(saved["stacked"][0])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # stage 1 is one computation in both modes
    stage_1 = {mode: [r for r in metrics(runs[mode]) if r["phase"] == "stage-1"] for mode in MODES}
    assert stage_1["merged"] == stage_1["stacked"]
    # π_2 = π_0 + Δ_1 + Δ_2 in both: merged and stacked differ only by rounding, so their final policies agree closely
    batch = token_batch(load_config(runs["merged"] / "config.yaml").model.vocab_size)
    finals = [logits(*stages_of(runs[mode], 2)[1].view(2), batch) for mode in MODES]
    np.testing.assert_allclose(finals[0], finals[1], atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_each_stage_starts_at_the_previous_policy_exactly(runs, mode):
    cfg, full = stages_of(runs[mode], 2)
    batch = token_batch(cfg.model.vocab_size)
    for index in (0, 1):
        _, stages = stages_of(runs[mode], index)
        training = stages.training(stage_config(cfg, index), index)
        policy, _ = training.eval_states(training.initial)  # the stage's adapter at init: b = 0
        start = logits(training.model.eval_graphdef, policy, batch)
        np.testing.assert_array_equal(start, logits(*full.view(index), batch))  # = π_{n−1} as the stages hold it
        np.testing.assert_array_equal(
            start, logits(training.model.base_graphdef, training.base, batch)
        )  # = its adapter_off reference
        if index:  # and π_1 as stage 1 ended (its adapter not yet merged or stacked)
            _, first = stages_of(runs[mode], 0)
            ended = first.training(stage_config(cfg, 0), 0)
            previous = logits(ended.model.eval_graphdef, ended.eval_states(full.adapters[0])[0], batch)
            np.testing.assert_allclose(start, previous, atol=1e-5)
            assert np.abs(previous - logits(*full.view(0), batch)).max() > 1e-3  # stage 1 did move π_1 away from π_0


@pytest.mark.slow
def test_a_stacked_stage_trains_only_its_own_adapter(runs):
    cfg, stages = stages_of(runs["stacked"], 1)
    scfg = stage_config(cfg, 1)
    training = stages.training(scfg, 1)
    model = training.model
    assert jax.tree.structure(model.abstract_adapters) == jax.tree.structure(
        stages.model().abstract_adapters
    )  # the new adapter: a plain one
    schedule = learning_rate_schedule(scfg.optimizer, 4, 1e-2)
    tx = make_optimizer(scfg.optimizer, schedule, model.abstract_adapters)
    shardings = state_shardings(tx, model.abstract_adapters, model.adapter_sharding, stages.mesh)
    step = make_train_step(scfg, stages.mesh, model, tx, schedule, shardings, build_objective(scfg), 8)
    pairs = random_pairs(8) | {"offset": np.linspace(-1, 1, 8).astype(np.float32)}
    pairs["chosen_tokens"] %= cfg.model.vocab_size
    pairs["rejected_tokens"] %= cfg.model.vocab_size
    batch = step.place(pairs)
    state = init_state(tx, training.initial, 0, shardings)
    adapter_shapes = sorted(x.shape for x in jax.tree.leaves(training.initial))
    assert sorted(x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim) == sorted(
        adapter_shapes * 2
    )  # Adam: the new adapter only
    frozen_before = jax.device_get(training.frozen["base"])
    for _ in range(2):
        state, _ = step.fn(state, training.frozen, batch)
    for a, b in zip(jax.tree.leaves(jax.device_get(training.frozen["base"])), jax.tree.leaves(frozen_before)):
        np.testing.assert_array_equal(a, b)  # π_0 and stage 1's adapter: unchanged bit for bit
    frozen_a = training.frozen["base"]["layers"]["attn"]["q_lora"]["frozen_a"][...]
    np.testing.assert_array_equal(
        np.asarray(frozen_a[:, 0]), np.asarray(stages.adapters[0]["layers"]["attn"]["q_lora"]["a"][...])
    )
    assert all(
        not np.allclose(a, b)
        for a, b in zip(
            jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(jax.device_get(training.initial))
        )
    )


@pytest.mark.slow
def test_merged_and_per_stage_peft_exports_give_the_final_policy(runs, tmp_path):
    """Stacked run (the export merges what training kept apart): `jaxspo export` = π_0 + Δ_1 + Δ_2 in PyTorch,
    and `--peft` writes stage-1/ and stage-2/ whose adapters, both active on π_0, give the same logits."""
    run_dir = runs["stacked"]
    cfg, stages = stages_of(run_dir, 2)
    tokens, valid, positions = batch = token_batch(cfg.model.vocab_size)
    ours = logits(*stages.view(2), batch)  # π_2 as the stacked stages compute it: base + both adapters, unmerged
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "merged")]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager").eval()
    np.testing.assert_allclose(hf_tiny.hf_forward(merged, tokens, valid, positions)[0], ours, atol=1e-4, rtol=0)

    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "peft"), "--peft"]) == 0
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["stage-1", "stage-2"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    save_hf(stages.base, cfg.model, tokenizer, tmp_path / "pi0")  # π_0 (the SFT result) as the HF base
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "pi0", attn_implementation="eager")
    adapted = peft.PeftModel.from_pretrained(hf_base, tmp_path / "peft" / "stage-1", adapter_name="stage-1")
    adapted.load_adapter(tmp_path / "peft" / "stage-2", adapter_name="stage-2")
    adapted.base_model.set_adapter(["stage-1", "stage-2"])
    np.testing.assert_allclose(
        hf_tiny.hf_forward(adapted.eval().get_base_model(), tokens, valid, positions)[0], ours, atol=1e-4, rtol=0
    )
    adapted.base_model.set_adapter("stage-1")  # one adapter alone is not π_2
    assert np.abs(hf_tiny.hf_forward(adapted.get_base_model(), tokens, valid, positions)[0] - ours).max() > 1e-3


def command(mode: str, run_dir) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxspo",
        "train",
        "configs/sequential.yaml",
        *overrides(mode, run_dir, run_dir / "cache"),
    ]


@pytest.mark.slow
def test_merged_resume_mid_stage_2_is_bit_identical(runs, tmp_path):
    """The merged run as if stopped after stage 2's first checkpoint (its later files removed), resumed in this
    process: the uninterrupted run, bit for bit. The stacked run is killed for real below."""
    uninterrupted = runs["merged"]
    run_dir = tmp_path / "merged"
    shutil.copytree(uninterrupted, run_dir)
    checkpoints = run_dir / "checkpoints"
    *_, latest = sorted(int(p.name) for p in (checkpoints / "stage-2").iterdir() if p.name.isdigit())
    for path in (checkpoints / "stage-2" / str(latest), checkpoints / "policy-2", run_dir / "params"):
        shutil.rmtree(path)
    loop.train(load_config("configs/sequential.yaml", overrides("merged", run_dir, uninterrupted.parent / "cache")))
    assert metrics(run_dir) == metrics(uninterrupted)
    for a, b in zip(final_params(run_dir), final_params(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)


def as_stage_1_left_it(finished, run_dir) -> None:
    """A copy of the ``finished`` run's directory as it stood once stage 1 had ended (π_1 saved, its evaluation
    logged): without stage 2's checkpoints, π_2, the final params and the metric rows after that evaluation."""
    ended = next(i for i, row in enumerate(metrics(finished)) if row.get("eval/stage") == 1.0)
    copy_as_it_stood(finished, run_dir, ("checkpoints/stage-2", "checkpoints/policy-2", "params"), ended + 1)


@pytest.mark.slow
def test_sigkill_mid_stage_2_then_resume_is_bit_identical(runs, tmp_path):
    """The stacked run restarted from its directory as stage 1 left it (SFT and stage 1 are the uninterrupted
    run's), killed for real (SIGKILL) in stage 2 after its checkpoint 2 or 3, then resumed: in this process, as the
    uninterrupted run was made (the same code and settings; a second process would only start JAX again)."""
    mode = "stacked"
    run_dir = tmp_path / "run"
    as_stage_1_left_it(runs[mode], run_dir)
    env = os.environ | {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}  # as tests/conftest.py sets for the in-process run
    proc = subprocess.Popen(
        command(mode, run_dir), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_step(
        proc, run_dir, "stage-2", random.Random(mode).randint(2, 3), timeout=600
    )  # stage 2's checkpoint 2 exists
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / "checkpoints" / "stage-2").is_dir() and not (run_dir / "checkpoints" / "policy-2").exists()
    loop.train(load_config("configs/sequential.yaml", overrides(mode, run_dir, run_dir / "cache")))
    assert metrics(run_dir) == metrics(runs[mode])
    for a, b in zip(final_params(run_dir), final_params(runs[mode]), strict=True):
        np.testing.assert_array_equal(a, b)
