"""Context parallelism (``mesh.context``): sequences split along time give the single-device log-probs, DPO loss
and gradients (fp32, ≤ 1e-5), for padded and packed rows, a sliding-window + soft-capped model, LoRA and the
resident reference; the config refuses widths that do not split; checkpoints and TPU compiles carry over."""

import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxspo.checkpoint import restore_params, save_params
from jaxspo.config import ConfigError, load_config
from jaxspo.data.bucketing import bucket_widths
from jaxspo.data.layout import pack_pairs
from jaxspo.sharding import DEFAULT_RULES, make_mesh
from jaxspo.train.state import abstract_model, init_params, param_shardings
from jaxspo.objectives.batches import KLSamples, PackedPairBatch, PairBatch
from tests.context_checks import dpo_outputs, one_device_outputs
from tests.test_compile import TINY as COMPILE_TINY, tpu_env  # noqa: F401  (a fixture)
from tests.test_fast_logps import GEMMA2_LIKE, assert_trees_close, full_step, pairs
from tests.run_overrides import TINY_MODEL_SMALL_DATA

CONTEXT_MESHES = [{"data": 2, "fsdp": 1, "tensor": 1, "context": 4}, {"data": 1, "fsdp": 2, "tensor": 2, "context": 2}]


@pytest.fixture(scope="module")
def batches() -> dict[str, dict[str, np.ndarray]]:
    padded = pairs(8)
    return {"padded": padded, "packed": pack_pairs(padded) | {"soft_label": padded["soft_label"]}}


SAME_PATHS_ON_THE_OTHER_MESH = pytest.mark.slow  # the two fast cases cover both meshes and both layouts; ~30 s CPU each


@pytest.mark.parametrize(
    "mesh_shape, layout, qk_norm",
    [
        pytest.param(CONTEXT_MESHES[0], "padded", False, id="2-1-1-4-padded"),
        pytest.param(CONTEXT_MESHES[1], "packed", True, id="1-2-2-2-packed-qk-norm"),
        pytest.param(CONTEXT_MESHES[0], "packed", False, id="2-1-1-4-packed", marks=SAME_PATHS_ON_THE_OTHER_MESH),
        pytest.param(CONTEXT_MESHES[1], "padded", False, id="1-2-2-2-padded", marks=SAME_PATHS_ON_THE_OTHER_MESH),
    ],
)
def test_context_split_log_probs_loss_and_gradients_equal_one_device(batches, mesh_shape, layout, qk_norm):
    """The gemma2-like model's step (chunked attention; with ``qk_norm`` Qwen3's q/k norm too) against dense
    attention on one device over the padded rows (:func:`one_device_outputs`: the packed rows of the same pairs give
    the same log-probs, loss and gradients). The q/k norm acts on each token before attention, so the packed
    (1, 2, 2, 2) case with it runs every path the same case without it runs."""
    model = dataclasses.replace(GEMMA2_LIKE, qk_norm=qk_norm)
    got = dpo_outputs(batches[layout], mesh_shape, jax.devices(), model)
    want = one_device_outputs(dataclasses.replace(model, attention="xla"))
    assert_trees_close(got, want)
    assert (
        abs(want[0]["logps/chosen"] - want[0]["logps/rejected"]) > 0.1 and abs(float(want[1])) > 0
    )  # real log-probs, a real loss
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(want[2])]
    assert qk_norm == any("q_norm" in p for p in paths) == any("k_norm" in p for p in paths)  # gradients compared too


def test_batch_rows_split_along_time_over_context():
    mesh = make_mesh(CONTEXT_MESHES[0])
    leading = {"batch": 8, "rows": 8, "samples": 8}
    specs = {}
    for batch_type in (PairBatch, PackedPairBatch):
        shardings = batch_type.shardings(batch_type.required(), mesh, DEFAULT_RULES, leading)
        specs |= {k: s.spec for k, s in shardings.fields().items()}
    specs |= {k: s.spec for k, s in KLSamples.shardings(("kl_tokens",), mesh, DEFAULT_RULES, leading).fields().items()}
    assert specs["chosen_tokens"] == specs["packed_segments"] == PartitionSpec("data", "context")
    assert specs["soft_label"] == PartitionSpec("data") and specs["kl_tokens"] == PartitionSpec("data", None)


