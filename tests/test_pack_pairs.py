"""``data.pack_pairs``: several pairs per packed row. The packing is exact, the mask keeps pairs and responses
apart, a packed step equals the padded one, long-tailed lengths compute far fewer slots, and a run resumes."""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspo.config import ConfigError, load_config
from jaxspo.data.layout import pack_pairs
from jaxspo.data.pair_packing import PAIR_FIELD, ROW_FIELDS, PairPacker, first_fit
from jaxspo.data.pipeline import BatchPipeline
from jaxspo.models.attention import MaskSpec
from jaxspo.train.state import (
    abstract_model,
    init_params,
    init_state,
    learning_rate_schedule,
    make_optimizer,
    param_shardings,
    state_shardings,
)
from jaxspo.objectives import PackedPairBatch, PairBatch, build_objective
from jaxspo.train.step import make_train_step
from jaxspo.sharding import make_mesh
from tests.cli_fuzz_support import run_cli
from tests.test_fast_logps import GEMMA2_LIKE, assert_trees_close, logps_and_grads
from tests.test_train_step import TINY
from tests.run_overrides import QUIET, TINY_MODEL_SMALL_DATA


def pairs(n: int, width: int = 24, seed: int = 0, tail: bool = False) -> dict[str, np.ndarray]:
    """``n`` padded pairs (own prompts of 1–5 tokens; responses of 1–8 tokens, or long-tailed up to ``width``)."""
    rng = np.random.default_rng(seed)
    out = {
        f"{s}_{k}": np.zeros((n, width), d)
        for s in ("chosen", "rejected")
        for k, d in (("tokens", np.int32), ("valid", bool), ("loss_mask", bool))
    }
    for i in range(n):
        prompt = rng.integers(4, TINY.vocab_size, int(rng.integers(1, 6)))
        for side in ("chosen", "rejected"):
            room = width - len(prompt)
            length = min(room, 1 + int(rng.lognormal(1.0, 1.0))) if tail else int(rng.integers(1, 9))
            row = np.concatenate([prompt, rng.integers(4, TINY.vocab_size, length)])
            out[f"{side}_tokens"][i, : len(row)], out[f"{side}_valid"][i, : len(row)] = row, True
            out[f"{side}_loss_mask"][i, len(prompt) : len(row)] = True
    out["soft_label"] = rng.uniform(0.5, 1.0, n).astype(np.float32)
    return out


def packer_for(
    stored: dict, batch: int, accum: int = 1, shards: int = 1, width: int = 0, row_buckets: int = 4
) -> PairPacker:
    cfg = load_config(
        None,
        [
            "data.layout=packed",
            "data.pack_pairs=true",
            f"data.pack_width={width}",
            f"data.pack_row_buckets={row_buckets}",
        ],
    ).data
    return PairPacker.build(cfg, stored, batch, accum, shards, 8)


def stored_rows(host: dict) -> dict:
    """The row store of ``data.pack_pairs``: one packed pair per row, and the per-pair fields."""
    return pack_pairs(host) | {name: a for name, a in host.items() if a.ndim == 1}


def expected_pair(host: dict, i: int) -> dict[str, np.ndarray]:
    """Pair ``i``'s packed slots from its padded rows alone: tokens, positions, sources (relative), masks, roles."""
    p = int(np.argmax(host["chosen_loss_mask"][i]))
    c, r = int(host["chosen_valid"][i].sum()) - p, int(host["rejected_valid"][i].sum()) - p
    source = np.concatenate([[0], np.arange(p + c - 1), [p - 1], p + c + np.arange(r - 1)])
    return {
        "tokens": np.concatenate([host["chosen_tokens"][i, : p + c], host["rejected_tokens"][i, p : p + r]]),
        "positions": np.concatenate([np.arange(p + c), p + np.arange(r)]),
        "source": source,
        "chosen": np.concatenate([host["chosen_loss_mask"][i, : p + c], np.zeros(r, bool)]),
        "rejected": np.concatenate([np.zeros(p + c, bool), host["rejected_loss_mask"][i, p : p + r]]),
        "role": np.concatenate([np.zeros(p), np.ones(c), np.full(r, 2)]),
    }


