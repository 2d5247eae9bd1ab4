"""Ahead-of-time compilation: topology names, a real TPU compile of the train step, FSDP memory scaling."""

import json

import jax
import numpy as np
import pytest

from jaxspo.cli import main
from jaxspo.compile import compile_step, fit_report, longest_packed_rows, parse_topology
from jaxspo.config import load_config
from jaxspo.objectives import build_objective
from jaxspo.train.step_flops import step_model_flops

TINY = [
    "model.vocab_size=64",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "data.max_length=32",
    "trainer.batch_size=8",
]


@pytest.mark.parametrize(
    "name, chips, grid",
    [
        ("v5p-8", 4, "v5p:2x2x1"),
        ("v4-16", 8, "v4:2x2x2"),
        ("v5p-128", 64, "v5p:4x4x4"),
        ("v5p-256", 128, "v5p:4x4x8"),
        ("v5p-64", 32, "v5p:2x4x4"),
        ("v5e-256", 256, "v5e:16x16"),
        ("v6e-8", 8, "v6e:2x4"),
        ("2xv5p-128", 64, "v5p:4x4x4"),
    ],
)
def test_topology_names(name, chips, grid):
    topology = parse_topology(name)
    assert topology.chips == chips and topology.chip_grid == grid
    assert topology.slices == (2 if name.startswith("2x") else 1)


def test_bad_topology_name_is_explained():
    with pytest.raises(ValueError, match="unknown TPU topology 'v9-8'"):
        parse_topology("v9-8")


@pytest.fixture
def tpu_env(monkeypatch):
    """What `jaxspo compile` sets for libtpu on a machine without TPUs (undone after the test: JAX's
    cluster detection would otherwise take later tests for a TPU VM)."""
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5p-8")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@pytest.fixture
def splash_kernel_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every splash kernel the test builds, in order (the kernel cache emptied first, so
    each kernel the test needs is built while it records)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    from jaxspo.models import splash_attention

    calls = []
    make = splash.make_splash_mha

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return make(*args, **kwargs)

    monkeypatch.setattr(splash, "make_splash_mha", recording)
    splash_attention._kernel.cache_clear()
    return calls


