"""The TPU fit table: Llama-3 DPO per (model, tokens per sequence, slice, attention kernel), one libtpu compile
search per cell. Prints the markdown table (JSON lines go to the results file).

    nice -n 19 .venv/bin/python benchmarks/compile_table.py run [--out FILE] [--jobs 2] [--timeout 2400] [--limit N]
    .venv/bin/python benchmarks/compile_table.py render [--out FILE] [--docs docs/scale.md]

``run`` compiles the cells in priority order (:data:`PRIORITY`, then the rest), each in its own subprocess
(libtpu and host memory start clean; a crash or a timeout is recorded as that cell's result), appends one
JSON line per finished cell to ``--out`` at once and skips cells already there (resumable;
``--retry-failed`` re-runs errors and timeouts). ``render`` prints the table from the file (cells without a
result show "—"), and with ``--docs`` writes it between the ``<!-- kernel-fit-table -->`` markers.

The batch search of a cell, in units of one pair per batch shard (data×fsdp devices; with context c a pair's
tokens spread over c devices, so pairs per device = global pairs / devices): compile 1 and 2, predict the
largest k that fits from the affine peak, compile that k to confirm (k+1 is not compiled: the affine model
says it does not fit), stepping down while it does not fit (at most ``CONFIRMS`` compiles).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Lock
from typing import Callable, Iterator

from result_records import append_record, last_json_record, read_results

GiB = 1024**3
RECIPES = {"8B": "configs/compile/llama3_8b_dpo.yaml", "70B": "configs/compile/llama3_70b_dpo.yaml"}
MODEL_NAMES = {"8B": "Llama-3-8B", "70B": "Llama-3-70B"}
LENGTHS = (2048, 8192, 32768, 131072)
SLICES = ("v5p-8", "v5p-64", "v5p-256", "v6e-256")
KERNELS = ("xla", "splash", "splash+context")
LONG_POSITIONS = 131072  # Llama 3.1's positions (llama3 rope scaling, factor 8) for sequences above 8192
LOGPROB_CHUNK = 2048  # LM-head tokens at a time: no [2B, T, 128256] float32 logits (off at T = 2048)
CONFIRMS = 2
DEFAULT_OUT = "benchmarks/results/compile_table.jsonl"
MARKERS = ("<!-- kernel-fit-table -->", "<!-- /kernel-fit-table -->")


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One table entry: model ``8B``/``70B``, tokens per sequence, slice name, kernel (``xla``, ``splash``,
    ``splash+context``)."""

    model: str
    length: int
    slice: str
    kernel: str

    @property
    def key(self) -> str:
        return f"{self.model}/{self.length}/{self.slice}/{self.kernel}"

    @classmethod
    def from_key(cls, key: str) -> Cell:
        parts = key.split("/")
        if len(parts) != 4 or parts[0] not in RECIPES or not parts[1].isdigit() or parts[3] not in KERNELS:
            raise ValueError(
                f"cell '{key}' is not MODEL/LENGTH/SLICE/KERNEL with MODEL in {list(RECIPES)} and KERNEL "
                f"in {list(KERNELS)}"
            )
        return cls(parts[0], int(parts[1]), parts[2], parts[3])


PRIORITY = [
    Cell.from_key(k)
    for k in (
        "8B/32768/v5p-8/splash+context",
        "8B/32768/v5p-8/splash",
        "8B/32768/v5p-8/xla",
        "8B/8192/v5p-8/xla",
        "8B/8192/v5p-8/splash",
        "8B/8192/v5p-8/splash+context",
        "70B/8192/v5p-256/splash",
        "70B/8192/v5p-256/xla",
        "70B/8192/v5p-256/splash+context",
        "8B/2048/v5p-8/splash",
        "8B/131072/v5p-64/splash+context",
        "70B/32768/v5p-256/splash+context",
    )
]


def all_cells() -> list[Cell]:
    """Every cell, :data:`PRIORITY` first, then by model, length, slice and kernel."""
    rest = [Cell(m, t, s, k) for m in RECIPES for t in LENGTHS for s in SLICES for k in KERNELS]
    return PRIORITY + [c for c in rest if c not in PRIORITY]