@pytest.mark.parametrize("accum, shards", [(1, 1), (2, 4)])
def test_every_pair_is_packed_whole_and_exact(accum, shards):
    host = pairs(16)
    stored = stored_rows(host)
    order = np.random.default_rng(1).permutation(16)  # the batch's pairs, in batch order
    packer = packer_for(stored, 16, accum, shards, width=32).fitted([order])
    batch = packer.pack(stored, order, np.arange(16))
    rows, per_cell, per_micro = batch["packed_tokens"].shape[0], 16 // packer.cells, 16 // accum
    assert packer.cells == np.lcm(accum, shards) and rows % packer.cells == 0 and rows in packer.row_counts()
    assert rows < 16  # several pairs share a row
    np.testing.assert_array_equal(batch["soft_label"], host["soft_label"][order])
    seen = 0
    for position, i in enumerate(order):
        cell, micro = position // per_cell, position // per_micro
        mine = batch["packed_valid"] & (batch[PAIR_FIELD] == position - micro * per_micro)
        # the pair's rows are in its cell's block; other cells of its micro-batch reuse its index
        cell_rows = slice(cell * rows // packer.cells, (cell + 1) * rows // packer.cells)
        (row,) = np.flatnonzero(mine[cell_rows].any(1))  # never split across rows
        row += cell_rows.start
        slots = np.flatnonzero(mine[row])
        offset = slots[0]
        np.testing.assert_array_equal(slots, offset + np.arange(len(slots)))  # contiguous
        want = expected_pair(host, i)
        pair_in_row = batch["packed_segments"][row, offset] // 3
        np.testing.assert_array_equal(batch["packed_tokens"][row, slots], want["tokens"])
        np.testing.assert_array_equal(batch["packed_positions"][row, slots], want["positions"])
        np.testing.assert_array_equal(batch["packed_source"][row, slots][1:], offset + want["source"][1:])
        np.testing.assert_array_equal(batch["packed_chosen_mask"][row, slots], want["chosen"])
        np.testing.assert_array_equal(batch["packed_rejected_mask"][row, slots], want["rejected"])
        np.testing.assert_array_equal(batch["packed_segments"][row, slots], 3 * pair_in_row + want["role"])
        seen += len(slots)
    assert seen == batch["packed_valid"].sum() == stored["packed_valid"].sum()
    assert not (batch["packed_chosen_mask"] | batch["packed_rejected_mask"])[~batch["packed_valid"]].any()


def test_a_process_packs_only_the_cells_its_devices_hold():
    stored = stored_rows(pairs(16, seed=4))
    order = np.arange(16)[::-1]
    packer = packer_for(stored, 16, shards=4, width=32).fitted([order])
    whole = packer.pack(stored, order, np.arange(16))
    second_half = packer.pack(stored, order, np.arange(8, 16))  # process 1 of 2: batch shards 2 and 3
    rows = whole["packed_tokens"].shape[0]
    for name, array in second_half.items():
        np.testing.assert_array_equal(
            array, whole[name][rows // 2 :] if name in ROW_FIELDS else whole[name][8:], err_msg=name
        )
    with pytest.raises(ValueError, match="are not whole cells of 4 pairs"):
        packer.pack(stored, order, np.arange(2, 10))


def test_first_fit_fills_rows_longest_first_and_refuses_a_pair_too_long():
    assert first_fit(np.array([5, 3, 8, 2, 6]), 8) == [[2], [3, 4], [0, 1]]  # 8 alone; 6 then 2; 5 then 3
    with pytest.raises(ValueError, match="data.pack_width=8"):
        first_fit(np.array([9]), 8)
    stored = stored_rows(pairs(8))
    with pytest.raises(ValueError, match=r"^data.pack_width=8 is shorter than the longest pair \(\d+ tokens\)"):
        packer_for(stored, 8, width=8)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.pack_pairs=true"], "data.pack_pairs=true packs pair rows of data.layout=packed"),
        (["data.layout=packed", "data.pack_pairs=true", "data.pack_width=12"], "data.pack_width must be 0"),
        (
            ["data.layout=packed", "data.pack_pairs=true", "data.pack_row_buckets=0"],
            "data.pack_row_buckets must be ≥ 1",
        ),
        (
            ["data.layout=packed", "data.pack_pairs=true", "data.buckets=[16]"],
            "data.pack_pairs=true fills rows of one width",
        ),
        (
            ["data.layout=packed", "data.pack_pairs=true", "data.auto_buckets=2"],
            "data.pack_pairs=true fills rows of one width",
        ),
        (["data.layout=packed", "data.pack_width=64"], "data.pack_width=64 is read only with data.pack_pairs=true"),
    ],
)
def test_bad_settings_stop_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


