"""Data: the built-in synthetic task, its tokenizer, row encoding, and JSONL row files.

Row formats are documented in ``jaxspo.data.formats`` (TRL standard / conversational / ranked rows),
``jaxspo.data.synthetic`` (the task's fields) and ``jaxspo.data.encode`` (arrays); where rows come from in
``jaxspo.data.sources``; chat templates in ``jaxspo.data.chat``; length buckets in
``jaxspo.data.bucketing``; the training batch pipeline (grain) in ``jaxspo.data.pipeline``; TFDS builders in
``jaxspo.data.tfds_builders``.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jaxspo.data.files import read_json_lines
from jaxspo.data.synthetic_config import GOLD_DIMENSIONS, SyntheticTaskConfig

# loaded on first use (they import numpy, tokenizers and transformers): name → module
_LAZY = {
    "SyntheticTask": "synthetic",
    "build_synthetic_task": "synthetic",
    "gold_rewards": "synthetic",
    "labelled_reward": "synthetic",
    "build_task_tokenizer": "tokenizer",
    "decode_responses": "encode",
    "encode_preference_rows": "encode",
    "encode_prompts": "encode",
    "encode_sft_rows": "encode",
}

__all__ = [
    "GOLD_DIMENSIONS",
    "SyntheticTask",
    "SyntheticTaskConfig",
    "build_synthetic_task",
    "build_task_tokenizer",
    "decode_responses",
    "encode_preference_rows",
    "encode_prompts",
    "encode_sft_rows",
    "gold_rewards",
    "labelled_reward",
    "read_jsonl",
    "write_jsonl",
]


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Writes one JSON object per line (UTF-8), creating parent directories; NaN/inf are rejected."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for index, row in enumerate(rows):
            try:
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: row {index} is not JSON-serialisable: {err}") from err


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Reads one JSON object per line (the file may be gzip/bzip2/xz/zstd-compressed), skipping blank lines;
    a bad line raises DataError naming file:line."""
    return read_json_lines(path)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'jaxspo.data' has no attribute '{name}'")
    return getattr(importlib.import_module(f"jaxspo.data.{_LAZY[name]}"), name)
