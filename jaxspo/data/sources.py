"""Where preference rows come from: the built-in task, JSONL, Parquet, a saved HF ``datasets`` folder, or TFDS.

``data.source.kind`` picks the reader; ``train_split`` / ``eval_split`` name the splits to read; the SFT
warm start of an external source trains on the train split's chosen responses. ``fields`` renames
columns to the canonical names of :mod:`jaxspo.data.formats` (``{prompt: question, chosen: answer_a}``).
Readers return plain rows; checking them is the encoders' job, so a bad row is reported by
:func:`jaxspo.data.screen.encode_screened` as ``<file or dataset:split>, row <i>: <what is wrong>``.

- ``jsonl`` / ``parquet``: ``path`` is a file pattern with ``{split}`` (``data/{split}.jsonl``).
- ``hf_disk``: ``path`` is a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` with one
  sub-folder per split, or a single ``Dataset``, used for every split); its Arrow files are read with
  pyarrow — the ``datasets`` package is not needed.
- ``tfds``: ``name`` is a prepared TFDS dataset (e.g. ``hh_rlhf``, built by ``jaxspo data prepare``) in
  the data dir ``path`` (``""`` = TFDS' default); read through ``tfds.data_source`` (ArrayRecord,
  random access, no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxspo.data.files import SkipLine, read_json_lines
from jaxspo.data.screen import DataReport
from jaxspo.data.settings import SourceConfig
from jaxspo.errors import DataError


@dataclasses.dataclass
class Splits:
    """Rows of the run's splits ("sft", "train", "eval"), the name each is reported under, and the gold
    reward function (the built-in task only; None for external data)."""

    rows: dict[str, list[Any]]
    names: dict[str, str]
    gold_rewards: Callable[[str, str], dict[str, float]] | None = None
    dimensions: tuple[str, ...] = ()
    reports: dict[str, DataReport] = dataclasses.field(default_factory=dict)  # split → lines left out while reading


def _plain(value: Any) -> Any:
    """TFDS / Arrow values → JSON-like Python: bytes → str, arrays → lists, a columnar message
    sequence ``{"role": [...], "content": [...]}`` → a list of messages."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype == object or value.ndim else value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        value = {k: _plain(v) for k, v in value.items()}
        if set(value) == {"role", "content"} and isinstance(value["role"], list):
            return [{"role": r, "content": c} for r, c in zip(value["role"], value["content"])]
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read_parquet(path: Path) -> list[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err}); check data.source.kind and the file") from None


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err}); save the dataset again with save_to_disk") from None


def _read_hf_disk(folder: Path, split: str) -> tuple[str, list[Any]]:
    """Rows of one split of a ``save_to_disk`` folder (Arrow IPC stream files listed in state.json)."""
    import pyarrow as pa

    split_dir = folder / split if (folder / "dataset_dict.json").is_file() else folder
    state_file = split_dir / "state.json"
    if not state_file.is_file():
        splits = _json_file(folder / "dataset_dict.json") if (folder / "dataset_dict.json").is_file() else None
        available = splits.get("splits") if isinstance(splits, dict) else None
        raise DataError(
            f"{split_dir}: not a saved datasets split (no state.json); splits: {available}; set "
            "data.source.train_split / eval_split to one of them"
        )
    state = _json_file(state_file)
    try:
        files = [split_dir / f["filename"] for f in state["_data_files"]]
    except (KeyError, TypeError):
        raise DataError(f"{state_file}: lists no '_data_files'; save the dataset again with save_to_disk") from None
    rows: list[Any] = []
    for file in files:
        try:
            with pa.memory_map(str(file)) as stream:
                rows += pa.ipc.open_stream(stream).read_all().to_pylist()
        except (pa.ArrowException, OSError) as err:
            raise DataError(
                f"{file}: not a readable Arrow file ({err}); save the dataset again with save_to_disk"
            ) from None
    return str(split_dir), rows


def _read_tfds(name: str, data_dir: str, split: str) -> list[Any]:
    import tensorflow_datasets as tfds

    import jaxspo.data.tfds_builders  # noqa: F401  (registers jaxspo's builders)

    try:
        source = tfds.data_source(
            name, split=split, data_dir=str(Path(data_dir).expanduser()) if data_dir else None, download=False
        )
    except (
        tfds.core.registered.DatasetNotFoundError,
        AssertionError,
        ValueError,
        KeyError,
    ) as err:  # not registered / not prepared / no such split
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"{name}:{split} in {data_dir or 'the TFDS data dir'}: cannot be read ({message}); "
            f"prepare it first (jaxspo data prepare {name.split('/')[0]} --manual-dir DIR) and check the split name"
        ) from None
    return [_plain(source[i]) for i in range(len(source))]


def read_split(source: SourceConfig, split: str, skip: SkipLine | None = None) -> tuple[str, list[Any]]:
    """(name used in error messages, rows) of one split, columns renamed by ``source.fields``.

    A JSON-lines line that cannot be read raises DataError naming file:line, or with ``skip`` is passed to it
    and left out. Files may be compressed (:func:`jaxspo.data.files.open_data`).
    """
    if source.kind in ("jsonl", "parquet"):
        path = Path(source.path.format(split=split)).expanduser()
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise DataError(
                f"{path}: {what} (data.source.path for split '{split}'); set data.source.path to a file "
                f"pattern with {{split}} that names existing files"
            )
        if source.kind == "jsonl":
            rows = read_json_lines(
                path, skip, hint="fix or delete the line, or set data.on_bad_row=skip to leave such lines out"
            )
        else:
            rows = _read_parquet(path)
        name = str(path)
    elif source.kind == "hf_disk":
        name, rows = _read_hf_disk(Path(source.path).expanduser(), split)
    elif source.kind == "tfds":
        name, rows = f"{source.name}:{split}", _read_tfds(source.name, source.path, split)
    else:
        raise ValueError(f"read_split: kind '{source.kind}' has no files")  # callers check the kind: a bug
    if source.fields:
        renames = {column: canonical for canonical, column in source.fields.items()}
        rows = [{renames.get(k, k): v for k, v in row.items()} if isinstance(row, Mapping) else row for row in rows]
    return name, rows


def load_splits(source: SourceConfig, task: Any, task_name: str = "synthetic", on_bad_row: str = "error") -> Splits:
    """The run's splits: the built-in ``task``'s, or ``train_split`` / ``eval_split`` of ``source``
    (SFT rows = the train pairs' prompts and chosen responses). With ``on_bad_row`` "skip", unreadable lines
    are left out and counted in ``Splits.reports``."""
    if source.kind == "synthetic":
        return Splits(task.splits, {s: f"{task_name}:{s}" for s in task.splits}, task.gold_rewards, task.dimensions)
    from jaxspo.data.formats import sft_rows_from_pairs

    reports = {}
    rows, names = {}, {}
    for split, name in (("train", source.train_split), ("eval", source.eval_split)):
        report = DataReport(source="")
        names[split], rows[split] = read_split(source, name, report.skip if on_bad_row == "skip" else None)
        report.source, report.rows = names[split], sum(report.skipped.values())
        reports[split] = report
    return Splits(
        {"sft": sft_rows_from_pairs(rows["train"]), **rows},
        {"sft": f"{names['train']} (chosen as SFT)", **names},
        reports=reports,
    )