def brute_force_visible(batch: dict) -> np.ndarray:
    """``[R, W, W]``: a valid key is seen iff earlier, of the query's pair, and of its own half or the prompt;
    a padding query sees what segment 0 sees (the first pair's prompt)."""
    rows, width = batch["packed_tokens"].shape
    out = np.zeros((rows, width, width), bool)
    for b in range(rows):
        seg, valid = batch["packed_segments"][b], batch["packed_valid"][b]
        for q in range(width):
            q_pair, q_role = (seg[q] // 3, seg[q] % 3) if valid[q] else (0, 0)
            for k in range(q + 1):
                out[b, q, k] = valid[k] and seg[k] // 3 == q_pair and seg[k] % 3 in (0, q_role)
    return out


@pytest.mark.parametrize("window, width", [(0, 40), (3, 40), (0, 128)])
def test_mask_keeps_pairs_and_responses_apart_and_blocks_skip_other_pairs(window, width):
    stored = stored_rows(pairs(16, seed=3))
    batch = packer_for(stored, 16, width=width).fitted([np.arange(16)]).pack(stored, np.arange(16), np.arange(16))
    width = batch["packed_tokens"].shape[1]
    spec = MaskSpec(
        jnp.arange(width),
        jnp.asarray(batch["packed_valid"]),
        jnp.asarray(batch["packed_segments"]),
        jnp.asarray(batch["packed_positions"]),
        window,
    )
    dense = np.asarray(jax.jit(lambda s: s.dense(True))(spec))  # jitted: one compile instead of an eager op each
    want = brute_force_visible(batch)
    if window:
        behind = batch["packed_positions"][:, :, None] - batch["packed_positions"][:, None, :]
        want &= behind < window
    np.testing.assert_array_equal(dense, want)
    for block in (4, 8):
        blocks = np.asarray(jax.jit(lambda s: s.block_visible(block, block, True))(spec))
        n = width // block
        truth = dense.reshape(-1, n, block, n, block).any((0, 2, 4))
        assert not (truth & ~blocks).any()  # False is exact
        lower = np.tril(np.ones((n, n), bool))
        skipped = lower & ~blocks
        print(
            f"width {width} window {window} block {block}: {int(skipped.sum())} of {int(lower.sum())} "
            "causal blocks skipped"
        )
        if not window:  # on these rows the bounds skip every block no query sees (the window's bound is looser)
            np.testing.assert_array_equal(blocks[lower], truth[lower])
        assert skipped.sum() > 0


def full_steps(overrides: list[str], host: dict, packed_pairs: bool, steps: int = 3):
    """Metrics and final params of ``steps`` preference steps on the (2, 2, 2) mesh with 2 micro-batches."""
    cfg = load_config(
        None, ["loss.beta=0.5", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "trainer.grad_accum_steps=2", *overrides]
    )
    # the tiny model, with the attention kernel the overrides chose
    kernel = {"attention": cfg.model.attention, "attention_block": cfg.model.attention_block}
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(TINY, **kernel))
    mesh = make_mesh(cfg.mesh.shape())
    graphdef, abstract = abstract_model(cfg.model)
    sharding = param_shardings(abstract, mesh, cfg.mesh.rules)
    policy, reference = init_params(cfg.model, 1, sharding), init_params(cfg.model, 2, sharding)
    schedule = learning_rate_schedule(cfg.optimizer, 10, 1e-2)
    tx = make_optimizer(cfg.optimizer, schedule, abstract)
    shardings = state_shardings(tx, abstract, sharding, mesh)
    state = init_state(tx, policy, 0, shardings)
    batch_size = len(host["soft_label"])
    step = make_train_step(cfg, mesh, graphdef, tx, schedule, shardings, build_objective(cfg), batch_size)
    if packed_pairs:
        stored = stored_rows(host)
        packer = PairPacker.build(cfg.data, stored, batch_size, 2, 4, 8).fitted([np.arange(batch_size)])
        arrays = packer.pack(stored, np.arange(batch_size), np.arange(batch_size))
    else:
        arrays = host
    batch = step.place(arrays)
    history = []
    frozen = reference if step.reference_sharding is not None else None
    for _ in range(steps):
        state, metrics = step.fn(state, frozen, batch)
        history.append(jax.device_get(metrics))
    return history, jax.device_get(state.params), batch


