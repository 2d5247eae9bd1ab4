"""The shared TFDS builder: reads the files a user downloaded into the manual dir, writes ArrayRecord.

No network and no TensorFlow: ``tensorflow-datasets`` writes ``array_record`` shards with its own
protobuf serializer, and :func:`jaxspo.data.sources.read_split` reads them back with
``tfds.data_source``. A subclass names its split files (globs under the manual dir) and converts one
upstream row into one canonical example (:mod:`jaxspo.data.formats`), or raises ``Rejected(reason)``;
rejected rows are counted per split and reason in ``builder.rejected``.
"""

from __future__ import annotations

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
    """An upstream row that cannot become a preference pair; the message is the counted reason."""


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, row) of a ``.parquet`` file or of a JSON-lines file (``.jsonl`` / ``.json``, plain or
    gzip / bzip2 / xz / zstd-compressed); a line that is not UTF-8, not JSON or not an object is a Rejected."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            yield from enumerate(pq.read_table(path).to_pylist())
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err}); download it again") from None
        return
    for number, row in json_lines(path):
        yield number - 1, Rejected(row.reason) if isinstance(row, BadLine) else row


class PreferenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of jaxspo's builders (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    # No checksums file next to the code (nothing is downloaded). Also sidesteps TFDS 4.9.10 resolving a
    # packaged builder's code path through the ``importlib_resources`` backport, absent on Python ≥ 3.9.
    code_path = None
    SPLIT_FILES: dict[str, tuple[str, ...]] = {}  # split → globs under the manual dir
    HOMEPAGE = ""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self.rejected: dict[str, dict[str, int]] = {}

    def features(self) -> dict[str, Any]:
        raise NotImplementedError

    def convert(self, row: Any, split: str) -> dict[str, Any] | None:
        """One upstream row → one example, ``None`` to leave it out silently (not part of ``split``), or
        :class:`Rejected`."""
        raise NotImplementedError

    def rows(self, files: list[Path], split: str) -> Iterator[tuple[str, Any]]:
        """(key, upstream row) pairs of ``split``; a subclass may pair rows up (HelpSteer2)."""
        for path in files:
            for number, row in read_rows(path):
                yield f"{path}:{number}", row

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, features=tfds.features.FeaturesDict(self.features()), homepage=self.HOMEPAGE
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        manual = Path(dl_manager.manual_dir)
        generators = {}
        for split, globs in self.SPLIT_FILES.items():
            files = sorted({p for g in globs for p in manual.glob(g)})
            if files:
                generators[split] = self._generate_examples(files=files, split=split)
        if not generators:
            wanted = {s: list(g) for s, g in self.SPLIT_FILES.items()}
            raise DataError(f"{manual}: none of the expected files of {self.name} ({wanted}); {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return generators

    def _generate_examples(self, files: list[Path], split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        counts = self.rejected.setdefault(split, {})
        yielded = 0
        for key, row in self.rows(files, split):
            try:
                if isinstance(row, Exception):
                    raise row
                example = self.convert(row, split)
            except (Rejected, ValueError, KeyError, TypeError) as err:
                reason = str(err) if isinstance(err, Rejected) else f"{type(err).__name__}: {err}"
                counts[reason] = counts.get(reason, 0) + 1
                continue
            if example is not None:
                yielded += 1
                yield key, example
        if not yielded:
            names = ", ".join(str(f) for f in files)
            why = f"rejected: {counts}" if counts else "none of their rows belongs to this split"
            raise DataError(f"{names}: no example for split '{split}' of {self.name} ({why}); check these are {self.name}'s files as published. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
