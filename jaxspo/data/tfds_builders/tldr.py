"""The TFDS builder of OpenAI's TL;DR summarisation comparisons (see :class:`TldrComparisons`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxspo.data.tfds_builders.base import (
    TEXT,
    Layout,
    PreferenceBuilder,
    Rejected,
    SideFile,
    check_responses,
)
from jaxspo.data.tfds_builders.builders import canonical_pair


class TldrComparisons(PreferenceBuilder):
    """OpenAI summarize-from-feedback comparisons (Stiennon et al. 2020), TL;DR Reddit posts: two
    summaries, ``choice`` the labeller's pick. Standard text format: the prompt ends in ``TL;DR:`` and each
    completion is ``" " + summary``.

    Rules and their source (the authors' repository README):
    - ``split`` is ``train``, ``valid1`` or ``valid2`` → ``train`` and ``validation`` (``valid1`` + ``valid2``);
      ``choice`` picks one of the two ``summaries`` (anything else → ``invalid``).
    - the comparisons also hold CNN/DM article comparisons (``info.article``, no ``post``): not TL;DR,
      counted as ``invalid: a CNN/DM article comparison``.
    - two identical summaries state no preference → ``tie``; a blank summary → ``invalid``.
    - ``axis_evals/`` (Likert ratings of single summaries) and ``tldr_3_filtered/`` (posts with reference
      summaries) are not comparisons → refused.

    Soft label (:attr:`SOFT_LABEL`): ``extra.confidence`` read as the labeller's 9-point scale from 1
    (``summaries[0]`` definitely better) through 5 (no preference) to 9 (``summaries[1]`` definitely better),
    so its distance from 5 towards ``choice`` is the strength. 5 → ``tie``; leaning away from ``choice`` →
    ``contradictory``; outside 1–9 → ``invalid``; no confidence (``extra`` absent or null) → p̂ = 1, the hard label.
    """

    HOMEPAGE = "https://github.com/openai/summarize-from-feedback"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Copy the comparison batches: azcopy copy "
        "'https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/comparisons/*' "
        "MANUAL_DIR/comparisons/ "
        "(or the hub's openai/summarize_from_feedback 'comparisons' Parquet files)"
    )
    LAYOUTS = (
        Layout(
            "raw files (comparisons/batch*.json)",
            {s: ("comparisons/*.json", "batch*.json") for s in ("train", "validation")},
        ),
        Layout(
            "hub Parquet files (comparisons/<split>)",
            {
                s: (
                    "comparisons/train/*.parquet",
                    "comparisons/validation/*.parquet",
                    "comparisons/train-*.parquet",
                    "comparisons/validation-*.parquet",
                )
                for s in ("train", "validation")
            },
        ),
    )
    SIDE_FILES = (
        SideFile(
            "summarize-from-feedback's axis evaluations (Likert ratings of single summaries)",
            ("axis_evals/*.json", "axis/*/*.parquet", "axis/*-*.parquet"),
            frozenset({"summary", "info"}),
        ),
        SideFile(
            "the filtered TL;DR posts with reference summaries (tldr_3_filtered, for supervised fine-tuning)",
            ("tldr_3_filtered/*.jsonl",),
            frozenset({"post", "summary"}),
        ),
    )
    PAIR_COLUMNS = frozenset({"info", "summaries", "choice", "split"})
    UPSTREAM = {"train": ("train",), "validation": ("valid1", "valid2")}
    SOFT_LABEL = "σ(|confidence − 5| / τ)"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "soft_label from extra.confidence"}
    NO_PREFERENCE = 5  # the midpoint of the 1–9 confidence scale

    def features(self) -> dict[str, Any]:
        return {"prompt": TEXT, "chosen": TEXT, "rejected": TEXT, "post_id": TEXT, "soft_label": np.float32}

    def _confidence_label(self, row: dict[str, Any], choice: int) -> float:
        """p̂ from ``extra.confidence`` (see the class docstring); 1.0 when the row has none."""
        confidence = (row.get("extra") or {}).get("confidence")
        if confidence is None:
            return 1.0
        if not isinstance(confidence, (int, float)) or not 1 <= confidence <= 9:
            raise Rejected("invalid: extra.confidence is not a number from 1 to 9")
        lean = confidence - self.NO_PREFERENCE  # > 0: towards summaries[1]
        if lean == 0:
            raise Rejected("tie: extra.confidence is 5 (no preference)")
        if (lean > 0) != (choice == 1):
            raise Rejected("contradictory: extra.confidence leans to the summary not chosen")
        return self.soft_label(abs(lean))

    def convert(self, row: Any, split: str) -> dict[str, Any] | None:
        if row.get("split") not in self.UPSTREAM[split]:
            return None
        info = row["info"]
        if not info.get("post"):
            raise Rejected("invalid: a CNN/DM article comparison, not a TL;DR post")
        choice, summaries = row["choice"], row["summaries"]
        if choice not in (0, 1) or len(summaries) != 2:
            raise Rejected("invalid: choice is not 0 or 1 between two summaries")
        soft_label = self._confidence_label(row, choice)
        chosen, rejected = summaries[choice]["text"], summaries[1 - choice]["text"]
        check_responses(chosen, rejected)
        prompt = (
            f"SUBREDDIT: r/{info.get('subreddit', '')}\n\nTITLE: {info.get('title', '')}\n\nPOST: "
            f"{info['post']}\n\nTL;DR:"
        )
        pair = canonical_pair({"prompt": prompt, "chosen": " " + chosen.strip(), "rejected": " " + rejected.strip()})
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")} | {
            "post_id": str(info.get("id", "")),
            "soft_label": soft_label,
        }
