"""``jaxspo label DATA --reward-model DIR --out OUT``: soft preference labels from a reward model.

Each pair's two responses are scored by a Hugging Face sequence-classification reward model ported to our
decoder (:mod:`jaxspo.models.hf_reward`; parameters sharded over all devices, rows split over the ``data``
axis, as ``jaxspo score`` does), and ``soft_label`` p̂ = σ((r_chosen − r_rejected) / τ) is written with both
rewards. The input text of a response is :func:`jaxspo.reward_model.reward_input_text` (the text rule of
``jaxspo eval --reward-model``: ``prompt + response``, or the reward model's chat template for conversations),
tokenised with the model's tokenizer and its special tokens, cut to ``max_length`` tokens from the right.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxspo.data import read_jsonl
from jaxspo.data.formats import to_preference_row
from jaxspo.distributed import is_writer
from jaxspo.errors import DataError, UsageError
from jaxspo.models.hf_io import load_tokenizer
from jaxspo.models.hf_reward import last_scored_token, load_reward_model, pad_right, rewards
from jaxspo.reward_model import reward_input_text
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh
from jaxspo.train.scoring import score_in_chunks


def soft_labels(chosen: np.ndarray, rejected: np.ndarray, temperature: float) -> np.ndarray:
    """p̂ = σ((chosen − rejected) / τ) ``[N]`` float64, stable for any margin."""
    margin = (np.asarray(chosen, np.float64) - np.asarray(rejected, np.float64)) / temperature
    return 0.5 * (1.0 + np.tanh(margin / 2.0))


def _pairs(rows: list[Any], data: str | Path) -> list[dict[str, Any]]:
    """The canonical pairs (prompt, chosen, rejected) of ``rows``; a bad row is a one-line DataError."""
    pairs = []
    for index, row in enumerate(rows):
        try:
            pairs.append(to_preference_row(row, index))
        except ValueError as err:
            raise DataError(f"{data}: {err}; fix or delete the row") from None
        for name in ("prompt", "chosen", "rejected"):
            value = pairs[-1].get(name)
            if not isinstance(value, (str, list)):
                got = "missing" if value is None else f"of type {type(value).__name__}"
                raise DataError(
                    f"{data}: row {index}: field {name!r} is {got}; a reward model scores text or messages, "
                    "so give it one"
                )
    return pairs


def label_file(
    data: str | Path,
    reward_model: str | Path,
    out: str | Path,
    *,
    temperature: float = 1.0,
    batch_size: int = 8,
    max_length: int = 2048,
    dtype: str = "float32",
    overwrite: bool = False,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Writes each row of ``data`` to ``out`` with ``chosen_reward``, ``rejected_reward`` (float32 rewards) and
    ``soft_label`` (replacing any the row had). ``out`` must not exist unless ``overwrite``. ``max_length``
    above the model's positions is lowered to them. Returns summary numbers."""
    out = Path(out)
    _check_arguments(temperature, out, overwrite)
    rows = read_jsonl(data)
    if not rows:
        raise DataError(f"{data}: holds no rows; give it preference rows (JSON lines with prompt, chosen, rejected)")
    pairs = _pairs(rows, data)
    tokenizer = load_tokenizer(reward_model)
    mesh = make_mesh({"data": -1})
    model = load_reward_model(reward_model, mesh, DEFAULT_RULES, dtype, pad_id=tokenizer.pad_token_id)
    max_length = min(max_length, model.cfg.max_position_embeddings)
    texts = [
        reward_input_text(tokenizer, p["prompt"], p[side]) for side in ("chosen", "rejected") for p in pairs
    ]  # chosen block, then rejected
    full = tokenizer(texts, add_special_tokens=True)["input_ids"]
    ids = [seq[:max_length] for seq in full]
    empty = next((i for i, seq in enumerate(ids) if not seq), None)
    if empty is not None:
        raise DataError(
            f"{data}: row {empty % len(pairs)}: its prompt and response tokenise to nothing; give the row text to score"
        )
    scores = _score_responses(model, mesh, ids, tokenizer.pad_token_id, batch_size, progress_bar)
    n = len(pairs)
    chosen, rejected = scores[:n], scores[n:]
    labels = soft_labels(chosen, rejected, temperature)
    if is_writer():
        _write_labelled(rows, out, overwrite, chosen, rejected, labels)
    truncated = sum(len(a) > len(b) for a, b in zip(full, ids))
    return {
        "rows": n,
        "truncated": truncated,
        "max_length": max_length,
        "mean_soft_label": float(labels.mean()),
        "agree": float(np.mean(chosen > rejected)),
    }


def _check_arguments(temperature: float, out: Path, overwrite: bool) -> None:
    if not temperature > 0 or not math.isfinite(temperature):
        raise UsageError(
            f"jaxspo label: --temperature must be a finite number > 0, got {temperature}; give e.g. --temperature 1"
        )
    if out.exists() and not overwrite:
        raise UsageError(f"jaxspo label: {out}: already exists; give another --out, or --overwrite to replace it")


def _score_responses(
    model: Any, mesh: Any, ids: list[list[int]], pad_id: int | None, batch_size: int, progress_bar: bool
) -> np.ndarray:
    """The reward model's score ``[N]`` of each token sequence in ``ids``, ``batch_size`` at a time."""
    tokens, valid = pad_right(ids, pad_id if pad_id is not None else 0)
    last = np.array([last_scored_token(seq, model.pad_id) for seq in ids], np.int32)

    @jax.jit
    def score(state, batch):
        params, head = state
        with activation_sharding(mesh, DEFAULT_RULES):
            return (rewards(model.graphdef, params, head, batch["tokens"], batch["valid"], batch["last"]),)

    with tqdm(
        total=len(ids), desc="label", unit="response", disable=not (progress_bar and is_writer()), dynamic_ncols=True
    ) as bar:
        (scores,) = score_in_chunks(
            score,
            (model.params, model.head),
            {"tokens": tokens, "valid": valid, "last": last},
            batch_size,
            mesh,
            DEFAULT_RULES,
            trim=True,
            progress=bar.update,
        )
    return scores


def _write_labelled(
    rows: list[dict], out: Path, overwrite: bool, chosen: np.ndarray, rejected: np.ndarray, labels: np.ndarray
) -> None:
    """Each row plus its rewards and soft label, one JSON line each."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w" if overwrite else "x", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            added = {
                "chosen_reward": float(chosen[i]),
                "rejected_reward": float(rejected[i]),
                "soft_label": float(labels[i]),
            }
            f.write(json.dumps(row | added, ensure_ascii=False) + "\n")
