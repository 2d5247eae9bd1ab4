"""``lora``: the adapters' settings (rank, scale, dropout, targets, sequential-stage mode); plain Python, no jax."""

from __future__ import annotations

import dataclasses

STAGE_MODES = ("merged", "stacked")


@dataclasses.dataclass
class LoRAConfig:
    """Rank ``r`` (0 = full fine-tuning), ``alpha`` (the update is scaled by alpha / r), input dropout, targets."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    stages: str = "merged"  # a `stages` recipe: merge each stage's adapter into the next stage's base, or stack them

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> None:
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0 (0 = off), got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.enabled and self.alpha <= 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha}")
        if self.enabled and not self.targets:
            raise ValueError("lora.targets must name at least one projection")
        if self.stages not in STAGE_MODES:
            raise ValueError(f"lora.stages must be one of {', '.join(STAGE_MODES)}, got '{self.stages}'")
