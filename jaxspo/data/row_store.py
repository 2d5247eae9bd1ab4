"""Encoded rows on local disk: each column written once as ``.npy`` and memory-mapped read-only.

After :func:`spill` a process's memory holds only the pages of the rows it reads — the training
pipeline (:mod:`jaxspo.data.pipeline`) reads just this process's rows of each batch — instead of
every encoded row. The files are unlinked as soon as they are mapped (Linux keeps a mapped file until
it is unmapped), so nothing is left behind, even after a crash.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def spill(arrays: Mapping[str, np.ndarray], directory: str | Path, name: str) -> dict[str, np.ndarray]:
    """``arrays`` (equal-length columns) as read-only memory maps of files written under ``directory``.

    ``name`` prefixes the temporary folder (e.g. the split). The caller drops its in-memory arrays.
    """
    root = Path(directory).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"jaxspo-{name}-", dir=root))
    try:
        mapped = {}
        for column, array in arrays.items():
            path = folder / f"{column}.npy"
            np.save(path, np.asarray(array))
            mapped[column] = np.load(path, mmap_mode="r")
        return mapped
    finally:
        shutil.rmtree(folder)
