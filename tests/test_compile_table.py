"""benchmarks/compile_table.py without libtpu: cell settings, resuming, a failing cell's record, the rendered table."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compile_table as ct  # noqa: E402

from jaxspo.config import load_config  # noqa: E402

GiB = 1024**3


def _record(key, devices, mesh, peak_gib, max_pairs, predicted=None, refused=False):
    return {
        "cell": key,
        "status": "ok",
        "devices": devices,
        "mesh": mesh,
        "capacity_bytes": 95 * GiB,
        "peak_bytes_at_min": int(peak_gib * GiB),
        "refused_at_min": refused,
        "max_pairs": max_pairs,
        "predicted_max_pairs": max_pairs if predicted is None else predicted,
        "confirmed": predicted in (None, max_pairs),
    }


def test_every_cell_is_a_valid_config_with_its_kernel_mesh_and_length():
    cells = ct.all_cells()
    assert len(cells) == len(set(cells)) == 2 * 4 * 4 * 3 and cells[: len(ct.PRIORITY)] == ct.PRIORITY
    for cell in (ct.Cell("8B", 32768, "v5p-8", "splash+context"), ct.Cell("70B", 131072, "v6e-256", "xla")):
        cfg = load_config(ct.RECIPES[cell.model], ct.cell_overrides(cell))
        assert cfg.data.max_length == cell.length and cfg.model.max_position_embeddings >= cell.length
        assert cfg.model.attention == cell.kernel.split("+")[0]
    cfg = load_config(ct.RECIPES["8B"], ct.cell_overrides(ct.Cell("8B", 32768, "v5p-8", "splash+context")))
    assert cfg.mesh.context == 4 and cfg.mesh.rules["embed"] == ["fsdp", "context"]
    assert cfg.data.max_length // cfg.mesh.context % 128 == 0  # whole splash blocks per shard
    assert ct.context_ways(ct.Cell("8B", 131072, "v5p-8", "splash+context")) == 4  # capped by the slice's 4 devices
    assert ct.context_ways(ct.Cell("8B", 131072, "v6e-256", "splash+context")) == 16


def test_run_skips_finished_cells_and_records_a_failing_one(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    done = ct.Cell("8B", 2048, "v5p-8", "xla")
    out.write_text(json.dumps(_record(done.key, 4, {}, 10, 8)) + "\n{cut line")
    failing, missing = ct.Cell("8B", 2048, "v5p-8", "splash"), ct.Cell("8B", 8192, "v5p-8", "xla")
    launched, real_child = [], ct.run_cell_subprocess

    def child(cell, timeout, confirm, out):
        launched.append(cell)
        command = [sys.executable, "-c", "import sys; sys.exit('libtpu said no')"] if cell == failing else None
        if command is None:
            return {"cell": cell.key, "status": "ok"}
        return real_child(cell, timeout, confirm, command, out)

    monkeypatch.setattr(ct, "run_cell_subprocess", child)
    ct.run([done, failing, missing], out, jobs=1, timeout=30, confirm=True, retry_failed=False)
    assert launched == [failing, missing]
    records = ct.read_results(out)
    assert records[failing.key] == {"cell": failing.key, "status": "error", "detail": "exit 1: libtpu said no"}
    launched.clear()
    ct.run([done, failing, missing], out, jobs=1, timeout=30, confirm=True, retry_failed=False)
    assert launched == []
    ct.run([done, failing, missing], out, jobs=1, timeout=30, confirm=True, retry_failed=True)
    assert launched == [failing]


def test_a_cell_past_its_timeout_keeps_its_last_partial_record():
    cell = ct.Cell("8B", 2048, "v5p-8", "xla")
    silent = [sys.executable, "-c", "import time; time.sleep(5)"]
    assert ct.run_cell_subprocess(cell, 1, True, silent) == {
        "cell": cell.key,
        "status": "timeout",
        "detail": "no result in 1 s",
    }
    talking = [sys.executable, "-c", 'import time; print(\'{"cell": "x", "max_pairs": 4}\', flush=True); time.sleep(5)']
    assert ct.run_cell_subprocess(cell, 1, True, talking) == {
        "cell": "x",
        "max_pairs": 4,
        "status": "timeout",
        "detail": "no result in 1 s",
    }
    killed = [
        sys.executable,
        "-c",
        'import os, signal; print(\'{"cell": "x", "max_pairs": 4}\', flush=True); os.kill(os.getpid(), signal.SIGTERM)',
    ]
    assert ct.run_cell_subprocess(cell, 10, True, killed) == {
        "cell": "x",
        "max_pairs": 4,
        "status": "error",
        "detail": "exit -15: (no output)",
    }


def test_a_cell_is_held_by_one_runner_and_skipped_once_finished(tmp_path):
    out, cell = tmp_path / "r.jsonl", ct.Cell("8B", 8192, "v5p-8", "splash")
    with ct.claim(cell, out) as free:
        assert free
        with ct.claim(cell, out) as again:  # a second runner (same pid here, alive) finds it held
            assert not again
    with ct.claim(cell, out) as free:  # released
        assert free
    ct.append_record(out, {"cell": cell.key, "status": "ok"})
    ct.append_record(out, {"cell": cell.key, "status": "skipped"})  # a skip never hides the result
    assert ct.read_results(out)[cell.key]["status"] == "ok"
    with ct.claim(cell, out) as free:
        assert not free


@pytest.mark.parametrize(
    "capacity, confirms, expected, compiled",
    [
        (95, 2, (8, 9), [1, 2, 9, 8]),  # 9 predicted from 1 and 2; peak(9) = 98 does not fit, 8 does
        (94, 2, (8, 8), [1, 2, 8]),  # the prediction fits: confirmed at once
        (94, 0, (2, 8), [1, 2]),  # no confirming compile: the prediction stays a prediction
        (14, 2, (0, 0), [1]),  # not even one fits
        (20, 2, (1, 1), [1, 2]),
    ],
)
def test_batch_search_predicts_from_1_and_2_and_confirms_downwards(capacity, confirms, expected, compiled):
    seen, progress = [], []
    peak = lambda k: seen.append(k) or 10 * k + 5 + (3 if k == 9 else 0)  # noqa: E731  (9 is above the line)
    assert (
        ct.search_max_batch(peak, capacity, confirms, lambda best, predicted: progress.append((best, predicted)))
        == expected
    )
    assert seen == compiled and (not progress or progress[0] == (1, None))


def test_table_shows_results_predictions_misfits_and_dashes_for_cells_not_compiled(tmp_path):
    records = {
        "8B/32768/v5p-8/xla": _record(
            "8B/32768/v5p-8/xla", 4, {"data": 1, "fsdp": 4, "tensor": 1, "context": 1}, 300.0, 0, refused=True
        ),
        "8B/32768/v5p-8/splash": _record(
            "8B/32768/v5p-8/splash", 4, {"data": 1, "fsdp": 4, "tensor": 1, "context": 1}, 60.26, 8, predicted=12
        ),
        "8B/32768/v5p-8/splash+context": _record(
            "8B/32768/v5p-8/splash+context", 4, {"data": 1, "fsdp": 1, "tensor": 1, "context": 4}, 45.0, 1
        )
        | {"status": "timeout", "predicted_max_pairs": None, "confirmed": False},  # stopped after the first compile
        "8B/8192/v5p-8/xla": {"cell": "8B/8192/v5p-8/xla", "status": "timeout", "detail": "no result in 2400 s"},
        "8B/8192/v5p-8/splash": {
            "cell": "8B/8192/v5p-8/splash",
            "status": "error",
            "detail": "exit 1: XlaRuntimeError: INTERNAL",
        },
        "8B/8192/v5p-8/splash+context": {
            "cell": "8B/8192/v5p-8/splash+context",
            "status": "error",
            "detail": "exit -15: (no output)",
        },
    }
    cells = [ct.Cell("8B", t, "v5p-8", k) for t in (8192, 32768) for k in ct.KERNELS]
    table = ct.render(records, cells).splitlines()
    assert len(table) == 4
    assert table[2] == "| Llama-3-8B | 8,192 | v5p-8 (4) | 95 | — | — | error | error | 1×2×1×2 | — | — |"
    assert (
        table[3]
        == "| Llama-3-8B | 32,768 | v5p-8 (4) | 95 | ≥ 300.0 | 0 ✗ | 60.3 | 2 (pred. 3) | 1×1×1×4 | 45.0 | ≥ 0.25 |"
    )
    docs = tmp_path / "scale.md"
    docs.write_text(f"intro\n{ct.MARKERS[0]}\nold table\n{ct.MARKERS[1]}\nafter\n")
    ct.write_docs(docs, "\n".join(table))
    assert docs.read_text() == f"intro\n{ct.MARKERS[0]}\n" + "\n".join(table) + f"\n{ct.MARKERS[1]}\nafter\n"


@pytest.mark.parametrize("text", ["8B/2048/v5p-8", "8B/x/v5p-8/xla", "13B/2048/v5p-8/xla", "8B/2048/v5p-8/flash"])
def test_bad_cell_keys_are_explained(text):
    with pytest.raises(ValueError, match="MODEL/LENGTH/SLICE/KERNEL"):
        ct.Cell.from_key(text)
