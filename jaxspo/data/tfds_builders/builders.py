"""TFDS builders for five public preference datasets, from the files their authors publish.

Each reads the upstream files from the TFDS manual dir (``--manual-dir``) in any of the layouts the
dataset is published in, keeps the upstream split names, and writes canonical rows
(:mod:`jaxspo.data.formats`). Conversations are stored as message sequences (multi-turn prompts are
split at the dataset's own turn markers); per-dimension scores as ``chosen_scores`` / ``rejected_scores``.
Each builder's docstring says which drop rule comes from where (dataset card, paper, authors' repo). Where a
dataset grades its preference, the builder also writes ``soft_label`` = σ(margin / τ) (its ``SOFT_LABEL``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
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


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _canonical(row: dict[str, Any]) -> dict[str, Any]:
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


_HS2_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n?")


def helpsteer2_prompt(text: str) -> list[dict[str, str]]:
    """A HelpSteer2 prompt → messages: the first user turn has no marker, later turns start with
    ``<extra_id_1>Assistant`` / ``<extra_id_1>User`` on their own line; it must end with a user turn."""
    if not isinstance(text, str):
        raise Rejected("invalid: the prompt is not text")
    turns = transcript(text, _HS2_TURN, {"User": "user", "Assistant": "assistant"}, first="user")
    if turns[-1]["role"] != "user":
        raise Rejected("invalid: the prompt does not end with a User turn")
    if any(not m["content"] for m in turns):
        raise Rejected("invalid: an empty turn in the prompt")
    return turns


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
        pair = _canonical({"prompt": prompt, "chosen": chosen[-1:], "rejected": rejected[-1:]})
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
        "https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized into MANUAL_DIR/data/ (or the whole repository)."
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
        pair = _canonical({"chosen": row["chosen"], "rejected": row["rejected"]})  # implicit prompt: the user turn
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
        pair = _canonical(
            {
                "prompt": _user(row["prompt"]),
                "chosen": _assistant(row[f"response_{chosen_id}"]),
                "rejected": _assistant(row[f"response_{1 - chosen_id}"]),
            }
        )
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")} | {
            "chosen_scores": scores[chosen_id],
            "rejected_scores": scores[1 - chosen_id],
        }


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
        "'https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/comparisons/*' MANUAL_DIR/comparisons/ "
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
        prompt = f"SUBREDDIT: r/{info.get('subreddit', '')}\n\nTITLE: {info.get('title', '')}\n\nPOST: {info['post']}\n\nTL;DR:"
        pair = _canonical({"prompt": prompt, "chosen": " " + chosen.strip(), "rejected": " " + rejected.strip()})
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")} | {
            "post_id": str(info.get("id", "")),
            "soft_label": soft_label,
        }


class Helpsteer2Config(tfds.core.BuilderConfig):
    """``ratings``: pairs from the per-response ratings (higher helpfulness chosen); ``preference``: the
    pairwise preference annotations (``preference/preference.jsonl.gz``)."""


_HS2_RATINGS = frozenset({"prompt", "response", "helpfulness"})
_HS2_PREFERENCE = frozenset({"prompt", "response_1", "response_2", "preference_strength"})


class Helpsteer2(PreferenceBuilder):
    """NVIDIA HelpSteer2 (Wang et al. 2024): two responses per prompt, each rated 0–4 on five attributes;
    since Oct 2024 also a pairwise preference annotation per prompt (HelpSteer2-Preference, Wang et al. 2024b).

    Rules and their source:
    - card: multi-turn prompts hold the earlier turns, later ones marked ``<extra_id_1>Assistant`` /
      ``<extra_id_1>User`` (the first user turn unmarked) → messages; the prompt must end with a user turn.
    - ``ratings`` (card: Bradley-Terry "by taking difference in helpfulness"): the two consecutive rows of
      a prompt; chosen = the higher ``helpfulness``; equal helpfulness → ``tie``; a prompt without a
      second response → ``invalid``.
    - ``preference`` (card, Preferences section): ``preference_strength`` from -3 (response 1 much better)
      to 3 (response 2 much better) → its sign picks chosen, its size is kept as ``preference_strength``
      (0–3); 0 → ``tie``; ``split`` says train / validation.
    - both: identical responses → ``tie``; a blank response → ``invalid``.
    - the other file where one is expected (per-response ratings vs pairwise preferences) and
      ``disagreements/`` are refused.

    Soft label (:attr:`SOFT_LABEL`): ``ratings``: the helpfulness difference (the attribute the card's
    Bradley–Terry pairs use) per point / τ; ``preference``: the strength (1 slightly, 2 better, 3 much better) / τ.
    """

    HOMEPAGE = "https://huggingface.co/datasets/nvidia/HelpSteer2"
    BUILDER_CONFIGS = [Helpsteer2Config(name="ratings"), Helpsteer2Config(name="preference")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download train.jsonl.gz and validation.jsonl.gz (config ratings) or preference/preference.jsonl.gz "
        "(config preference) from https://huggingface.co/datasets/nvidia/HelpSteer2 into MANUAL_DIR (or the whole repository)."
    )
    DIMENSIONS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
    SOFT_LABEL = "ratings: σ((helpfulness_chosen − helpfulness_rejected) / τ); preference: σ(|preference_strength| / τ)"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "soft_label from the helpfulness difference or the preference strength"}
    _DISAGREEMENTS = SideFile("HelpSteer2's disagreements file (not one of its pair files)", ("disagreements/*",))
    _CONFIGS = {
        "ratings": (
            (
                Layout(
                    "raw files (<split>.jsonl.gz)", {"train": ("train.jsonl*",), "validation": ("validation.jsonl*",)}
                ),
                *hub_layouts({"train": "train", "validation": "validation"}),
            ),
            (
                SideFile(
                    "HelpSteer2's pairwise preference file (use helpsteer2/preference for it)",
                    ("preference/*",),
                    _HS2_PREFERENCE,
                ),
                _DISAGREEMENTS,
            ),
            _HS2_RATINGS,
        ),
        "preference": (
            (
                Layout(
                    "raw file (preference/preference.jsonl.gz)",
                    {"train": ("preference/preference.jsonl*",), "validation": ("preference/preference.jsonl*",)},
                ),
            ),
            (
                SideFile(
                    "HelpSteer2's per-response ratings file (one rated response per row; use helpsteer2/ratings for it)",
                    ("train.jsonl*", "validation.jsonl*"),
                    _HS2_RATINGS,
                ),
                _DISAGREEMENTS,
            ),
            _HS2_PREFERENCE | {"split"},
        ),
    }

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.LAYOUTS, self.SIDE_FILES, self.PAIR_COLUMNS = self._CONFIGS[self.builder_config.name]

    def features(self) -> dict[str, Any]:
        conversation = {
            "prompt": messages_feature(),
            "chosen": messages_feature(),
            "rejected": messages_feature(),
            "soft_label": np.float32,
        }
        if self.builder_config.name == "preference":
            return conversation | {"preference_strength": np.float32}
        return conversation | {
            "chosen_scores": scores_feature(self.DIMENSIONS),
            "rejected_scores": scores_feature(self.DIMENSIONS),
        }

    def rows(self, files: list[Path], split: str) -> Iterator[tuple[str, Any]]:
        """``preference``: the rows of ``split``; ``ratings``: consecutive rows with the same prompt, as one
        (key, [row_a, row_b]) pair."""
        if self.builder_config.name == "preference":
            yield from super().rows(files, split)
            return
        pending: tuple[str, Any] | None = None
        for key, row in super().rows(files, split):
            if isinstance(row, Rejected):  # an unreadable line keeps its own reason
                yield key, row
                continue
            if (
                pending is not None
                and isinstance(row, dict)
                and isinstance(pending[1], dict)
                and row.get("prompt") == pending[1].get("prompt")
            ):
                yield pending[0], [pending[1], row]
                pending = None
                continue
            if pending is not None:
                yield pending[0], Rejected("invalid: a response without a second response to the same prompt")
            pending = (key, row)
        if pending is not None:
            yield pending[0], Rejected("invalid: a response without a second response to the same prompt")

    def convert(self, row: Any, split: str) -> dict[str, Any] | None:
        if self.builder_config.name == "preference":
            return self._from_preference(row, split)
        a, b = row
        if a["helpfulness"] == b["helpfulness"]:
            raise Rejected("tie: equal helpfulness")
        chosen, rejected = (a, b) if a["helpfulness"] > b["helpfulness"] else (b, a)
        scores = {
            "chosen_scores": {d: float(chosen[d]) for d in self.DIMENSIONS},
            "rejected_scores": {d: float(rejected[d]) for d in self.DIMENSIONS},
        }
        soft_label = self.soft_label(float(chosen["helpfulness"]) - float(rejected["helpfulness"]))
        return (
            self._example(a["prompt"], chosen["response"], rejected["response"]) | scores | {"soft_label": soft_label}
        )

    def _from_preference(self, row: dict[str, Any], split: str) -> dict[str, Any] | None:
        if row["split"] != split:
            return None
        strength = float(row["preference_strength"])
        if strength == 0:
            raise Rejected("tie: preference_strength is 0")
        first, second = row["response_1"], row["response_2"]
        chosen, rejected = (second, first) if strength > 0 else (first, second)
        return self._example(row["prompt"], chosen, rejected) | {
            "preference_strength": abs(strength),
            "soft_label": self.soft_label(abs(strength)),
        }

    def _example(self, prompt: Any, chosen: Any, rejected: Any) -> dict[str, Any]:
        check_responses(chosen, rejected)
        pair = _canonical(
            {"prompt": helpsteer2_prompt(prompt), "chosen": _assistant(chosen), "rejected": _assistant(rejected)}
        )
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")}


BUILDERS: dict[str, type[PreferenceBuilder]] = {
    cls.name: cls for cls in (HhRlhf, UltrafeedbackBinarized, PkuSafeRlhf, TldrComparisons, Helpsteer2)
}