@pytest.mark.slow  # a TPU compile
def test_tiny_step_compiles_for_a_tpu_slice_here(tpu_env, tmp_path, capsys, splash_kernel_calls):
    """`jaxspo compile --json --step-seconds`: memory and fit, model FLOPs and the MFU a step time implies; with
    model.attention=splash (refused for this CPU host, resolved for the TPU target) the step builds the real TPU
    kernel, not the interpreted one."""
    assert (
        main(
            [
                "compile",
                "configs/demo.yaml",
                *TINY,
                "mesh.data=1",
                "mesh.fsdp=-1",
                "model.attention=splash",
                "--topology",
                "v5p-8",
                "--json",
                str(tmp_path / "r.json"),
                "--step-seconds",
                "0.002",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["devices"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1, "context": 1}
    assert report["fits"] and 0 < report["peak_bytes_per_device"] < report["capacity_bytes_per_device"]
    # the arguments hold at least the sharded state the analytic count predicts
    assert report["argument_bytes_per_device"] >= 0.9 * report["analytic_state_bytes_per_device"] - 4 * 1024
    # libtpu's simulated HBM peak counts the buffers live at once: positive, and at most the sum of them all
    assert 0 < report["compiler_peak_bytes_per_device"] <= report["peak_bytes_per_device"]
    assert report["compiler_peak_bytes_per_device"] >= report["argument_bytes_per_device"]
    assert report["xla_flops_per_step_per_device"] > 0
    cfg = load_config("configs/demo.yaml", TINY)
    assert report["model_flops_per_step"] == step_model_flops(
        cfg, build_objective(cfg), {"chosen_tokens": np.zeros((8, 32))}, 8
    )
    assert (
        report["device_kind"] == "TPU v5"
        and report["peak_flops_per_device"] == 459e12
        and report["compute_dtype"] == "float32"
    )
    assert report["implied_mfu"] == pytest.approx(report["model_flops_per_step"] / 0.002 / (4 * 459e12))
    out = capsys.readouterr().out
    assert "MFU at 0.002 s per step" in out and "compiler peak" in out
    assert splash_kernel_calls and not any(call["interpret"] for call in splash_kernel_calls)  # a TPU kernel


def test_step_seconds_must_be_positive(capsys):
    assert main(["compile", "configs/demo.yaml", "--topology", "v5p-8", "--step-seconds", "0"]) == 2  # a usage error
    err = capsys.readouterr().err
    assert (
        "--step-seconds: expected seconds > 0, got '0'" in err and err.count("jaxspo:") == 1 and "Traceback" not in err
    )


# a sliding and a global layer with a soft-cap: what the splash cascade does on packed rows beyond plain attention
SLIDING_SOFTCAPPED = [
    "model.attn_softcap=20.0",
    "model.sliding_window=8",
    "model.layer_types=[sliding_attention, full_attention]",
]


@pytest.mark.slow  # a TPU compile
def test_packed_layout_step_compiles_for_a_tpu_slice_here(tpu_env, splash_kernel_calls):
    """data.layout=packed (configs/demo_fast.yaml) with model.attention=splash, a sliding and a global layer
    and a soft-cap: the TPU compiler takes the packed rows (2·max_length wide, segment mask), the splash
    cascade's kernels and splash's private backward lower and compile for the TPU (not interpreted); model
    FLOPs count the longest pair a row holds (prompt once, two responses), below the padded rows' count."""
    model = TINY + SLIDING_SOFTCAPPED
    cfg = load_config("configs/demo_fast.yaml", model + ["mesh.data=1", "mesh.fsdp=-1", "model.attention=splash"])
    report = fit_report(cfg, "v5p-8")
    assert report["fits"] and report["xla_flops_per_step_per_device"] > 0
    built = [(call["interpret"], call["save_residuals"]) for call in splash_kernel_calls]
    assert (False, True) in built and not any(interpret for interpret, _ in built)
    rows = longest_packed_rows(cfg, 8)
    prompt = cfg.data.max_prompt_length
    assert rows["packed_valid"].sum(1).tolist() == [2 * 32 - prompt] * 8
    demo = load_config("configs/demo.yaml", model)
    padded = step_model_flops(demo, build_objective(demo), {"chosen_tokens": np.zeros((8, 32))}, 8)
    assert 0 < report["model_flops_per_step"] < padded  # the prompt once, no padding between the halves


@pytest.mark.slow  # compiles the step on several meshes
def test_state_bytes_per_device_fall_as_one_over_fsdp():
    """Compiled memory analysis on the CPU mesh: params + optimizer + reference + batch arguments ∝ 1/N, over
    N = 1, 2 and 8 (a ratio of 2 and of 8: a per-device cost that does not shrink shows at either)."""
    sizes = {}
    for n in (1, 2, 8):
        cfg = load_config(
            "configs/demo.yaml",
            TINY
            + [
                "mesh.data=1",
                f"mesh.fsdp={n}",
                "model.vocab_size=256",
                "model.hidden_size=256",
                "model.intermediate_size=512",
            ],
        )
        sizes[n] = compile_step(cfg, jax.devices()[:n])["argument_bytes_per_device"]
    for n in (2, 8):
        assert sizes[1] / sizes[n] == pytest.approx(n, rel=0.1), sizes


def test_a_step_too_large_for_hbm_is_reported_as_not_fitting(tpu_env):
    """The TPU compiler refuses programs beyond HBM; the report says so instead of crashing."""
    big = ["model.vocab_size=65536", "data.max_length=4096", "data.max_prompt_length=64", "trainer.batch_size=64"]
    cfg = load_config("configs/demo.yaml", TINY + big + ["mesh.data=-1", "mesh.fsdp=1"])
    report = fit_report(cfg, "v5e-4")
    assert report["refused_by_compiler"] and not report["fits"] and report["compiler_peak_bytes_per_device"] is None
    assert report["peak_bytes_per_device"] > report["capacity_bytes_per_device"]


def test_batch_that_does_not_split_over_the_mesh_is_an_error():
    cfg = load_config("configs/demo.yaml", TINY + ["trainer.batch_size=6", "mesh.data=-1"])
    with pytest.raises(ValueError, match=r"trainer.batch_size \(6\) must divide by the mesh's batch axes"):
        compile_step(cfg, jax.devices()[:4])


@pytest.fixture(scope="module")
def plain_soft_spo() -> dict:
    """The compile report of the soft_spo step without the regulariser (compiled once for both cases below)."""
    cfg = load_config("configs/demo.yaml", TINY + ["loss.terms={soft_spo: 1.0}", "mesh.data=1", "mesh.fsdp=4"])
    return compile_step(cfg, jax.devices()[:4])


@pytest.mark.slow  # a step compile each
@pytest.mark.parametrize("terms", ["{soft_spo: 1.0}", "{soft_spo_ranked: 1.0}"])
def test_soft_spo_steps_with_lists_and_the_kl_regulariser_compile(plain_soft_spo, terms):
    """The fit check builds list-shaped batches and the regulariser's sample fields; the reference is resident."""
    soft_spo = [f"loss.terms={terms}", "loss.kl.beta=0.1", "loss.kl.prompts=8", "mesh.data=1", "mesh.fsdp=4"]
    plain = plain_soft_spo
    report = compile_step(load_config("configs/demo.yaml", TINY + soft_spo), jax.devices()[:4])
    assert report["peak_bytes_per_device"] > 0
    assert report["compiler_peak_bytes_per_device"] is None  # XLA:CPU simulates no peak
    # the regulariser's frozen reference is an argument (one more sharded copy of the params than without it)
    params_per_device = report["parameters"] * 4 / 4  # fp32 bytes, split over fsdp = 4
    assert report["argument_bytes_per_device"] - plain["argument_bytes_per_device"] >= 0.9 * params_per_device
