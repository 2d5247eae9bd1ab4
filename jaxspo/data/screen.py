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

    def skip(self, reason: str, example: str) -> None:
        """Counts one left-out row (or unreadable line) under ``reason``; keeps the first few full messages."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(example)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _reason(message: str) -> str:
    """The message without row-specific values: a stable key for counting."""
    return re.sub(r"\d+", "N", re.sub(r",? got .*$", "", message))


def encode_screened(
    rows: Sequence[Any],
    encode: Encoder,
    source: str,
    on_bad_row: str,
    report: DataReport | None = None,
    hint: str = "fix or delete the row, or set data.on_bad_row=skip to leave such rows out",
) -> tuple[dict[str, np.ndarray], DataReport]:
    """Encodes ``rows``; a bad row raises :class:`DataError` ("error", ending with ``hint``: what to do) or is
    dropped and counted ("skip").

    ``report``: the source's report so far (the reader's left-out lines); its ``rows`` count grows by ``rows``.
    No row left to encode is a DataError naming the source.
    """
    report = report or DataReport(source=source)
    read = report.rows + len(rows)
    report.rows = read
    if not rows and not report.skipped:
        raise DataError(
            f"{source}: holds no rows (an empty file or split); give it rows (JSON lines: one object per line)"
        )
    try:
        arrays = encode(rows) if rows else None
    except ValueError:
        arrays = None  # find the bad rows one by one
    if arrays is not None:
        report.kept = len(rows)
        return arrays, report
    good = []
    for i, row in enumerate(rows):
        try:
            encode([row])
        except ValueError as err:
            message = re.sub(r"^row 0: ", "", str(err))
            if on_bad_row == "error":
                raise DataError(f"{source}, row {i}: {message}; {hint}") from None
            report.skip(_reason(message), f"row {i}: {message}")
            continue
        good.append(row)
    if not good:
        raise DataError(
            f"{source}: all {read} rows are malformed, e.g. {report.examples[0]}; fix the data "
            "(data_report.json counts every reason)"
        )
    report.kept = len(good)
    return encode(good), report


def write_reports(reports: Sequence[DataReport], path: Path) -> None:
    """``data_report.json``: per source, rows read, kept, and skipped by reason."""
    path.write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n")
