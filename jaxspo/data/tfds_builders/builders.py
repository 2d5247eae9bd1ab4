"""TFDS builders for five public preference datasets, from the files their authors publish.

Each reads the upstream files from the TFDS manual dir (``--manual-dir``), keeps the upstream split
names, and writes canonical rows (:mod:`jaxspo.data.formats`). Conversations are stored as message
sequences; per-dimension scores as ``chosen_scores`` / ``rejected_scores``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxspo.data.formats import to_preference_row
from jaxspo.data.tfds_builders.base import TEXT, PreferenceBuilder, Rejected, messages_feature, read_rows, scores_feature


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _canonical(row: dict[str, Any]) -> dict[str, Any]:
    """``to_preference_row`` with its error as a :class:`Rejected` reason (row and message numbers removed,
    so equal problems count together)."""
    try:
        pair = to_preference_row(row, 0)
    except ValueError as err:
        raise Rejected(re.sub(r"\[\d+\]", "[k]", re.sub(r"^row 0: ", "", str(err)))) from None
    if pair["chosen"] == pair["rejected"]:
        raise Rejected("chosen and rejected are identical")
    return pair


_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def hh_transcript(text: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: …\\n\\nAssistant: …"`` → messages; Rejected if it is not such a transcript."""
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise Rejected("not a '\\n\\nHuman: … \\n\\nAssistant: …' transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[k]], "content": parts[k + 1].strip()} for k in range(1, len(parts), 2)]


class HhRlhf(PreferenceBuilder):
    """Anthropic HH-RLHF (Bai et al. 2022): pairs of Human/Assistant transcripts that differ in the last
    assistant turn; the shared turns are the prompt."""

    HOMEPAGE = "https://github.com/anthropics/hh-rlhf"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the subsets you want from https://huggingface.co/datasets/Anthropic/hh-rlhf (or the GitHub repo), "
        "keeping their folders: MANUAL_DIR/helpful-base/train.jsonl.gz, MANUAL_DIR/helpful-base/test.jsonl.gz, "
        "harmless-base/…, helpful-online/…, helpful-rejection-sampled/… . Every subset present is included."
    )
    SPLIT_FILES = {"train": ("train.jsonl*", "*/train.jsonl*"), "test": ("test.jsonl*", "*/test.jsonl*")}

    def features(self) -> dict[str, Any]:
        return {"prompt": messages_feature(), "chosen": messages_feature(), "rejected": messages_feature()}

    def convert(self, row: Any, split: str) -> dict[str, Any]:
        pair = _canonical({"chosen": hh_transcript(row["chosen"]), "rejected": hh_transcript(row["rejected"])})
        for side in ("chosen", "rejected"):
            if [m["role"] for m in pair[side]] != ["assistant"]:
                raise Rejected(f"{side} does not end in exactly one assistant turn after the shared prompt")
        if pair["prompt"][-1]["role"] != "user":
            raise Rejected("the shared prompt does not end with a Human turn")
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")}


class UltrafeedbackBinarized(PreferenceBuilder):
    """UltraFeedback binarized (HuggingFaceH4/ultrafeedback_binarized, from Cui et al. 2023): the
    highest-rated response vs a random lower-rated one; GPT-4 ratings as ``*_scores.rating``."""

    HOMEPAGE = "https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download data/train_prefs-*.parquet and data/test_prefs-*.parquet from "
        "https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized into MANUAL_DIR/data/."
    )
    SPLIT_FILES = {"train_prefs": ("data/train_prefs-*.parquet", "train_prefs-*.parquet"), "test_prefs": ("data/test_prefs-*.parquet", "test_prefs-*.parquet")}

    def features(self) -> dict[str, Any]:
        return {
            "prompt": messages_feature(), "chosen": messages_feature(), "rejected": messages_feature(),
            "chosen_scores": scores_feature(("rating",)), "rejected_scores": scores_feature(("rating",)),
            "prompt_id": TEXT,
        }

    def convert(self, row: Any, split: str) -> dict[str, Any]:
        pair = _canonical({"chosen": row["chosen"], "rejected": row["rejected"]})  # implicit prompt: the user turn
        return {
            "prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"],
            "chosen_scores": {"rating": float(row["score_chosen"])}, "rejected_scores": {"rating": float(row["score_rejected"])},
            "prompt_id": row.get("prompt_id") or "",
        }


class PkuSafeRlhfConfig(tfds.core.BuilderConfig):
    """``better``: chosen = ``better_response_id`` (helpfulness); ``safer``: chosen = ``safer_response_id``."""


