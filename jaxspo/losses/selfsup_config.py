"""``loss.selfsup``: the preference-degree term's settings and the degradations they choose; plain Python, no jax."""

from __future__ import annotations

import dataclasses

UNITS = ("token", "word", "sentence")  # what a degradation level removes
KEY_SCORINGS = ("tfidf", "surprisal", "rake")  # how the key units are chosen
MODES = ("ranking", "classify")
RANKINGS = ("plackett_luce", "pairwise")
REWARDS = ("auto", "log_ratio", "mean_logp", "logp")
DEGRADE_SIDES = {"chosen": ("chosen",), "rejected": ("rejected",), "both": ("chosen", "rejected")}


@dataclasses.dataclass
class SelfsupConfig:
    """``loss.selfsup``: the preference-degree term added to ``loss.terms`` (weight 0 = off, no extra work)."""

    weight: float = 0.0  # λ; 0 disables selfsup (no degraded data, no extra forward)
    mode: str = "ranking"  # ranking | classify
    ranking: str = "plackett_luce"  # plackett_luce | pairwise (mode ranking)
    reward: str = (
        "auto"  # auto | log_ratio | mean_logp | logp; auto: log_ratio if the first term needs π_ref, else mean_logp
    )
    levels: int = 3  # K degraded copies per response
    fraction: float = 0.2  # share of the units removed per level (level k removes ceil(k·fraction·n))
    unit: str = "word"  # token | word | sentence
    key_scoring: str = "tfidf"  # tfidf (over the training responses) | surprisal (reference model) | rake (keyphrases)
    stopwords: list[str] = dataclasses.field(default_factory=list)  # rake: words added to its English stoplist
    degrade: str = "chosen"  # chosen | rejected | both
    seed: int = 0  # tie-breaking among equally key units

    def validate(self) -> None:
        """Raises ValueError naming the first bad ``loss.selfsup`` key."""
        checks = [
            (self.weight >= 0, f"loss.selfsup.weight must be >= 0, got {self.weight}"),
            (self.mode in MODES, f"loss.selfsup.mode must be one of {MODES}, got '{self.mode}'"),
            (self.ranking in RANKINGS, f"loss.selfsup.ranking must be one of {RANKINGS}, got '{self.ranking}'"),
            (self.reward in REWARDS, f"loss.selfsup.reward must be one of {REWARDS}, got '{self.reward}'"),
            (self.levels >= 1, f"loss.selfsup.levels must be >= 1, got {self.levels}"),
            (0.0 < self.fraction <= 1.0, f"loss.selfsup.fraction must be in (0, 1], got {self.fraction}"),
            (self.unit in UNITS, f"loss.selfsup.unit must be one of {UNITS}, got '{self.unit}'"),
            (
                self.key_scoring in KEY_SCORINGS,
                f"loss.selfsup.key_scoring must be one of {KEY_SCORINGS}, got '{self.key_scoring}'",
            ),
            (
                self.key_scoring != "rake" or self.unit != "token",
                "loss.selfsup.key_scoring 'rake' scores words and phrases: set loss.selfsup.unit to word or sentence",
            ),
            (
                self.degrade in DEGRADE_SIDES,
                f"loss.selfsup.degrade must be one of {tuple(DEGRADE_SIDES)}, got '{self.degrade}'",
            ),
            (self.seed >= 0, f"loss.selfsup.seed must be >= 0, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
