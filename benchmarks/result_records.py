"""The results file of benchmarks/compile_table.py: one JSON record per line, appended as cells finish."""

from __future__ import annotations

import json
from pathlib import Path


def read_results(path: Path) -> dict[str, dict]:
    """The latest record per cell key from a JSON-lines file (a missing file is empty; a cut line is skipped)."""
    records: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("status") != "skipped":
                records[record["cell"]] = record
    return records


def append_record(path: Path, record: dict) -> None:
    """Appends ``record`` as one JSON line, on a fresh line even if the file ends in a line cut short."""
    cut = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a") as f:
        f.write(("\n" if cut else "") + json.dumps(record) + "\n")


def last_json_record(output: str) -> dict | None:
    """The last line of ``output`` that is JSON (a cell's child prints a partial record after each compile)."""
    for line in reversed(output.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None
