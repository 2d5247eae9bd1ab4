"""Plain settings of the ``data`` section: the readers (``data.source``) and the row layouts (``data.layout``).

No numpy here, so reading a config stays light; the readers are in :mod:`jaxspo.data.sources`, the layouts in
:mod:`jaxspo.data.layout`.
"""

from __future__ import annotations

import dataclasses

LAYOUTS = ("padded", "packed")  # data.layout: pair rows as (chosen, rejected), or the prompt once per pair
KINDS = ("synthetic", "jsonl", "parquet", "hf_disk", "tfds")


@dataclasses.dataclass
class SourceConfig:
    """``data.source``: the reader and where its files are (see the docstring of ``jaxspo/data/sources.py``)."""

    kind: str = "synthetic"  # synthetic | jsonl | parquet | hf_disk | tfds
    path: str = ""  # jsonl/parquet: file pattern with {split}; hf_disk: folder; tfds: data dir ("" = default)
    name: str = ""  # tfds: the dataset name, e.g. hh_rlhf or hh_rlhf/helpful-base
    train_split: str = "train"
    eval_split: str = "test"
    fields: dict[str, str] = dataclasses.field(default_factory=dict)  # canonical name -> column name

    def validate(self) -> None:
        """Raises ValueError naming the first bad key."""
        if self.kind not in KINDS:
            raise ValueError(f"data.source.kind must be one of {list(KINDS)}, got '{self.kind}'")
        if self.kind in ("jsonl", "parquet", "hf_disk") and not self.path:
            raise ValueError(f"data.source.path is required for data.source.kind={self.kind}")
        if self.kind in ("jsonl", "parquet") and "{split}" not in self.path:
            raise ValueError(
                f"data.source.path must contain '{{split}}' (e.g. data/{{split}}.{self.kind}), got '{self.path}'"
            )
        if self.kind == "tfds" and not self.name:
            raise ValueError("data.source.name is required for data.source.kind=tfds (e.g. hh_rlhf)")