@pytest.mark.slow  # two 3-step LoRA runs: ~1 min on 2 shared CPU cores
def test_lora_steps_with_context_equal_the_run_without():
    """LoRA adapters (the resident reference is the base with the adapters off) over packed rows."""
    host = pairs(8)
    packed = ["data.layout=packed", "loss.reference=adapter_off", "lora.rank=4"]
    want = full_step(packed + ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"], host, lora=True)
    got = full_step(packed + ["mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2", "mesh.context=2"], host, lora=True)
    for g, w in zip(got[0], want[0]):
        for name in ("loss", "grad_norm", "logps/chosen", "logps/rejected"):
            np.testing.assert_allclose(g[name], w[name], rtol=0, atol=1e-5, err_msg=name)
    assert_trees_close(got[1], want[1])


# --- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mesh.context=3", "data.max_length=32"], r"data.max_length \(32\) must divide by mesh.context \(3\)"),
        (
            ["mesh.context=4", "data.max_length=32", "data.buckets=[8,10]"],
            r"data.buckets \[10\] must divide by mesh.context \(4\)",
        ),
        (
            ["mesh.context=2", "mesh.rules.length=null"],
            "no mesh.rules entry maps onto 'context'; set mesh.rules.length=context",
        ),
        (["mesh.context=0"], r"mesh.context must be ≥ 1"),
    ],
)
def test_widths_that_do_not_split_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_widths_from_the_data_round_up_to_the_context():
    cfg = load_config(None, ["mesh.context=16", "data.max_length=64"])
    multiple = cfg.mesh.width_multiple()
    assert multiple == 16
    padded = pairs(8)
    assert pack_pairs(padded, multiple)["packed_tokens"].shape[1] % 16 == 0
    wide = {k: np.pad(v, ((0, 0), (0, 48))) if v.ndim == 2 else v for k, v in padded.items()}  # width 64
    widths, _ = bucket_widths({k: v for k, v in wide.items() if v.ndim == 2}, [], 3, 2, multiple)
    assert widths and all(w % 16 == 0 for w in widths)


def test_a_mesh_without_context_is_size_one():
    assert load_config(None, []).mesh.shape()["context"] == 1
    assert make_mesh({"data": 2, "fsdp": 2, "tensor": 2}).shape["context"] == 1


# --- checkpoints and compiles ------------------------------------------------------------------------------


def test_params_saved_without_context_restore_onto_a_context_mesh(tmp_path):
    model = dataclasses.replace(
        GEMMA2_LIKE, positions="learned", max_position_embeddings=16
    )  # a ("length", "embed") param
    _, abstract = abstract_model(model)
    saved = init_params(
        model, 1, param_shardings(abstract, make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), DEFAULT_RULES)
    )
    save_params(saved, tmp_path / "params")
    target_sharding = param_shardings(abstract, make_mesh(CONTEXT_MESHES[1]), DEFAULT_RULES)
    target = init_params(model, 7, target_sharding)
    restored = restore_params(tmp_path / "params", target)
    assert_trees_close(jax.device_get(restored), jax.device_get(saved), atol=0)
    assert jax.tree.leaves(restored)[0].sharding.mesh.shape["context"] == 2


@pytest.mark.slow  # a TPU compile
def test_step_with_context_compiles_for_a_tpu_slice_here(tpu_env):  # noqa: F811
    from jaxspo.compile import fit_report

    cfg = load_config("configs/demo.yaml", COMPILE_TINY + ["mesh.data=1", "mesh.fsdp=2", "mesh.context=2"])
    report = fit_report(cfg, "v5p-8")
    assert report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1, "context": 2}
    assert report["fits"] and report["xla_flops_per_step_per_device"] > 0


# --- a whole run -------------------------------------------------------------------------------------------

RUN = [
    *TINY_MODEL_SMALL_DATA,
    "trainer.sft_steps=2",
    "trainer.sft_batch_size=8",
    "trainer.steps=3",
    "trainer.batch_size=8",
    "trainer.eval_every=3",
    "eval.num_pairs=8",
    "eval.num_prompts=8",
    "eval.max_new_tokens=4",
    "logging.log_every=1",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "logging.plot=false",
]


@pytest.mark.slow  # two whole runs (SFT, DPO, eval with sampling): ~2 min on 2 shared CPU cores
def test_train_with_context_equals_train_without(tmp_path):
    """configs/demo_fast.yaml (packed rows) on two of its bucket widths (a step compiled per width and phase):
    mesh (2, 2, 1, 2) against (4, 2, 1, 1)."""
    from tests.test_distributed import assert_same_run, metrics
    from jaxspo.train.loop import train

    runs = {}
    for context in (1, 2):
        run_dir = tmp_path / f"context{context}"
        mesh = (
            ["mesh.data=2", "mesh.fsdp=2", f"mesh.context={context}"] if context > 1 else ["mesh.data=4", "mesh.fsdp=2"]
        )
        runs[context] = train(
            load_config("configs/demo_fast.yaml", RUN + mesh + ["data.buckets=[24, 48]", f"run_dir={run_dir}"]), "tiny"
        )
    assert_same_run(metrics(runs[2].run_dir), metrics(runs[1].run_dir))
    assert_trees_close(jax.device_get(runs[2].params), jax.device_get(runs[1].params))
