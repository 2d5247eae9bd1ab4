"""The built-in synthetic preference task: reverse a list of digits, answered by a noisy teacher.

Prompt ``"reverse 3 1 4 1 :"`` (``n`` digits, ``n`` uniform in ``[min_digits, max_digits]``); target answer
``"1 4 1 3"``. A teacher response draws its own error rate ``e ~ U[0, max_error_rate]`` and replaces each
target digit by a uniformly random *other* digit with probability ``e``; with probability ``truncate_prob``
it keeps only the first ``k ~ U{1, …, n-1}`` digits; then it inserts ``U{0, …, max_filler}`` filler words
(``um``, ``well``, ``so``, ``ok``) at random positions. Words are separated by single spaces.

Gold reward dimensions (``GOLD_DIMENSIONS``), each in ``[0, 1]``, scored from prompt and response text only
(so any sampled text can be scored): ``correctness`` = position-wise matches between the response's digit
words (other words ignored) and the target, divided by ``max(len(target), number of digit words)``;
``brevity`` = ``max(0, 1 - n_words / (2 * max_digits))``. They conflict: truncation is short but wrong,
fillers cost brevity only.

Labels: the labelled reward is ``r = Σ_d label_weights[d] * gold_d``; for two responses ``a, b`` the
Bradley–Terry probability is ``P(a ≻ b) = σ((r_a - r_b) / label_temperature)``. The hard label is sampled
from it (``hard_label="sampled"``, a noisy annotator) or is the higher reward (``"argmax"``, ties broken by
the seed).

Splits and row fields (plain JSON-able dicts; TRL's "standard" preference format plus optional fields):

- ``sft``: ``{"prompt": str, "completion": str}`` — one teacher completion (not the clean target).
- ``train`` / ``eval``: ``{"prompt": str, "chosen": str, "rejected": str, "soft_label": float,
  "chosen_scores": {dim: float}, "rejected_scores": {dim: float}, "responses": [str, ...],
  "response_scores": [{dim: float}, ...]}``. ``responses`` holds ``responses_per_prompt`` distinct teacher
  responses (for ranked / best-of-n methods); ``chosen`` and ``rejected`` are two of them (a random pair),
  and ``soft_label`` is the Bradley–Terry probability that ``chosen`` beats ``rejected`` (below 0.5 when a
  sampled label picked the worse response).

Eval prompts are distinct from each other and never appear in ``sft`` or ``train``; ``sft`` and ``train``
draw (possibly repeated) prompts from the rest. Each split has its own random stream spawned from ``seed``,
so e.g. changing ``num_sft`` leaves ``train`` and ``eval`` unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerFast

from jaxspo.data.synthetic_config import GOLD_DIMENSIONS, SyntheticTaskConfig
from jaxspo.data.tokenizer import DIGITS, FILLER_WORDS, PROMPT_WORD, SEPARATOR, build_task_tokenizer

_ATTEMPTS_PER_RESPONSE = 100

Row = dict[str, Any]
GoldRewardFn = Callable[[str, str], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """A built task: ``splits`` ("sft", "train", "eval" → rows), its tokenizer and gold reward function."""

    config: SyntheticTaskConfig
    splits: dict[str, list[Row]]
    tokenizer: PreTrainedTokenizerFast
    gold_rewards: GoldRewardFn
    dimensions: tuple[str, ...] = GOLD_DIMENSIONS


def prompt_target(prompt: str) -> list[str]:
    """The target answer words (the prompt's digits reversed); ValueError if the prompt is malformed."""
    words = prompt.split()
    digits = words[1:-1]
    framed = len(words) >= 3 and words[0] == PROMPT_WORD and words[-1] == SEPARATOR
    if not framed or not all(d in DIGITS for d in digits):
        raise ValueError(f"prompt {prompt!r} is not of the form '{PROMPT_WORD} <digits> {SEPARATOR}'")
    return digits[::-1]


def gold_rewards(prompt: str, response: str, *, max_digits: int = SyntheticTaskConfig.max_digits) -> dict[str, float]:
    """Gold scores in [0, 1] of any response text: ``{"correctness": …, "brevity": …}``.

    ``max_digits`` sets the brevity scale (``2 * max_digits`` words score 0); a task's own
    ``SyntheticTask.gold_rewards`` has it bound to the task's config.
    """
    target = prompt_target(prompt)
    words = response.split()
    digits = [w for w in words if w in DIGITS]
    matches = sum(got == want for got, want in zip(digits, target))
    return {
        "correctness": matches / max(len(target), len(digits)),
        "brevity": max(0.0, 1.0 - len(words) / (2 * max_digits)),
    }


def labelled_reward(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The annotator's scalar reward ``Σ_d weights[d] * scores[d]`` (absent dimensions weigh 0)."""
    return float(sum(weight * scores[dim] for dim, weight in weights.items()))


def _bradley_terry(reward_a: float, reward_b: float, temperature: float) -> float:
    """P(a ≻ b) = σ((r_a - r_b) / temperature), computed without overflow."""
    z = (reward_a - reward_b) / temperature
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    return math.exp(z) / (1.0 + math.exp(z))


def _draw_digits(cfg: SyntheticTaskConfig, rng: np.random.Generator) -> tuple[str, ...]:
    n = int(rng.integers(cfg.min_digits, cfg.max_digits + 1))
    return tuple(DIGITS[d] for d in rng.integers(0, 10, size=n))


def _prompt_text(digits: tuple[str, ...]) -> str:
    return " ".join((PROMPT_WORD, *digits, SEPARATOR))


def _draw_prompts(
    cfg: SyntheticTaskConfig,
    rng: np.random.Generator,
    count: int,
    exclude: set[tuple[str, ...]],
    distinct: bool,
) -> list[tuple[str, ...]]:
    """``count`` prompts (as digit tuples) not in ``exclude``; pairwise distinct if ``distinct``."""
    seen, prompts = set(exclude), []
    while len(prompts) < count:
        digits = _draw_digits(cfg, rng)
        if digits in seen:
            continue
        if distinct:
            seen.add(digits)
        prompts.append(digits)
    return prompts


def _teacher_response(target: list[str], cfg: SyntheticTaskConfig, rng: np.random.Generator) -> str:
    """One noisy answer: digit errors at a per-response rate, maybe truncated, plus fillers."""
    error_rate = rng.uniform(0.0, cfg.max_error_rate)
    words = [DIGITS[(int(d) + rng.integers(1, 10)) % 10] if rng.random() < error_rate else d for d in target]
    if len(words) > 1 and rng.random() < cfg.truncate_prob:
        words = words[: rng.integers(1, len(words))]
    for _ in range(rng.integers(0, cfg.max_filler + 1)):
        words.insert(rng.integers(0, len(words) + 1), FILLER_WORDS[rng.integers(len(FILLER_WORDS))])
    return " ".join(words)


def _distinct_responses(prompt: str, cfg: SyntheticTaskConfig, rng: np.random.Generator) -> list[str]:
    target = prompt_target(prompt)
    responses: list[str] = []
    for _ in range(_ATTEMPTS_PER_RESPONSE * cfg.responses_per_prompt):
        response = _teacher_response(target, cfg, rng)
        if response not in responses:
            responses.append(response)
            if len(responses) == cfg.responses_per_prompt:
                return responses
    raise ValueError(
        f"SyntheticTaskConfig.responses_per_prompt: the teacher gave only {len(responses)} distinct "
        f"responses to {prompt!r}; lower responses_per_prompt or raise max_error_rate, truncate_prob "
        "or max_filler"
    )


def _sft_row(digits: tuple[str, ...], cfg: SyntheticTaskConfig, rng: np.random.Generator) -> Row:
    prompt = _prompt_text(digits)
    return {"prompt": prompt, "completion": _teacher_response(prompt_target(prompt), cfg, rng)}


def _preference_row(
    digits: tuple[str, ...], cfg: SyntheticTaskConfig, rng: np.random.Generator, score: GoldRewardFn
) -> Row:
    prompt = _prompt_text(digits)
    responses = _distinct_responses(prompt, cfg, rng)
    scores = [score(prompt, response) for response in responses]
    rewards = [labelled_reward(s, cfg.label_weights) for s in scores]
    a, b = (int(i) for i in rng.choice(len(responses), size=2, replace=False))
    if cfg.hard_label == "sampled":
        a_wins = rng.random() < _bradley_terry(rewards[a], rewards[b], cfg.label_temperature)
    else:
        a_wins = rewards[a] > rewards[b] if rewards[a] != rewards[b] else rng.random() < 0.5
    win, lose = (a, b) if a_wins else (b, a)
    return {
        "prompt": prompt,
        "chosen": responses[win],
        "rejected": responses[lose],
        "soft_label": _bradley_terry(rewards[win], rewards[lose], cfg.label_temperature),
        "chosen_scores": dict(scores[win]),
        "rejected_scores": dict(scores[lose]),
        "responses": responses,
        "response_scores": scores,
    }


def build_synthetic_task(cfg: SyntheticTaskConfig | None = None) -> SyntheticTask:
    """Generates all splits deterministically from ``cfg.seed`` (defaults: the built-in task)."""
    cfg = cfg if cfg is not None else SyntheticTaskConfig()
    cfg.validate()
    score = functools.partial(gold_rewards, max_digits=cfg.max_digits)
    streams = np.random.SeedSequence(cfg.seed).spawn(3)
    eval_rng, sft_rng, train_rng = (np.random.default_rng(s) for s in streams)
    eval_prompts = _draw_prompts(cfg, eval_rng, cfg.num_eval, exclude=set(), distinct=True)
    held_out = set(eval_prompts)
    sft_prompts = _draw_prompts(cfg, sft_rng, cfg.num_sft, exclude=held_out, distinct=False)
    train_prompts = _draw_prompts(cfg, train_rng, cfg.num_train, exclude=held_out, distinct=False)
    splits = {
        "sft": [_sft_row(d, cfg, sft_rng) for d in sft_prompts],
        "train": [_preference_row(d, cfg, train_rng, score) for d in train_prompts],
        "eval": [_preference_row(d, cfg, eval_rng, score) for d in eval_prompts],
    }
    return SyntheticTask(config=cfg, splits=splits, tokenizer=build_task_tokenizer(), gold_rewards=score)