class PkuSafeRlhf(PreferenceBuilder):
    """PKU-SafeRLHF (Ji et al. 2024): two responses per prompt with separate helpfulness and harmlessness
    preferences; ``*_scores`` = {better: 1/0, safer: 1/0, safe: is_response_safe}."""

    HOMEPAGE = "https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF"
    BUILDER_CONFIGS = [PkuSafeRlhfConfig(name="better"), PkuSafeRlhfConfig(name="safer")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download train.jsonl and test.jsonl from https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF "
        "(data/train.jsonl, data/test.jsonl or per-model folders such as data/Alpaca-7B/) into MANUAL_DIR, keeping folders."
    )
    SPLIT_FILES = {"train": ("**/train.jsonl*", "train.jsonl*"), "test": ("**/test.jsonl*", "test.jsonl*")}
    DIMENSIONS = ("better", "safer", "safe")

    def features(self) -> dict[str, Any]:
        return {
            "prompt": messages_feature(), "chosen": messages_feature(), "rejected": messages_feature(),
            "chosen_scores": scores_feature(self.DIMENSIONS), "rejected_scores": scores_feature(self.DIMENSIONS),
        }

    def convert(self, row: Any, split: str) -> dict[str, Any]:
        chosen_id = row[f"{self.builder_config.name}_response_id"]
        if chosen_id not in (0, 1):
            raise Rejected(f"{self.builder_config.name}_response_id is not 0 or 1")
        scores = [
            {"better": float(row["better_response_id"] == k), "safer": float(row["safer_response_id"] == k), "safe": float(bool(row[f"is_response_{k}_safe"]))}
            for k in (0, 1)
        ]
        pair = _canonical({"prompt": _user(row["prompt"]), "chosen": _assistant(row[f"response_{chosen_id}"]), "rejected": _assistant(row[f"response_{1 - chosen_id}"])})
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")} | {"chosen_scores": scores[chosen_id], "rejected_scores": scores[1 - chosen_id]}


class TldrComparisons(PreferenceBuilder):
    """OpenAI summarize-from-feedback comparisons (Stiennon et al. 2020), TL;DR Reddit posts: two
    summaries, ``choice`` the labeller's pick. Standard text format: the prompt ends in ``TL;DR:`` and each
    completion is ``" " + summary``. Upstream ``split`` ``train`` → train, ``valid1`` / ``valid2`` → validation;
    CNN/DM comparisons (no ``post``) are left out."""

    HOMEPAGE = "https://github.com/openai/summarize-from-feedback"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Copy the comparison batches: azcopy copy "
        "'https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/comparisons/*' MANUAL_DIR/comparisons/"
    )
    SPLIT_FILES = {"train": ("comparisons/*.json", "*.json"), "validation": ("comparisons/*.json", "*.json")}
    UPSTREAM = {"train": ("train",), "validation": ("valid1", "valid2")}

    def features(self) -> dict[str, Any]:
        return {"prompt": TEXT, "chosen": TEXT, "rejected": TEXT, "post_id": TEXT}

    def convert(self, row: Any, split: str) -> dict[str, Any] | None:
        if row.get("split") not in self.UPSTREAM[split]:
            return None
        info = row["info"]
        if not info.get("post"):
            return None  # a CNN/DM article comparison
        choice, summaries = row["choice"], row["summaries"]
        if choice not in (0, 1) or len(summaries) != 2:
            raise Rejected("choice is not 0 or 1 between two summaries")
        prompt = f"SUBREDDIT: r/{info.get('subreddit', '')}\n\nTITLE: {info.get('title', '')}\n\nPOST: {info['post']}\n\nTL;DR:"
        pair = _canonical({"prompt": prompt, "chosen": " " + summaries[choice]["text"].strip(), "rejected": " " + summaries[1 - choice]["text"].strip()})
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")} | {"post_id": str(info.get("id", ""))}


class Helpsteer2(PreferenceBuilder):
    """NVIDIA HelpSteer2 (Wang et al. 2024): two responses per prompt on consecutive rows, each rated 0–4 on
    five attributes. Pairs: chosen = the higher helpfulness; equal helpfulness is rejected (no preference)."""

    HOMEPAGE = "https://huggingface.co/datasets/nvidia/HelpSteer2"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Download train.jsonl.gz and validation.jsonl.gz from https://huggingface.co/datasets/nvidia/HelpSteer2 into MANUAL_DIR."
    SPLIT_FILES = {"train": ("train.jsonl*",), "validation": ("validation.jsonl*",)}
    DIMENSIONS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")

    def features(self) -> dict[str, Any]:
        return {
            "prompt": messages_feature(), "chosen": messages_feature(), "rejected": messages_feature(),
            "chosen_scores": scores_feature(self.DIMENSIONS), "rejected_scores": scores_feature(self.DIMENSIONS),
        }

    def rows(self, files: list[Path], split: str) -> Iterator[tuple[str, Any]]:
        """Consecutive rows with the same prompt, as one (key, [row_a, row_b]) pair."""
        pending: tuple[str, Any] | None = None
        for key, row in super().rows(files, split):
            if isinstance(row, Rejected):  # an unreadable line keeps its own reason
                yield key, row
                continue
            if pending is not None and isinstance(row, dict) and isinstance(pending[1], dict) and row.get("prompt") == pending[1].get("prompt"):
                yield pending[0], [pending[1], row]
                pending = None
                continue
            if pending is not None:
                yield pending[0], Rejected("a response without a second response to the same prompt")
            pending = (key, row)
        if pending is not None:
            yield pending[0], Rejected("a response without a second response to the same prompt")

    def convert(self, row: Any, split: str) -> dict[str, Any]:
        a, b = row
        if a["helpfulness"] == b["helpfulness"]:
            raise Rejected("equal helpfulness: no preference")
        chosen, rejected = (a, b) if a["helpfulness"] > b["helpfulness"] else (b, a)
        pair = _canonical({"prompt": _user(a["prompt"]), "chosen": _assistant(chosen["response"]), "rejected": _assistant(rejected["response"])})
        scores = lambda r: {d: float(r[d]) for d in self.DIMENSIONS}  # noqa: E731
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")} | {"chosen_scores": scores(chosen), "rejected_scores": scores(rejected)}


BUILDERS: dict[str, type[PreferenceBuilder]] = {
    cls.name: cls for cls in (HhRlhf, UltrafeedbackBinarized, PkuSafeRlhf, TldrComparisons, Helpsteer2)
}
