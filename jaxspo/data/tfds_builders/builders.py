"""TFDS builders for public preference datasets (HH-RLHF, UltraFeedback, PKU-SafeRLHF here; TL;DR in
:mod:`.tldr`, HelpSteer2 in :mod:`.helpsteer2`), from the files their authors publish.

Each reads the upstream files from the TFDS manual dir (``--manual-dir``) in any of the layouts the
dataset is published in, keeps the upstream split names, and writes canonical rows
(:mod:`jaxspo.data.formats`). Conversations are stored as message sequences (multi-turn prompts are
split at the dataset's own turn markers); per-dimension scores as ``chosen_scores`` / ``rejected_scores``.
Each builder's docstring says which drop rule comes from where (dataset card, paper, authors' repo). Where a
dataset grades its preference, the builder also writes ``soft_label`` = σ(margin / τ) (its ``SOFT_LABEL``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxspo.data.formats import to_preference_row
from jaxspo.data.tfds_builders.base import (
    TEXT,
    Layout,
    PreferenceBuilder,
    Rejected,
    SideFile,
    check_responses,
    messages_feature,
    scores_feature,
)


def user_turn(text: str) -> list[dict[str, str]]:
    """``text`` as a one-message user turn."""
    return [{"role": "user", "content": text}]


def assistant_turn(text: str) -> list[dict[str, str]]:
    """``text`` as a one-message assistant turn."""
    return [{"role": "assistant", "content": text}]


def canonical_pair(row: dict[str, Any]) -> dict[str, Any]:
    """``to_preference_row`` with its error as an ``invalid:`` :class:`Rejected` reason (row and message
    numbers removed, so equal problems count together)."""
    try:
        return to_preference_row(row, 0)
    except ValueError as err:
        raise Rejected("invalid: " + re.sub(r"\[\d+\]", "[k]", re.sub(r"^row 0: ", "", str(err)))) from None


def hub_layouts(splits: dict[str, str], *configs: tuple[str, ...]) -> tuple[Layout, ...]:
    """The hub's Parquet forms of a dataset whose split ``s`` is the hub split ``splits[s]``: the main
    branch's ``data/<split>-00000-of-00001.parquet``, then the ``refs/convert/parquet`` branch's
    ``<config>/<split>/0000.parquet`` (or ``<config>/<split>-*.parquet``), one layout per group of configs so
    a download of every config (which repeat each other's rows) is read once."""
    main = Layout("hub Parquet files", {s: (f"data/{h}-*.parquet",) for s, h in splits.items()})
    converted = (
        Layout(
            f"hub Parquet conversion ({', '.join(group)})",
            {
                s: tuple(g for c in group for g in (f"{c}/{h}/*.parquet", f"{c}/{h}-*.parquet"))
                for s, h in splits.items()
            },
        )
        for group in configs or (("default",),)
    )
    return (main, *converted)


def transcript(
    text: str, turn: re.Pattern[str], roles: dict[str, str], first: str | None = None
) -> list[dict[str, str]]:
    """A transcript → messages, split at the dataset's turn markers (``turn`` captures the speaker, mapped
    by ``roles``); text before the first marker is a ``first`` turn (or must be blank if ``first`` is None)."""
    parts = turn.split(text)
    head = parts[0].strip()
    out = [{"role": first, "content": head}] if first is not None else []
    if head and first is None:
        raise Rejected("invalid: text before the first turn marker")
    out += [{"role": roles[parts[k]], "content": parts[k + 1].strip()} for k in range(1, len(parts), 2)]
    if not out:
        raise Rejected("invalid: no turns")
    return out


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def hh_transcript(text: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: …\\n\\nAssistant: …"`` → messages; Rejected if it is not such a transcript."""
    if not isinstance(text, str) or not _HH_TURN.match(text):
        raise Rejected("invalid: not a '\\n\\nHuman: … \\n\\nAssistant: …' transcript")
    return transcript(text, _HH_TURN, {"Human": "user", "Assistant": "assistant"})


class HhRlhf(PreferenceBuilder):
    """Anthropic HH-RLHF (Bai et al. 2022): pairs of Human/Assistant transcripts that differ in the last
    assistant turn; the shared turns are the prompt.

    Rules and their source:
    - card: each line is a pair of texts, one ``chosen`` and one ``rejected``, written as
      ``\n\nHuman: …\n\nAssistant: …`` transcripts → parsed into messages; anything else is ``invalid``.
    - paper §2 (workers pick one of two model responses at a turn of a shared conversation): the two
      transcripts must agree up to the last Assistant turn and end in it (else ``invalid``), and that
      turn must differ (identical → ``tie``) and be non-blank (→ ``invalid``).
    - card: the red-team attempts (``red-team-attempts/``) are whole transcripts with harm ratings,
      "not meant for fine-tuning or preference modeling" → refused.
    """

    HOMEPAGE = "https://github.com/anthropics/hh-rlhf"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the subsets you want from https://huggingface.co/datasets/Anthropic/hh-rlhf (or the GitHub repo), "
        "keeping their folders: MANUAL_DIR/helpful-base/train.jsonl.gz, MANUAL_DIR/helpful-base/test.jsonl.gz, "
        "harmless-base/…, helpful-online/…, helpful-rejection-sampled/… (or the whole repository, or its Parquet "
        "conversion). Every subset present is included."
    )
    SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
    LAYOUTS = (
        Layout("raw files (<subset>/<split>.jsonl.gz)", {"train": ("train.jsonl*",), "test": ("test.jsonl*",)}),
        *hub_layouts({"train": "train", "test": "test"}, ("all", "default"), SUBSETS),
    )
    SIDE_FILES = (
        SideFile(
            "HH-RLHF's red-team attempts (whole transcripts with harm ratings; the card: not for preference modeling)",
            ("red-team-attempts/*", "red_team_attempts.jsonl*"),
            frozenset({"transcript"}),
        ),
    )
    PAIR_COLUMNS = frozenset({"chosen", "rejected"})

    def features(self) -> dict[str, Any]:
        return {"prompt": messages_feature(), "chosen": messages_feature(), "rejected": messages_feature()}

    def convert(self, row: Any, split: str) -> dict[str, Any]:
        chosen, rejected = hh_transcript(row["chosen"]), hh_transcript(row["rejected"])
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            raise Rejected("invalid: a transcript does not end with an Assistant turn")
        if chosen[:-1] != rejected[:-1]:
            raise Rejected("invalid: chosen and rejected differ before the last Assistant turn")
        check_responses(chosen[-1]["content"], rejected[-1]["content"])
        prompt = chosen[:-1]
        if not prompt or prompt[-1]["role"] != "user":
            raise Rejected("invalid: the last Assistant turn does not answer a Human turn")
        pair = canonical_pair({"prompt": prompt, "chosen": chosen[-1:], "rejected": rejected[-1:]})
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")}


class UltrafeedbackBinarized(PreferenceBuilder):
    """UltraFeedback binarized (HuggingFaceH4/ultrafeedback_binarized, from Cui et al. 2023): the
    highest-rated response vs a random lower-rated one; GPT-4 ratings as ``*_scores.rating``.

    Rules and their source:
    - card: "we picked the highest mean score as the chosen completion, and one of the remaining 3 at
      random as the rejected one" → ``score_chosen == score_rejected`` is a ``tie`` and
      ``score_chosen < score_rejected`` is ``contradictory``; the rejected one must be another
      completion (identical text → ``tie``) and non-blank (→ ``invalid``).
    - card (configs): only ``train_prefs`` / ``test_prefs`` are preference splits; ``*_sft`` (for
      supervised fine-tuning) and ``*_gen`` (prompts for generation) are refused when they are all there is.
    - the original openbmb/UltraFeedback (four rated completions per row) is refused by its columns.

    Soft label (:attr:`SOFT_LABEL`): the two GPT-4 scores as Bradley–Terry utilities, per score point / τ.
    """

    HOMEPAGE = "https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download data/train_prefs-*.parquet and data/test_prefs-*.parquet from "
        "https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized into "
        "MANUAL_DIR/data/ (or the whole repository)."
    )
    LAYOUTS = (
        Layout(
            "raw files (<split>-*.parquet)",
            {"train_prefs": ("train_prefs-*.parquet",), "test_prefs": ("test_prefs-*.parquet",)},
        ),
        *hub_layouts({"train_prefs": "train_prefs", "test_prefs": "test_prefs"}),
    )
    SIDE_FILES = (
        SideFile(
            "UltraFeedback binarized's SFT split (train_sft / test_sft: chosen responses for supervised fine-tuning)",
            ("*_sft-*.parquet", "*_sft/*.parquet"),
        ),
        SideFile(
            "UltraFeedback binarized's generation split (train_gen / test_gen: prompts for sampling)",
            ("*_gen-*.parquet", "*_gen/*.parquet"),
        ),
        SideFile(
            "the original openbmb/UltraFeedback (four rated completions per prompt, not binarized)",
            (),
            frozenset({"instruction", "completions"}),
        ),
    )
    PAIR_COLUMNS = frozenset({"chosen", "rejected", "score_chosen", "score_rejected"})
    SOFT_LABEL = "σ((score_chosen − score_rejected) / τ)"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "soft_label from score_chosen − score_rejected"}

    def features(self) -> dict[str, Any]:
        return {
            "prompt": messages_feature(),
            "chosen": messages_feature(),
            "rejected": messages_feature(),
            "chosen_scores": scores_feature(("rating",)),
            "rejected_scores": scores_feature(("rating",)),
            "prompt_id": TEXT,
            "soft_label": np.float32,
        }

    def convert(self, row: Any, split: str) -> dict[str, Any]:
        score_chosen, score_rejected = float(row["score_chosen"]), float(row["score_rejected"])
        if score_chosen == score_rejected:
            raise Rejected("tie: score_chosen equals score_rejected")
        if score_chosen < score_rejected:
            raise Rejected("contradictory: score_chosen is below score_rejected")
        check_responses(row["chosen"][-1]["content"], row["rejected"][-1]["content"])
        pair = canonical_pair({"chosen": row["chosen"], "rejected": row["rejected"]})  # implicit prompt: the user turn
        return {
            "prompt": pair["prompt"],
            "chosen": pair["chosen"],
            "rejected": pair["rejected"],
            "chosen_scores": {"rating": score_chosen},
            "rejected_scores": {"rating": score_rejected},
            "prompt_id": row.get("prompt_id") or "",
            "soft_label": self.soft_label(score_chosen - score_rejected),
        }


