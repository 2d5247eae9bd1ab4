"""The shared TFDS builder: reads the files a user downloaded into the manual dir, writes ArrayRecord.

No network and no TensorFlow: ``tensorflow-datasets`` writes ``array_record`` shards with its own
protobuf serializer, and :func:`jaxspo.data.sources.read_split` reads them back with
``tfds.data_source``. A subclass lists the :class:`Layout` s its dataset is published in (the raw files,
the hub's Parquet files and conversions; found at any depth below the manual dir, so a whole-repository
download works), the :class:`SideFile` s of the same repository that are not preference pairs (refused
with one line), and converts one upstream row into one canonical example (:mod:`jaxspo.data.formats`),
or raises ``Rejected(reason)``; rejected rows are counted per split and reason in ``builder.rejected``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxspo.data.files import BadLine, json_lines
from jaxspo.errors import DataError

TEXT = tfds.features.Text()


def messages_feature() -> tfds.features.Sequence:
    """A conversation: a sequence of ``{"role", "content"}`` messages."""
    return tfds.features.Sequence({"role": tfds.features.Text(), "content": tfds.features.Text()})


def scores_feature(dimensions: tuple[str, ...]) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({d: np.float32 for d in dimensions})


class Rejected(ValueError):
    """An upstream row that cannot become a preference pair; the message is the counted reason, starting
    with its kind: ``tie:`` (no preference), ``invalid:`` (not a usable pair) or ``contradictory:``."""


def bradley_terry(margin: float, temperature: float) -> float:
    """p̂ = σ(margin / temperature): the Bradley–Terry probability that chosen beats rejected, for a
    preference ``margin`` in the dataset's own units (score points, strength levels)."""
    return 0.5 * (1.0 + math.tanh(margin / (2.0 * temperature)))


EMPTY_RESPONSE = "invalid: empty or whitespace-only response"
IDENTICAL_RESPONSES = "tie: chosen and rejected are identical"


