"""Bad-row policy: reject a malformed row with an error naming source, row and field, or skip and count it.

Every check lives in the encoders (:mod:`jaxspo.data.encode`); this module applies them row by row only
when the whole batch fails, so clean data costs one vectorised encode.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxspo.errors import DataError

Encoder = Callable[[Sequence[Mapping[str, Any]]], dict[str, np.ndarray]]


@dataclasses.dataclass
class DataReport:
    """What happened to one source's rows."""

    source: str
    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason → count
    examples: list[str] = dataclasses.field(default_factory=list)  # first few full messages

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _reason(message: str) -> str:
    """The message without row-specific values: a stable key for counting."""
    return re.sub(r"\d+", "N", re.sub(r",? got .*$", "", message))


def encode_screened(rows: Sequence[Any], encode: Encoder, source: str, on_bad_row: str) -> tuple[dict[str, np.ndarray], DataReport]:
    """Encodes ``rows``; a bad row raises :class:`DataError` ("error") or is dropped and counted ("skip")."""
    report = DataReport(source=source, rows=len(rows))
    try:
        arrays = encode(rows)
        report.kept = len(rows)
        return arrays, report
    except ValueError:
        pass  # find the bad rows one by one
    good = []
    for i, row in enumerate(rows):
        try:
            encode([row])
        except ValueError as err:
            message = re.sub(r"^row 0: ", "", str(err))
            if on_bad_row == "error":
                raise DataError(f"{source}, row {i}: {message}") from None
            reason = _reason(message)
            report.skipped[reason] = report.skipped.get(reason, 0) + 1
            if len(report.examples) < 10:
                report.examples.append(f"row {i}: {message}")
            continue
        good.append(row)
    if not good:
        raise DataError(f"{source}: all {len(rows)} rows are malformed, e.g. {report.examples[0]}")
    report.kept = len(good)
    return encode(good), report


def write_reports(reports: Sequence[DataReport], path: Path) -> None:
    """``data_report.json``: per source, rows read, kept, and skipped by reason."""
    path.write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n")