class PkuSafeRlhfConfig(tfds.core.BuilderConfig):
    """``better``: chosen = ``better_response_id`` (helpfulness); ``safer``: chosen = ``safer_response_id``."""


class PkuSafeRlhf(PreferenceBuilder):
    """PKU-SafeRLHF (Ji et al. 2024): two responses per prompt with separate helpfulness and harmlessness
    preferences; ``*_scores`` = {better: 1/0, safer: 1/0, safe: is_response_safe}.

    Rules and their source (the authors' own cleaning, in the hub repository's history: "Remove samples
    with conflict labels", "Remove samples with duplicate responses"):
    - conflict labels: ``safer_response_id`` names an unsafe response while the other is safe →
      ``contradictory`` (dropped in both configs, as the authors drop the sample).
    - duplicate responses → ``tie``; a blank response → ``invalid``; an id other than 0 / 1 → ``invalid``.
    Layouts: ``data/<model>/<split>.jsonl`` (2024), ``round0/<split>.jsonl.xz`` (2023), the hub conversion.
    """

    HOMEPAGE = "https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF"
    BUILDER_CONFIGS = [PkuSafeRlhfConfig(name="better"), PkuSafeRlhfConfig(name="safer")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download train.jsonl and test.jsonl from https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF "
        "(data/<model>/train.jsonl, round0/train.jsonl.xz, or the whole repository) into MANUAL_DIR, keeping folders."
    )
    LAYOUTS = (
        Layout(
            "raw files (data/<model>/<split>.jsonl, round0/<split>.jsonl.xz)",
            {"train": ("train.jsonl*",), "test": ("test.jsonl*",)},
        ),
        *hub_layouts({"train": "train", "test": "test"}, ("default",), ("*",)),
    )
    PAIR_COLUMNS = frozenset({"prompt", "response_0", "response_1", "better_response_id", "safer_response_id"})
    DIMENSIONS = ("better", "safer", "safe")

    def features(self) -> dict[str, Any]:
        return {
            "prompt": messages_feature(),
            "chosen": messages_feature(),
            "rejected": messages_feature(),
            "chosen_scores": scores_feature(self.DIMENSIONS),
            "rejected_scores": scores_feature(self.DIMENSIONS),
        }

    def convert(self, row: Any, split: str) -> dict[str, Any]:
        for label in ("better_response_id", "safer_response_id"):
            if row[label] not in (0, 1):
                raise Rejected(f"invalid: {label} is not 0 or 1")
        safe = [bool(row["is_response_0_safe"]), bool(row["is_response_1_safe"])]
        safer = row["safer_response_id"]
        if not safe[safer] and safe[1 - safer]:
            raise Rejected("contradictory: safer_response_id names the unsafe response of a safe/unsafe pair")
        chosen_id = row[f"{self.builder_config.name}_response_id"]
        check_responses(row[f"response_{chosen_id}"], row[f"response_{1 - chosen_id}"])
        scores = [
            {"better": float(row["better_response_id"] == k), "safer": float(safer == k), "safe": float(safe[k])}
            for k in (0, 1)
        ]
        pair = canonical_pair(
            {
                "prompt": user_turn(row["prompt"]),
                "chosen": assistant_turn(row[f"response_{chosen_id}"]),
                "rejected": assistant_turn(row[f"response_{1 - chosen_id}"]),
            }
        )
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")} | {
            "chosen_scores": scores[chosen_id],
            "rejected_scores": scores[1 - chosen_id],
        }