@pytest.mark.slow  # compiles four sharded steps with micro-batches on the (2, 2, 2) mesh (~2.5 min on 2 cores uncached)
@pytest.mark.parametrize("attention, reference", [("xla", "resident"), ("chunked", "precomputed")])
def test_a_pack_pairs_step_equals_the_padded_step(attention, reference):
    host = pairs(16, seed=5)
    host["reference_chosen_logps"] = np.linspace(-30, -20, 16).astype(np.float32)
    host["reference_rejected_logps"] = np.linspace(-25, -35, 16).astype(np.float32)
    kernel = [f"model.attention={attention}", "model.attention_block=8", f"loss.reference={reference}"]
    padded, padded_params, _ = full_steps(kernel, host, False)
    packed, packed_params, batch = full_steps(
        kernel + ["data.layout=packed", "data.pack_pairs=true", "data.pack_width=32"], host, True
    )
    assert batch.packed_tokens.shape[0] < 16  # fewer rows than pairs
    for a, b in zip(padded, packed):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(b[name], a[name], atol=1e-5, rtol=1e-5, err_msg=name)
    for x, y in zip(jax.tree.leaves(packed_params), jax.tree.leaves(padded_params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)
    assert padded[2]["loss"] != padded[0]["loss"]  # the steps did update (step 0's learning rate is 0)


@pytest.mark.parametrize("attention", ["xla", "chunked"])
def test_pack_pairs_log_probs_and_gradients_equal_the_padded_ones(attention):
    """Gemma-2-like attention (sliding window, soft-caps): per-pair sums and their gradients match the padded rows."""
    host = pairs(12, seed=2)
    model_cfg = dataclasses.replace(GEMMA2_LIKE, attention=attention, attention_block=8)
    stored = stored_rows(host)
    batch = packer_for(stored, 12, width=24).fitted([np.arange(12)]).pack(stored, np.arange(12), np.arange(12))
    assert batch["packed_tokens"].shape[0] < 12
    padded, padded_grads = logps_and_grads(model_cfg, PairBatch.from_fields(jax.tree.map(jnp.asarray, host)))
    packed, packed_grads = logps_and_grads(model_cfg, PackedPairBatch.from_fields(jax.tree.map(jnp.asarray, batch)))
    assert_trees_close(packed, padded)
    assert_trees_close(packed_grads, padded_grads)


def test_long_tailed_lengths_compute_far_fewer_slots():
    host = pairs(512, width=128, seed=7, tail=True)
    stored = stored_rows(host)
    real = int(stored["packed_valid"].sum())
    padded = 2 * 512 * 128  # chosen and rejected rows at max_length
    packed = stored["packed_tokens"].size  # one pair per row, at the longest pair
    pipeline = BatchPipeline(stored, 32, seed=0, packer=packer_for(stored, 32, width=128))
    computed = sum(next(pipeline)["packed_tokens"].size for _ in range(pipeline.batches_per_epoch))
    pipeline.close()
    slots = {"padded": padded, "packed": packed, "pack_pairs": computed}
    print(
        json.dumps(
            {
                "pairs": 512,
                "real_tokens": real,
                "slots": slots,
                "tokens_per_slot": {k: round(real / v, 3) for k, v in slots.items()},
                "row_counts": pipeline.packer.row_counts(),
            }
        )
    )
    assert computed < packed / 2


def command(run_dir: Path, *extra: str) -> list[str]:
    tiny = [
        *TINY_MODEL_SMALL_DATA,
        # SFT rows are padded whatever data.layout: pairs are packed in the preference phase only
        "trainer.sft_steps=0",
        "trainer.steps=6",
        "trainer.batch_size=8",
        "trainer.eval_every=0",
        "eval.num_pairs=8",
        "eval.num_prompts=4",
        "eval.max_new_tokens=4",
        "logging.log_every=1",
        *QUIET,
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=2",
        "data.layout=packed",
        "data.pack_pairs=true",
        "data.pack_row_buckets=2",
    ]
    return ["train", "configs/demo.yaml", *tiny, f"run_dir={run_dir}", *extra]


def preference_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows if r["phase"] == "preference"]


