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
from jax.sharding import Mesh
from tqdm import tqdm

from jaxspo.data import read_jsonl
from jaxspo.data.formats import to_preference_row
from jaxspo.distributed import is_writer
from jaxspo.errors import DataError, UsageError
from jaxspo.models.hf_io import load_tokenizer
from jaxspo.models.hf_reward import RewardModel, last_scored_token, load_reward_model, pad_right, rewards
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
                    f"{data}: row {index}: field {name!r} is {got}; "
                    "a reward model scores text or messages, so give it one"
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
    if not temperature > 0 or not math.isfinite(temperature):
        raise UsageError(
            f"jaxspo label: --temperature must be a finite number > 0, got {temperature}; give e.g. --temperature 1"
        )
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"jaxspo label: {out}: already exists; give another --out, or --overwrite to replace it")
    rows = read_jsonl(data)
    if not rows:
        raise DataError(f"{data}: holds no rows; give it preference rows (JSON lines with prompt, chosen, rejected)")
    pairs = _pairs(rows, data)
    tokenizer = load_tokenizer(reward_model)
    mesh = make_mesh({"data": -1})
    model = load_reward_model(reward_model, mesh, DEFAULT_RULES, dtype, pad_id=tokenizer.pad_token_id)
    max_length = min(max_length, model.cfg.max_position_embeddings)
    full, ids = _token_ids(tokenizer, pairs, max_length, data)
    scores = _rewards(model, tokenizer, ids, mesh, batch_size, progress_bar)
    n = len(pairs)
    chosen, rejected = scores[:n], scores[n:]
    labels = soft_labels(chosen, rejected, temperature)
    if is_writer():
        _write(rows, {"chosen_reward": chosen, "rejected_reward": rejected, "soft_label": labels}, out, overwrite)
    return {
        "rows": n,
        "truncated": sum(len(a) > len(b) for a, b in zip(full, ids)),
        "max_length": max_length,
        "mean_soft_label": float(labels.mean()),
        "agree": float(np.mean(chosen > rejected)),
    }


def _token_ids(
    tokenizer: Any, pairs: list[dict[str, Any]], max_length: int, data: str | Path
) -> tuple[list[list[int]], list[list[int]]]:
    """The reward model's input ids of every chosen response, then every rejected one: ``(full, cut to
    max_length)``. A response whose text tokenises to nothing is a one-line DataError."""
    texts = [reward_input_text(tokenizer, p["prompt"], p[side]) for side in ("chosen", "rejected") for p in pairs]
    full = tokenizer(texts, add_special_tokens=True)["input_ids"]
    ids = [seq[:max_length] for seq in full]
    empty = next((i for i, seq in enumerate(ids) if not seq), None)
    if empty is not None:
        raise DataError(
            f"{data}: row {empty % len(pairs)}: its prompt and response tokenise to nothing; give the row text to score"
        )
    return full, ids


def _rewards(
    model: RewardModel, tokenizer: Any, ids: list[list[int]], mesh: Mesh, batch_size: int, progress_bar: bool
) -> np.ndarray:
    """Rewards ``[len(ids)]`` float32 of the id sequences, in sharded chunks of ``batch_size``, with a progress bar."""
    tokens, valid = pad_right(ids, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    last = np.array([last_scored_token(seq, model.pad_id) for seq in ids], np.int32)

    @jax.jit
    def score(state, batch):
        params, head = state
        with activation_sharding(mesh, DEFAULT_RULES):
            return (rewards(model.graphdef, params, head, batch["tokens"], batch["valid"], batch["last"]),)

    shown = progress_bar and is_writer()
    with tqdm(total=len(ids), desc="label", unit="response", disable=not shown, dynamic_ncols=True) as bar:
        arrays = {"tokens": tokens, "valid": valid, "last": last}
        state = (model.params, model.head)
        (scores,) = score_in_chunks(
            score, state, arrays, batch_size, mesh, DEFAULT_RULES, trim=True, progress=bar.update
        )
    return scores


def _write(rows: list[Any], added: dict[str, np.ndarray], out: Path, overwrite: bool) -> None:
    """Each row of ``rows`` with the ``added`` columns' values (``[N]`` each) as JSON lines to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w" if overwrite else "x", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps(row | {name: float(values[i]) for name, values in added.items()}, ensure_ascii=False))
            f.write("\n")
