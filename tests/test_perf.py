"""Model FLOPs (jaxspo/perf.py, jaxspo/train/step_flops.py): a hand count, the real attention mask, XLA's count
of the compiled model; the peak table; the perf/* metrics of a run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxspo.compile import compile_step, mfu_report
from jaxspo.config import load_config
from jaxspo.data.layout import pack_pairs
from jaxspo.models import Decoder, ModelConfig
from jaxspo.models.attention import MaskSpec
from jaxspo.objectives import build_objective
from jaxspo.perf import (
    Forward,
    causal_pairs,
    device_peak,
    measured_cpu_peak,
    model_flops,
    packed_forward,
    padded_forward,
    recomputed_flops,
    run_peak,
    throughput,
)
from jaxspo.train.step_flops import step_forwards

TINY = ModelConfig(
    vocab_size=32, hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=4
)


def test_hand_count_of_a_tiny_config():
    """D=8, H=2, K=1, Hd=4, F=16, V=32, L=2; 3 rows of width 5, logits on 4 slots per row."""
    layer = 2 * (8 * 2 * 4 + 8 * 1 * 4 + 8 * 1 * 4 + 2 * 4 * 8 + 3 * 8 * 16)  # q, k, v, o, gate/up/down: 1,152
    head = 2 * 8 * 32  # 512
    pairs = 3 * (1 + 2 + 3 + 4 + 5)  # causal triangle per row: 45
    matmuls = 3 * 5 * 2 * layer + 3 * 4 * head  # 40,704
    attention = pairs * 2 * (4 * 2 * 4)  # QKᵀ + PV, 2 layers: 2,880
    policy = padded_forward(TINY, 3, 5, 4, "full")
    assert model_flops(TINY, [policy]) == 3 * matmuls + 3 * attention == 130_752
    assert model_flops(TINY, [policy.forward_only()]) == matmuls + attention
    assert model_flops(TINY, [padded_forward(TINY, 3, 5, 4, "frozen")]) == 2 * matmuls + 3 * attention
    plain = dataclasses.replace(TINY, gated_mlp=False)
    assert model_flops(plain, [policy.forward_only()]) == matmuls - 3 * 5 * 2 * 2 * 8 * 16 + attention


def test_remat_adds_the_layers_forward_to_hardware_flops_only():
    policy = padded_forward(TINY, 3, 5, 4, "full")
    assert recomputed_flops(TINY, [policy]) == 0
    full = dataclasses.replace(TINY, remat=True)
    head = 3 * 4 * 2 * 8 * 32
    assert recomputed_flops(full, [policy]) == model_flops(full, [policy.forward_only()]) - head
    assert recomputed_flops(full, [policy.forward_only()]) == 0  # a reference pass has no backward
    assert recomputed_flops(dataclasses.replace(full, remat_policy="dots"), [policy]) == 0
    assert model_flops(full, [policy]) == model_flops(TINY, [policy])  # model FLOPs ignore remat


@pytest.mark.parametrize("window", [0, 3])
def test_pair_counts_equal_the_attention_mask(window):
    """The pairs counted are exactly those the model's MaskSpec lets a query see (padded: a full-width row;
    packed: valid queries of real [prompt, chosen, rejected] rows, segment and window rules included)."""
    width = 9
    dense = MaskSpec(jnp.arange(width), jnp.ones((1, width), bool), window=window).dense(sliding=bool(window))
    assert causal_pairs(width, window) == int(dense.sum())
    rows = {
        "chosen_tokens": np.array([[5, 6, 7, 8, 9, 0, 0], [5, 6, 7, 0, 0, 0, 0]]),
        "rejected_tokens": np.array([[5, 6, 10, 11, 12, 13, 0], [5, 6, 7, 14, 0, 0, 0]]),
    }
    rows["chosen_valid"], rows["rejected_valid"] = rows["chosen_tokens"] > 0, rows["rejected_tokens"] > 0
    rows["chosen_loss_mask"] = rows["chosen_valid"] & (np.arange(7) >= np.array([[2], [3]]))
    rows["rejected_loss_mask"] = rows["rejected_valid"] & (np.arange(7) >= np.array([[2], [3]]))
    packed = pack_pairs(rows)
    spec = MaskSpec(
        jnp.arange(packed["packed_tokens"].shape[1]),
        packed["packed_valid"],
        packed["packed_segments"],
        packed["packed_positions"],
        window,
    )
    seen = np.asarray(spec.dense(sliding=bool(window))) & packed["packed_valid"][:, :, None]
    counted = packed_forward(
        dataclasses.replace(TINY, sliding_window=window), packed["packed_positions"], packed["packed_valid"], "full"
    )
    assert (counted.window_pairs if window else counted.pairs) == seen.sum()
    assert counted.slots == counted.head_slots == packed["packed_tokens"].size


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_count_matches_xla_cost_analysis_of_the_real_model():
    """XLA's FLOPs of the compiled forward, and of forward + backward, of a real Decoder (layers unrolled, so
    XLA counts each; its dense attention computes all T² pairs) are the count within 3 % (the rest is
    elementwise work: norms, softmax, activations, which the count leaves out)."""
    cfg = ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2, scan_unroll=2
    )
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    b, t = 2, 32
    positions, valid, tokens = (
        jnp.broadcast_to(jnp.arange(t), (b, t)),
        jnp.ones((b, t), bool),
        jnp.zeros((b, t), jnp.int32),
    )

    def loss(p, x):
        return jnp.square(nnx.merge(graphdef, p)(x, positions, valid)).mean()

    dense = Forward(b * t, b * t, b * t * t, b * t * t, "full")
    forward = _xla_flops(lambda p, x: nnx.merge(graphdef, p)(x, positions, valid), params, tokens)
    assert forward == pytest.approx(model_flops(cfg, [dense.forward_only()]), rel=0.03)
    assert _xla_flops(jax.grad(loss), params, tokens) == pytest.approx(model_flops(cfg, [dense]), rel=0.03)


def test_compiled_preference_step_matches_its_count():
    """The whole DPO step (policy fwd+bwd over 2B rows, resident reference forward, Adam) compiled on one
    CPU device: XLA's FLOPs equal the step's count within 5 % once attention is counted densely, as the xla kernel
    computes it (the rest: elementwise work, the Adam update, the log-softmax over the vocabulary)."""
    cfg = load_config(
        "configs/demo.yaml",
        [
            "model.vocab_size=512",
            "model.hidden_size=64",
            "model.intermediate_size=256",
            "model.num_layers=2",
            "model.num_heads=4",
            "model.num_kv_heads=2",
            "model.scan_unroll=2",
            "data.max_length=32",
            "trainer.batch_size=4",
            "mesh.data=1",
            "mesh.fsdp=1",
        ],
    )
    report = compile_step(cfg, jax.devices()[:1])
    length, rows = 32, 2 * 4
    causal = step_forwards(cfg, build_objective(cfg), {"chosen_tokens": np.zeros((4, length))}, 4)
    assert [f.backward for f in causal] == ["full", "none"]  # policy, resident reference
    dense = [dataclasses.replace(f, pairs=rows * length * length) for f in causal]
    assert report["model_flops_per_step"] == model_flops(cfg.model, causal)
    assert report["xla_flops_per_step_per_device"] == pytest.approx(
        model_flops(cfg.model, dense), rel=0.05
    )  # + Adam, log-softmax


def test_step_forwards_by_layout_and_reference():
    cfg = load_config("configs/demo.yaml", ["model.vocab_size=64", "loss.reference=precomputed"])
    batch = {"chosen_tokens": np.zeros((2, 16))}  # this process's 2 rows of a global batch of 8
    (policy,) = step_forwards(cfg, build_objective(cfg), batch, 8)
    assert policy.slots == 2 * 8 * 16 and policy.head_slots == 2 * 8 * 15
    (lora,) = step_forwards(cfg, build_objective(cfg), batch, 8, frozen_base=True)
    assert lora.backward == "frozen"
    (sft,) = step_forwards(cfg, build_objective(cfg, "sft"), {"tokens": np.zeros((4, 16))}, 4)
    assert sft.slots == 4 * 16


def test_peak_table_matches_device_kinds():
    assert device_peak("TPU v5 lite", "bfloat16") == 197e12
    assert device_peak("TPU v5", "bfloat16") == 459e12
    assert device_peak("TPU v6 lite", "float32") == 918e12  # float32 dots run as one bf16 pass on TPU
    assert device_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989.5e12
    assert device_peak("NVIDIA H100 PCIe", "float32") == 378e12  # TF32
    assert device_peak("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
    assert device_peak("NVIDIA B200", "bfloat16") == 2250e12
    assert device_peak("TPU7x", "bfloat16") is None


def test_cpu_peak_is_measured_once_per_process():
    peak, source = run_peak("float32")
    assert source == "measured" and peak == measured_cpu_peak("float32") > 1e8
    assert measured_cpu_peak("float32") is measured_cpu_peak("float32")  # cached, not re-measured


def test_logging_peak_flops_replaces_the_measurement():
    import jax

    assert run_peak("float32", 2.5e10) == (2.5e10 * jax.process_count(), "logging.peak_flops")  # per process on CPU
    assert run_peak("bfloat16", 0.0)[1] == "measured"  # 0: not set


def test_throughput_and_compile_mfu():
    row = throughput(real_tokens=900, computed_tokens=1200, flops=6e12, seconds=2.0, steps=4, peak=10e12)
    assert row == {
        "perf/seconds_per_step": 0.5,
        "perf/tokens_per_second": 450,
        "perf/computed_tokens_per_second": 600,
        "perf/model_flops_per_second": 3e12,
        "perf/mfu": 0.3,
    }
    assert "perf/mfu" not in throughput(1, 1, 1, 1.0, 1, None)
    report = mfu_report(4 * 459e12, 8, "TPU v5", "bfloat16", step_seconds=2.0)
    assert report["seconds_per_step_at_peak"] == pytest.approx(0.5) and report["implied_mfu"] == pytest.approx(0.25)
