"""``jaxspo data prepare NAME --manual-dir DIR [--data-dir DIR] [--soft-label-temperature T]``: build one TFDS
dataset and summarise it.

The summary gives rows per split, length statistics (characters of prompt, chosen and rejected; a
conversation counts its message contents) and the upstream rows that were rejected, by reason. The
rejections are also written next to the dataset (``rejected.json``), so preparing again (a no-op for
TFDS) still reports them. A builder that emits ``soft_label`` records its formula and temperature in
``soft_label.json`` there too; preparing the same version again with another temperature is refused (TFDS
would keep the old labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxspo.data.sources import SourceConfig, read_split
from jaxspo.errors import DataError, UsageError


def _chars(value: Any) -> int:
    return sum(len(m["content"]) for m in value) if isinstance(value, list) else len(value)


def prepare(name: str, manual_dir: str, data_dir: str = "", soft_label_temperature: float = 1.0) -> dict[str, Any]:
    """Builds ``name`` (``builder`` or ``builder/config``) from ``manual_dir`` into ``data_dir`` (TFDS'
    default when empty), soft labels at ``soft_label_temperature``, and returns the summary as a dict."""
    import tensorflow_datasets as tfds

    from jaxspo.data.tfds_builders import BUILDERS

    builder_name, _, config = name.partition("/")
    if builder_name not in BUILDERS:
        raise UsageError(
            f"jaxspo data prepare {name}: unknown dataset '{builder_name}'; available: {', '.join(sorted(BUILDERS))}"
        )
    configs = [c.name for c in BUILDERS[builder_name].BUILDER_CONFIGS]
    if config and config not in configs:
        raise UsageError(
            f"jaxspo data prepare {name}: {builder_name} has no config '{config}'; available: "
            f"{', '.join(configs) or 'none'}"
        )
    if not Path(manual_dir).is_dir() or not any(Path(manual_dir).iterdir()):
        raise DataError(
            f"{manual_dir}: --manual-dir is not a folder with files; "
            f"{BUILDERS[builder_name].MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    if not soft_label_temperature > 0:
        raise UsageError(
            f"jaxspo data prepare {name}: --soft-label-temperature must be > 0, got "
            f"{soft_label_temperature}; give a positive number (1 = the default)"
        )
    builder = BUILDERS[builder_name](
        config=config or None, data_dir=data_dir or None, soft_label_temperature=soft_label_temperature
    )
    soft = _check_soft_label_record(builder, name)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    if soft:
        (Path(builder.data_dir) / SOFT_LABEL_RECORD).write_text(json.dumps(soft, indent=2, ensure_ascii=False) + "\n")
    record = Path(builder.data_dir) / "rejected.json"
    if builder.rejected:
        record.write_text(json.dumps(builder.rejected, indent=2) + "\n")
    rejected = json.loads(record.read_text()) if record.is_file() else {}
    splits = {}
    for split in builder.info.splits:
        _, rows = read_split(
            SourceConfig(kind="tfds", name=builder.info.full_name.rsplit("/", 1)[0], path=data_dir), split
        )
        stats = {}
        for field in ("prompt", "chosen", "rejected"):
            lengths = np.array([_chars(r[field]) for r in rows]) if rows else np.zeros(1)
            stats[field] = {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())}
        splits[split] = {"rows": len(rows), "chars": stats, "rejected": rejected.get(split, {})}
    return {"name": builder.info.full_name, "data_dir": str(builder.data_dir), "splits": splits} | (
        {"soft_label": soft} if soft else {}
    )


SOFT_LABEL_RECORD = "soft_label.json"


def _check_soft_label_record(builder: Any, name: str) -> dict[str, Any]:
    """The builder's soft-label mapping (formula, temperature; {} if it emits none); a UsageError if the
    dataset was already prepared here with another one."""
    if not builder.SOFT_LABEL:
        return {}
    soft = {"formula": builder.SOFT_LABEL, "temperature": builder.soft_label_temperature}
    record = Path(builder.data_dir) / SOFT_LABEL_RECORD
    if record.is_file():
        earlier = json.loads(record.read_text())
        if earlier != soft:
            raise UsageError(
                f"jaxspo data prepare {name}: {builder.data_dir} holds soft labels {earlier['formula']} "
                f"at τ = {earlier['temperature']}, "
                f"not τ = {soft['temperature']}; give another --data-dir or delete that folder to prepare again"
            )
    return soft


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines of :func:`prepare`'s summary."""
    lines = [
        f"{summary['name']} → {summary['data_dir']}",
        "",
        "| split | rows | prompt chars min/mean/max | chosen | rejected | rows rejected |",
        "|---|---:|---|---|---|---:|",
    ]
    for split, s in summary["splits"].items():
        cells = [
            f"{c['min']}/{c['mean']:.0f}/{c['max']}" for c in (s["chars"][f] for f in ("prompt", "chosen", "rejected"))
        ]
        lines.append(f"| {split} | {s['rows']} | {' | '.join(cells)} | {sum(s['rejected'].values())} |")
    if "soft_label" in summary:
        lines += ["", f"soft_label = {summary['soft_label']['formula']}, τ = {summary['soft_label']['temperature']:g}"]
    reasons = [(split, reason, n) for split, s in summary["splits"].items() for reason, n in s["rejected"].items()]
    if reasons:
        lines += ["", "rejected upstream rows:"] + [f"  {split}: {n} × {reason}" for split, reason, n in reasons]
    return "\n".join(lines)