def slice_devices(name: str) -> int:
    """Devices of a slice name: v5p-N counts TensorCores (N/2 megacore devices), v6e-N chips."""
    count = int(name.split("-")[1])
    return count // 2 if name.startswith("v5p") else count


def context_ways(cell: Cell) -> int:
    """Devices splitting each sequence for ``splash+context``: T/8192 (at least 2, at most the slice), so a
    shard holds 1K–8K tokens, a whole number of 128-slot splash blocks; 1 for the other kernels."""
    if cell.kernel != "splash+context":
        return 1
    return min(slice_devices(cell.slice), max(2, cell.length // 8192))


def cell_overrides(cell: Cell) -> list[str]:
    """Config overrides of a cell on top of its model's recipe (DPO, resident reference, bf16, remat, FSDP)."""
    out = [
        f"data.max_length={cell.length}",
        f"data.max_prompt_length={cell.length // 2}",
        f"model.attention={cell.kernel.split('+')[0]}",
        f"model.logprob_chunk={LOGPROB_CHUNK}",
    ]
    if cell.length > 8192:
        out.append(f"model.max_position_embeddings={LONG_POSITIONS}")
    if (c := context_ways(cell)) > 1:  # parameters sharded over the context devices too
        out += [f"mesh.context={c}", "mesh.rules.embed=[fsdp, context]"]
    return out


def search_cell(cell: Cell, confirm: bool = True) -> dict:
    """Compiles the cell's step (in this process) and searches its largest batch; the result record."""
    os.environ["TPU_ACCELERATOR_TYPE"] = cell.slice
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jaxspo.compile import compile_step, parse_topology, resolve_model, topology_devices
    from jaxspo.config import load_config

    topology = parse_topology(cell.slice)
    devices = topology_devices(topology)
    cfg = resolve_model(load_config(RECIPES[cell.model], cell_overrides(cell)))
    compiles: dict[int, dict] = {}

    def peak(k: int) -> int:
        report = compile_step(cfg, devices, k)
        compiles[k] = {
            "peak": report["peak_bytes_per_device"],
            "refused": report["refused_by_compiler"],
            "seconds": round(report["compile_seconds"], 1),
        }
        compiles[k]["mesh"] = report["mesh"]
        return report["peak_bytes_per_device"]

    def record(best: int, predicted: int | None, status: str) -> dict:
        mesh = compiles[1]["mesh"]
        shards = mesh["data"] * mesh["fsdp"]
        return {
            "cell": cell.key,
            "status": status,
            "devices": len(devices),
            "mesh": mesh,
            "capacity_bytes": topology.hbm_bytes,
            "overrides": cell_overrides(cell),
            "pairs_per_batch_shard": {str(k): v for k, v in sorted(compiles.items())},
            "min_pairs": shards,
            "peak_bytes_at_min": compiles[1]["peak"],
            "refused_at_min": compiles[1]["refused"],
            "max_pairs": best * shards,
            "predicted_max_pairs": None if predicted is None else predicted * shards,
            "confirmed": best == predicted,
            "date": datetime.date.today().isoformat(),
        }

    progress = lambda best, predicted: print(json.dumps(record(best, predicted, "partial")), flush=True)  # noqa: E731
    best, predicted = search_max_batch(peak, topology.hbm_bytes, CONFIRMS if confirm else 0, progress)
    return record(best, predicted, "ok")


def search_max_batch(
    peak: Callable[[int], int], capacity: int, confirms: int, progress: Callable[[int, int | None], None]
) -> tuple[int, int | None]:
    """(largest batch k whose ``peak(k)`` bytes fit ``capacity``, the affine prediction from k = 1, 2 or None).

    Compiles 1 and 2, predicts, then up to ``confirms`` compiles from the prediction down; ``progress(best,
    predicted)`` after each compile (predicted None: not known yet)."""
    first = peak(1)
    if first > capacity:
        return 0, 0
    progress(1, None)
    second = peak(2)
    if second > capacity:
        return 1, 1
    slope = second - first
    best, predicted = 2, 1 + int((capacity - first) // slope) if slope > 0 else 2
    progress(best, predicted)
    for guess in range(predicted, max(best, predicted - confirms), -1):
        if peak(guess) <= capacity:
            return guess, predicted
        progress(best, predicted)
    return best, predicted


def run_cell_subprocess(
    cell: Cell, timeout: float, confirm: bool, command: list[str] | None = None, out: Path = Path(DEFAULT_OUT)
) -> dict:
    """Runs :func:`search_cell` in a child process (niced like the caller); a crash or timeout becomes the record."""
    command = command or [sys.executable, __file__, "cell", cell.key, "--out", str(out)] + (
        [] if confirm else ["--no-confirm"]
    )
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        output = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        partial = last_json_record(output)
        timed_out = {"status": "timeout", "detail": f"no result in {timeout:.0f} s"}
        return (partial | timed_out) if partial else {"cell": cell.key} | timed_out
    record = last_json_record(done.stdout)
    if done.returncode == 0 and record:
        return record | {"wall_seconds": round(time.perf_counter() - start, 1)}
    errors = [line for line in done.stderr.splitlines() if re.search(r"Error|error:|exit", line)]
    tail = (errors or done.stderr.strip().splitlines() or ["(no output)"])[-1]
    failed = {"status": "error", "detail": f"exit {done.returncode}: {tail[-500:]}"}
    return (record | failed) if record else {"cell": cell.key} | failed  # a killed child keeps its compiles so far


@contextlib.contextmanager
def claim(cell: Cell, out: Path) -> Iterator[bool]:
    """Holds ``cell`` for this process (a pid file beside ``out``) while compiling it; yields False if ``out``
    already has its result or a live process holds it (several runners may share one results file)."""
    held = out.parent / ".running" / cell.key.replace("/", "_")
    if cell.key in read_results(out) and read_results(out)[cell.key]["status"] == "ok" or _alive(held):
        yield False
        return
    held.parent.mkdir(parents=True, exist_ok=True)
    held.write_text(str(os.getpid()))
    try:
        yield True
    finally:
        held.unlink(missing_ok=True)


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    return True


def pending(cells: list[Cell], records: dict[str, dict], retry_failed: bool) -> list[Cell]:
    """Cells without a record (with ``retry_failed``, also those whose record is an error or timeout)."""
    return [c for c in cells if c.key not in records or (retry_failed and records[c.key]["status"] != "ok")]


def run(cells: list[Cell], out: Path, jobs: int, timeout: float, confirm: bool, retry_failed: bool) -> None:
    """Compiles the pending cells ``jobs`` at a time; each record is appended to ``out`` when it finishes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = Lock()

    def one(cell: Cell) -> None:
        record = run_cell_subprocess(cell, timeout, confirm, out=out)
        if record["status"] == "skipped":  # finished or running under another runner meanwhile
            return
        with lock:
            append_record(out, record)
        print(json.dumps(record), flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, pending(cells, read_results(out), retry_failed)))


def _gib(n: float) -> str:
    return f"{n / GiB:.1f}"


def _pairs(n: float) -> str:
    return f"{n:g}" if n >= 1 else f"{n:.3g}"


def kernel_entry(record: dict | None) -> tuple[str, str]:
    """(peak GiB per device at the smallest batch, max pairs per device) of one kernel's record, as table text."""
    if record is None:
        return "—", "—"
    if (
        "peak_bytes_at_min" not in record
    ):  # stopped for time (a timeout, SIGTERM) before a compile finished, or an error
        stopped = record["status"] == "timeout" or record.get("detail", "").startswith(f"exit -{signal.SIGTERM.value}:")
        return ("—", "—") if stopped else ("error", "error")
    peak = ("≥ " if record["refused_at_min"] else "") + _gib(record["peak_bytes_at_min"])
    if record["max_pairs"] == 0:
        return peak, "0 ✗"
    per_device = lambda pairs: _pairs(pairs / record["devices"])  # noqa: E731
    best, predicted = record["max_pairs"], record["predicted_max_pairs"]
    if record["confirmed"]:
        return peak, per_device(best)
    return peak, f"≥ {per_device(best)}" if predicted is None else f"{per_device(best)} (pred. {per_device(predicted)})"


def mesh_text(record: dict | None, cell: Cell) -> str:
    """``d×f×t×c`` of the context kernel's mesh (from the record, else from the cell's settings)."""
    if record and "mesh" in record:
        m = record["mesh"]
        return f"{m['data']}×{m['fsdp']}×{m['tensor']}×{m['context']}"
    c = context_ways(cell)
    return f"1×{slice_devices(cell.slice) // c}×1×{c}"


def render(records: dict[str, dict], cells: list[Cell] | None = None) -> str:
    """The markdown table: a row per (model, length, slice), per kernel peak GiB / device and max pairs / device."""
    from jaxspo.compile import parse_topology  # here: a cell's child sets libtpu's environment before jax loads

    cells = cells or all_cells()
    rows = sorted(
        {(c.model, c.length, c.slice) for c in cells},
        key=lambda r: (int(r[0][:-1]), r[1], SLICES.index(r[2]) if r[2] in SLICES else 99, r[2]),
    )
    lines = [
        "| model | tokens / seq | slice (devices) | HBM GiB | `xla` peak GiB | `xla` pairs / "
        "device | `splash` peak GiB | `splash` pairs / device"
        " | context mesh d×f×t×c | splash+context peak GiB | splash+context pairs / device |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for model, length, slice_ in rows:
        got = {k: records.get(Cell(model, length, slice_, k).key) for k in KERNELS}
        hbm = f"{parse_topology(slice_).hbm_bytes / GiB:g}"
        entries = [x for k in KERNELS for x in kernel_entry(got[k])]
        context = mesh_text(got["splash+context"], Cell(model, length, slice_, "splash+context"))
        lines.append(
            f"| {MODEL_NAMES[model]} | {length:,} | {slice_} ({slice_devices(slice_)}) | {hbm} | "
            + " | ".join(entries[:4] + [context] + entries[4:])
            + " |"
        )
    return "\n".join(lines)


def write_docs(path: Path, table: str) -> None:
    """Replaces the text between the kernel-fit-table markers of ``path`` with ``table``."""
    text = path.read_text()
    start, end = (text.index(m) for m in MARKERS)
    path.write_text(text[: start + len(MARKERS[0])] + "\n" + table + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_ = commands.add_parser("run", help="compile the pending cells in priority order")
    run_.add_argument("--out", default=DEFAULT_OUT)
    run_.add_argument("--jobs", type=int, default=1, help="cells compiled side by side")
    run_.add_argument("--timeout", type=float, default=2400, help="seconds per cell before it is recorded as a timeout")
    run_.add_argument("--limit", type=int, default=0, help="only the first N cells of the priority order (0 = all)")
    run_.add_argument(
        "--cells", nargs="*", default=[], help="explicit cell keys MODEL/LENGTH/SLICE/KERNEL instead of the order"
    )
    run_.add_argument(
        "--no-confirm", action="store_true", help="keep the affine prediction (marked 'pred.' in the table)"
    )
    run_.add_argument("--retry-failed", action="store_true", help="re-run cells recorded as error or timeout")
    cell_ = commands.add_parser("cell", help="(internal) search one cell in this process; prints its JSON record")
    cell_.add_argument("key")
    cell_.add_argument("--no-confirm", action="store_true")
    cell_.add_argument(
        "--out", default=DEFAULT_OUT, help="skip the cell if this file has its result or another runner holds it"
    )
    render_ = commands.add_parser("render", help="print the markdown table from the results")
    render_.add_argument("--out", default=DEFAULT_OUT)
    render_.add_argument("--docs", default="", help="also write it between the kernel-fit-table markers of this file")
    args = parser.parse_args()
    if args.command == "cell":
        cell = Cell.from_key(args.key)
        with claim(cell, Path(args.out)) as free:
            print(
                json.dumps(
                    search_cell(cell, confirm=not args.no_confirm) if free else {"cell": cell.key, "status": "skipped"}
                )
            )
    elif args.command == "run":
        cells = [Cell.from_key(k) for k in args.cells] if args.cells else all_cells()[: args.limit or None]
        run(cells, Path(args.out), args.jobs, args.timeout, not args.no_confirm, args.retry_failed)
    else:
        table = render(read_results(Path(args.out)))
        if args.docs:
            write_docs(Path(args.docs), table)
        print(table)


if __name__ == "__main__":
    main()