def check_responses(chosen: Any, rejected: Any) -> None:
    """Rejected unless both responses are non-blank text and differ (ignoring surrounding whitespace)."""
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise Rejected("invalid: a response is not text")
    if not chosen.strip() or not rejected.strip():
        raise Rejected(EMPTY_RESPONSE)
    if chosen.strip() == rejected.strip():
        raise Rejected(IDENTICAL_RESPONSES)


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way a dataset is published: split → file globs, matched at any depth below the manual dir."""

    name: str
    splits: dict[str, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class SideFile:
    """A file of the dataset's repository that holds no preference pairs: found by name (``globs``) when no
    pair file is there, or by its columns (all of ``columns`` present) where a pair file was expected."""

    what: str  # e.g. "HH-RLHF's red-team attempts (whole transcripts with harm ratings)"
    globs: tuple[str, ...] = ()
    columns: frozenset[str] = frozenset()


DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
COMPRESSED_SUFFIXES = ("", ".gz", ".bz2", ".xz", ".zst")


def find_files(root: Path, pattern: str) -> list[Path]:
    """Data files matching ``pattern`` at any depth below ``root``; hidden folders (download caches and
    their ``.metadata`` / ``.lock`` files) and names without a data suffix are skipped."""
    found = []
    for path in root.glob(f"**/{pattern}"):
        relative = path.relative_to(root).parts
        if any(part.startswith(".") for part in relative) or not path.is_file():
            continue
        if any(path.name.endswith(data + packed) for data in DATA_SUFFIXES for packed in COMPRESSED_SUFFIXES):
            found.append(path)
    return found


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, row) of a ``.parquet`` file or of a JSON-lines file (``.jsonl`` / ``.json``, plain or
    gzip / bzip2 / xz / zstd-compressed); a line that is not UTF-8, not JSON or not an object is a Rejected."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err}); download it again") from None
        yield from enumerate(table.to_pylist())
        return
    try:
        for number, row in json_lines(path):
            yield number - 1, Rejected(f"invalid: line {row.reason}") if isinstance(row, BadLine) else row
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err}); check the file and its permissions") from None


class PreferenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of jaxspo's builders (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    # No checksums file next to the code (nothing is downloaded). Also sidesteps TFDS 4.9.10 resolving a
    # packaged builder's code path through the ``importlib_resources`` backport, absent on Python ≥ 3.9.
    code_path = None
    LAYOUTS: tuple[Layout, ...] = ()  # in order of preference: the first one found is read, the others not
    SIDE_FILES: tuple[SideFile, ...] = ()
    PAIR_COLUMNS: frozenset[str] = frozenset()  # the columns every pair file has
    HOMEPAGE = ""
    SOFT_LABEL = ""  # the formula of the emitted ``soft_label`` (empty: the dataset carries no graded preference)

    def __init__(self, soft_label_temperature: float = 1.0, **kwargs: Any):
        """``soft_label_temperature`` τ > 0 of :attr:`SOFT_LABEL`; the other arguments are TFDS'."""
        if not (
            isinstance(soft_label_temperature, (int, float))
            and soft_label_temperature > 0
            and math.isfinite(soft_label_temperature)
        ):
            raise ValueError(f"soft_label_temperature must be a finite number > 0, got {soft_label_temperature!r}")
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self.soft_label_temperature = float(soft_label_temperature)
        self.rejected: dict[str, dict[str, int]] = {}

    def soft_label(self, margin: float) -> float:
        """:func:`bradley_terry` of ``margin`` at this builder's temperature."""
        return bradley_terry(margin, self.soft_label_temperature)

    def features(self) -> dict[str, Any]:
        raise NotImplementedError

    def convert(self, row: Any, split: str) -> dict[str, Any] | None:
        """One upstream row → one example, ``None`` to leave it out silently (not part of ``split``), or
        :class:`Rejected`."""
        raise NotImplementedError

    def rows(self, files: list[Path], split: str) -> Iterator[tuple[str, Any]]:
        """(key, upstream row) pairs of ``split``; a subclass may pair rows up (HelpSteer2). The first row of
        each file must have :attr:`PAIR_COLUMNS` (else the file is refused, see :meth:`refuse`)."""
        for path in files:
            first = True
            for number, row in read_rows(path):
                if first and isinstance(row, dict):
                    self.refuse(path, set(row))
                    first = False
                yield f"{path}:{number}", row

    def refuse(self, path: Path, columns: set[str]) -> None:
        """DataError unless ``columns`` holds :attr:`PAIR_COLUMNS`; names the side file it is, if known."""
        if self.PAIR_COLUMNS <= columns:
            return
        side = next((f for f in self.SIDE_FILES if f.columns and f.columns <= columns), None)
        if side is not None:
            raise DataError(
                f"{path}: this is {side.what}, not {self.name} preference pairs; {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        missing = ", ".join(sorted(self.PAIR_COLUMNS - columns))
        raise DataError(
            f"{path}: lacks the column(s) {missing} of {self.name} preference pairs (it has "
            f"{', '.join(sorted(columns))}); {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(self.features()),
            homepage=self.HOMEPAGE,
        )

    def find_layout(self, manual: Path) -> tuple[Layout, dict[str, list[Path]]]:
        """The first of :attr:`LAYOUTS` with files below ``manual`` and its files per split; a DataError
        naming the side files found (or the files expected) when there is none."""
        for layout in self.LAYOUTS:
            files = {
                split: sorted({p for g in globs for p in find_files(manual, g)})
                for split, globs in layout.splits.items()
            }
            if any(files.values()):
                return layout, {split: found for split, found in files.items() if found}
        for side in self.SIDE_FILES:
            found = sorted({p for g in side.globs for p in find_files(manual, g)})
            if found:
                raise DataError(
                    f"{found[0]}: this is {side.what}, not {self.name} preference pairs; "
                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
                )
        wanted = "; ".join(
            f"{layout.name}: {', '.join(sorted({g for gs in layout.splits.values() for g in gs}))}"
            for layout in self.LAYOUTS
        )
        raise DataError(
            f"{manual}: none of the expected files of {self.name} ({wanted}); {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        _, files = self.find_layout(Path(dl_manager.manual_dir))
        return {split: self._generate_examples(files=found, split=split) for split, found in files.items()}

    def _generate_examples(self, files: list[Path], split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        counts = self.rejected.setdefault(split, {})
        yielded = 0
        for key, row in self.rows(files, split):
            try:
                if isinstance(row, Exception):
                    raise row
                example = self.convert(row, split)
            except (Rejected, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
                reason = str(err) if isinstance(err, Rejected) else f"invalid: {type(err).__name__}: {err}"
                counts[reason] = counts.get(reason, 0) + 1
                continue
            if example is not None:
                yielded += 1
                yield key, example
        if not yielded:
            names = ", ".join(str(f) for f in files)
            why = f"rejected: {counts}" if counts else "none of their rows belongs to this split"
            raise DataError(
                f"{names}: no example for split '{split}' of {self.name} ({why}); check these are "
                f"{self.name}'s files as published. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