@pytest.mark.slow  # two short training runs
def test_jaxspo_train_with_pack_pairs_finishes_and_resumes(tmp_path):
    """``jaxspo train`` (its entry point, in this process) runs pack_pairs to the end, then a copy of the run cut
    back to its step-4 checkpoint resumes there and logs the same steps."""
    first = tmp_path / "first"
    status, stderr = run_cli(command(first))
    assert status == 0, stderr[-3000:]
    assert "data.pack_pairs" in stderr
    rows = preference_rows(first)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in rows)
    second = tmp_path / "second"
    shutil.copytree(first, second)
    shutil.rmtree(second / "checkpoints" / "preference" / "6")  # the run resumes from step 4
    status, stderr = run_cli(command(second))
    assert status == 0, stderr[-3000:]
    assert "resuming preference at step 4" in stderr
    assert preference_rows(second) == rows


def test_jaxspo_compile_takes_the_pack_pairs_batch():
    """The ahead-of-time compile builds the largest pack_pairs program (one pair per row of pack_width) and counts its
    FLOPs."""
    from jaxspo.compile import batch_dims, compile_step, longest_packed_rows
    from jaxspo.train.step_flops import step_model_flops

    overrides = [
        "model.vocab_size=64",
        "model.hidden_size=32",
        "model.intermediate_size=64",
        "model.num_layers=1",
        "model.num_heads=4",
        "model.num_kv_heads=2",
        "data.max_length=32",
        "trainer.batch_size=8",
        "mesh.data=-1",
        "data.layout=packed",
        "data.pack_pairs=true",
        "data.pack_width=48",
    ]
    cfg = load_config("configs/demo.yaml", overrides)
    shapes = build_objective(cfg).abstract_batch(batch_dims(cfg, 8)).fields()
    assert (
        (shapes[PAIR_FIELD].shape, shapes[PAIR_FIELD].dtype) == ((8, 48), jnp.int32)
        and shapes["packed_tokens"].shape == (8, 48)
        and shapes["soft_label"].shape == (8,)
    )
    report = compile_step(cfg, jax.devices())
    examples = longest_packed_rows(cfg, 8) | {"soft_label": np.zeros(8), "packed_tokens": np.zeros((8, 48))}
    assert report["model_flops_per_step"] == step_model_flops(cfg, build_objective(cfg), examples, 8) > 0
