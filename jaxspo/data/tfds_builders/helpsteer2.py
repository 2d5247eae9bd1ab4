"""The TFDS builder of NVIDIA HelpSteer2 (see :class:`Helpsteer2`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxspo.data.tfds_builders.base import (
    Layout,
    PreferenceBuilder,
    Rejected,
    SideFile,
    check_responses,
    messages_feature,
    scores_feature,
)
from jaxspo.data.tfds_builders.builders import assistant_turn, canonical_pair, hub_layouts, transcript


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
        "(config preference) from https://huggingface.co/datasets/nvidia/HelpSteer2 into "
        "MANUAL_DIR (or the whole repository)."
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
                    "HelpSteer2's per-response ratings file (one rated response per row; use "
                    "helpsteer2/ratings for it)",
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
        pair = canonical_pair(
            {
                "prompt": helpsteer2_prompt(prompt),
                "chosen": assistant_turn(chosen),
                "rejected": assistant_turn(rejected),
            }
        )
        return {k: pair[k] for k in ("prompt", "chosen", "rejected")}
