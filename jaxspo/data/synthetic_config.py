"""The synthetic task's settings (``data.synthetic``) and gold dimensions; plain Python, so the config imports no
jax."""

from __future__ import annotations

import dataclasses
import math
import typing

GOLD_DIMENSIONS = ("correctness", "brevity")
HARD_LABEL_MODES = ("sampled", "argmax")


@dataclasses.dataclass
class SyntheticTaskConfig:
    """Knobs of the synthetic task; defaults give the built-in task (see the docstring of
    ``jaxspo/data/synthetic.py``)."""

    seed: int = 0
    min_digits: int = 3
    max_digits: int = 6
    max_error_rate: float = 0.6
    truncate_prob: float = 0.25
    max_filler: int = 3
    responses_per_prompt: int = 4
    num_sft: int = 4096
    num_train: int = 4096
    num_eval: int = 256
    label_weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"correctness": 1.0, "brevity": 0.0})
    label_temperature: float = 0.1
    hard_label: str = "sampled"

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        for name, kind in typing.get_type_hints(SyntheticTaskConfig).items():
            _check_type(name, getattr(self, name), kind)
        weights = self.label_weights
        _require(isinstance(weights, dict), "label_weights", f"must be a dict, got {weights!r}")
        for dim, weight in weights.items():
            known = dim in GOLD_DIMENSIONS
            _require(known, "label_weights", f"has unknown key {dim!r}; use {GOLD_DIMENSIONS}")
            _check_type(f"label_weights[{dim!r}]", weight, float)
        _require(any(weights.values()), "label_weights", "needs at least one nonzero weight")
        _require(self.seed >= 0, "seed", "must be >= 0")
        _require(self.min_digits >= 1, "min_digits", "must be >= 1")
        _require(self.max_digits >= self.min_digits, "max_digits", "must be >= min_digits")
        _require(0.0 <= self.max_error_rate <= 1.0, "max_error_rate", "must be in [0, 1]")
        _require(0.0 <= self.truncate_prob <= 1.0, "truncate_prob", "must be in [0, 1]")
        _require(self.max_filler >= 0, "max_filler", "must be >= 0")
        _require(self.responses_per_prompt >= 2, "responses_per_prompt", "must be >= 2")
        for name in ("num_sft", "num_train", "num_eval"):
            _require(getattr(self, name) >= 0, name, "must be >= 0")
        num_prompts = sum(10**n for n in range(self.min_digits, self.max_digits + 1))
        _require(
            self.num_eval <= num_prompts // 2,
            "num_eval",
            f"must be at most half of the {num_prompts} possible prompts (eval prompts are distinct)",
        )
        _require(self.label_temperature > 0.0, "label_temperature", "must be > 0")
        _require(self.hard_label in HARD_LABEL_MODES, "hard_label", f"must be one of {HARD_LABEL_MODES}")


def _check_type(name: str, value: object, kind: object) -> None:
    """Checks an int/float/str config value (bools are not numbers here; floats must be finite)."""
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is str:
        ok = isinstance(value, str)
    else:
        return
    _require(ok, name, f"must be a {'finite float' if kind is float else kind.__name__}, got {value!r}")


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"SyntheticTaskConfig.{name} {message}")
