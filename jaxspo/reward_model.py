"""Win rate of sampled responses under a user-given reward model (a Hugging Face sequence classifier).

The reward model is loaded with transformers (PyTorch, CPU, ``local_files_only``: no download) from a
folder holding a ``*ForSequenceClassification`` checkpoint with one output (the reward). Each response is
scored in context (:func:`reward_input_text`, shared with ``jaxspo label``'s JAX port of such a model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxspo.errors import CheckpointError


def reward_input_text(tokenizer: Any, prompt: str | list, response: str | list) -> str:
    """The reward model's input text for one (prompt, response): ``prompt + response`` for text; for a
    conversation, the tokenizer's chat template over the prompt messages plus the response (a list of messages,
    or its text as one ``{"role": "assistant"}`` message), or without a template the message contents joined by
    newlines. The tokenizer then adds its special tokens as usual."""
    if isinstance(prompt, str) and isinstance(response, str):
        return prompt + response
    turns = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
    messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)) + turns
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(m["content"] for m in messages)


class RewardModel:
    """``score(prompts, responses) -> [N]`` rewards under a sequence-classification model folder."""

    def __init__(self, folder: str | Path, batch_size: int = 8, max_length: int = 2048):
        import torch
        import transformers

        self.torch = torch
        try:
            self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(folder), local_files_only=True
            ).eval()
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as err:
            raise CheckpointError(
                f"{folder}: cannot load a sequence-classification reward model ({err}); --reward-model "
                "must be a Hugging Face *ForSequenceClassification folder"
            ) from None
        if self.model.config.num_labels != 1:
            raise CheckpointError(
                f"{folder}: a reward model has one output (num_labels=1), this one has "
                f"{self.model.config.num_labels}; give a reward model folder"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length = batch_size, max_length

    def score(self, prompts: Sequence[str | list], responses: Sequence[str | list]) -> np.ndarray:
        texts = [reward_input_text(self.tokenizer, p, r) for p, r in zip(prompts, responses)]
        out = []
        with self.torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                )
                out.append(self.model(**batch).logits[:, 0].float().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def win_rate(policy: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of prompts where the policy's response out-scores the reference's (ties count ½)."""
    policy, reference = np.asarray(policy), np.asarray(reference)
    return float(np.mean(policy > reference) + 0.5 * np.mean(policy == reference))
