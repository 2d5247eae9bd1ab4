"""Opening data files: gzip, bzip2, xz and zstd are decompressed transparently (recognised by their first
bytes, whatever the file's name), and JSON-lines files are read line by line with each bad line named.

:func:`open_data` is the one opener every data reader uses; :func:`read_json_lines` turns a file into
rows, reporting a line that is not UTF-8, not JSON or not an object as ``<file>:<line>: <what>`` — raised
as :class:`DataError`, or, when the caller passes a ``skip`` callback (``data.on_bad_row: skip``), handed
to it and left out.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import json
import lzma
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from jaxspo.errors import DataError

_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_OPENERS: dict[str, Callable[[Path], IO[bytes]]] = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}

# what a reader does with one unreadable line: raise, or (skip) count the reason and go on
SkipLine = Callable[[str, str], None]  # (reason without the line's own values, full message)


def compression(path: str | os.PathLike[str]) -> str:
    """ "gzip", "bzip2", "xz", "zstd" or "" (plain), from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), "")


def _open_zstd(path: Path) -> IO[bytes]:
    try:
        import zstandard
    except ImportError:
        raise DataError(
            f"{path}: zstd-compressed, and the zstandard package is not installed; pip install "
            "zstandard, or decompress it (zstd -d)"
        ) from None
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))


def open_data(path: str | os.PathLike[str]) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip, bzip2, xz or zstd (zstd needs the zstandard package)."""
    path = Path(path)
    kind = compression(path)
    if kind == "zstd":
        return _open_zstd(path)
    return _OPENERS[kind](path) if kind else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes) of the decompressed file; a damaged archive is a DataError naming it."""
    with open_data(path) as raw:
        number = 0
        try:
            for number, line in enumerate(raw, start=1):
                yield number, line
        except (OSError, EOFError, lzma.LZMAError) as err:  # how gzip, bz2 and xz report a damaged or cut stream
            raise DataError(
                f"{path}: the compressed data is damaged after line {number} ({err}); download or "
                "compress the file again"
            ) from None


@dataclasses.dataclass(frozen=True)
class BadLine:
    """A line of a JSON-lines file that is not UTF-8, not JSON or not a JSON object."""

    reason: str  # the kind of problem, without the line's own values: a stable key for counting
    detail: str  # the full message


def json_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(1-based line number, JSON object or :class:`BadLine`) of each non-blank line of the file."""
    for number, raw in _lines(Path(path)):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            yield (
                number,
                BadLine(
                    "not UTF-8 text",
                    f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}; is the file "
                    "compressed or binary?)",
                ),
            )
        except json.JSONDecodeError as err:
            yield number, BadLine("invalid JSON", f"invalid JSON: {err.msg} (column {err.colno})")
        else:
            yield (
                number,
                row
                if isinstance(row, dict)
                else BadLine("not a JSON object", f"expected a JSON object, got {type(row).__name__}"),
            )


def read_json_lines(
    path: str | os.PathLike[str], skip: SkipLine | None = None, hint: str = "fix or delete the line"
) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (blank lines ignored); see the module docstring for bad lines.
    ``hint`` ends the error: what the user can do."""
    rows = []
    for number, row in json_lines(path):
        if not isinstance(row, BadLine):
            rows.append(row)
        elif skip is None:
            raise DataError(f"{path}:{number}: {row.detail}; {hint}")
        else:
            skip(f"line: {row.reason}", f"line {number}: {row.detail}")
    return rows
