"""``loss.kl``: settings of the global KL regulariser β_KL·KL(πθ ‖ π_ref) on policy samples (docs/methods/soft-spo.md).

Any loss may add it (β_KL > 0); the sampler and the in-step term are :mod:`jaxspo.objectives.kl`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class KLConfig:
    """Responses are sampled outside the step every ``refresh`` steps for ``prompts`` prompts from
    ``prompt_source``, ``samples_per_prompt`` each; the step adds β_KL · mean Σ_t KL per sampled response."""

    beta: float = 0.0  # β_KL ≥ 0; 0 = off. > 0 needs loss.reference: resident (or adapter_off with LoRA)
    prompts: int = 16  # prompts per regulariser batch (global)
    samples_per_prompt: int = 1  # sampled responses per prompt
    temperature: float = 1.0  # sampling temperature of the regulariser's responses
    max_new_tokens: int = 16  # sampling budget per response
    refresh: int = 1  # draw new samples every N preference steps
    prompt_source: str = "train"  # a split of the task (train, sft, eval) or a .jsonl file of {"prompt": ...} rows

    def validate(self, reference: str, grad_accum_steps: int) -> None:
        """Raises ValueError naming the first bad ``loss.kl`` key."""
        k = "loss.kl"
        checks = [
            (self.beta >= 0, f"{k}.beta must be >= 0, got {self.beta}"),
            (
                self.prompts >= 1 and self.samples_per_prompt >= 1,
                f"{k}.prompts and {k}.samples_per_prompt must be >= 1",
            ),
            (self.temperature > 0, f"{k}.temperature must be positive (on-policy samples), got {self.temperature}"),
            (self.max_new_tokens >= 1 and self.refresh >= 1, f"{k}.max_new_tokens and {k}.refresh must be >= 1"),
            (
                self.prompt_source in ("train", "sft", "eval") or self.prompt_source.endswith(".jsonl"),
                f"{k}.prompt_source must be train, sft, eval or a .jsonl file, got '{self.prompt_source}'",
            ),
            (
                self.beta == 0 or reference in ("resident", "adapter_off"),
                f"{k}.beta > 0 needs the frozen reference inside the step (loss.reference: resident, or "
                f"adapter_off with LoRA), got loss.reference: {reference}",
            ),
            (
                self.beta == 0 or (self.prompts * self.samples_per_prompt) % grad_accum_steps == 0,
                f"{k}.prompts × {k}.samples_per_prompt must divide by trainer.grad_accum_steps ({grad_accum_steps})",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
