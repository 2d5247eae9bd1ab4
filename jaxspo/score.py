"""``jaxspo score MODEL_DIR DATA.jsonl --out OUT.jsonl``: sequence log-probs of chosen and rejected.

The rows are encoded by :func:`jaxspo.data.encode.encode_preference_rows` and scored by
:func:`jaxspo.objectives.pairs.padded_pair_logps`, exactly as the train step scores them, under the HF model loaded
onto all local devices (rows split over the ``data`` axis).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import numpy as np

from jaxspo.data import read_jsonl
from jaxspo.data.encode import encode_preference_rows
from jaxspo.data.screen import encode_screened
from jaxspo.models.hf_io import load_tokenizer
from jaxspo.inference_model import load_inference_model
from jaxspo.objectives.batches import PAIR_FIELDS, PairBatch
from jaxspo.objectives.pairs import padded_pair_logps
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh
from jaxspo.train.scoring import score_in_chunks


def score_file(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    max_length: int = 1024,
    batch_size: int = 8,
    dtype: str = "float32",
) -> dict[str, float]:
    """Writes each row of ``data`` to ``out`` with ``chosen_logp``, ``rejected_logp`` (sums over the response
    tokens and the closing EOS), ``chosen_length``, ``rejected_length`` (tokens scored) and ``truncated``
    (a response was cut at ``max_length``). ``max_length`` above the model's positions is lowered to them.
    Returns summary numbers (rows, truncated, mean margin, the max_length used)."""
    rows = read_jsonl(data)
    tokenizer = load_tokenizer(model_dir)
    mesh = make_mesh({"data": -1})
    model = load_inference_model(model_dir, mesh, DEFAULT_RULES, dtype)
    max_length = min(max_length, model.cfg.max_position_embeddings)
    encode = functools.partial(encode_preference_rows, tokenizer=tokenizer, max_length=max_length)
    encoded, _ = encode_screened(rows, encode, str(data), on_bad_row="error", hint="fix or delete the row")
    arrays = {k: v for k, v in encoded.items() if k in PAIR_FIELDS}

    @jax.jit
    def score(params, batch):
        with activation_sharding(mesh, DEFAULT_RULES):
            return padded_pair_logps(model.graphdef, params, PairBatch.from_fields(batch))

    logps = score_in_chunks(score, model.params, arrays, batch_size, mesh, DEFAULT_RULES, trim=True)
    chosen, rejected, chosen_len, rejected_len = logps  # [N] each
    truncated = _cut(arrays, "chosen", tokenizer.eos_token_id) | _cut(arrays, "rejected", tokenizer.eos_token_id)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            scores = {
                "chosen_logp": float(chosen[i]),
                "rejected_logp": float(rejected[i]),
                "chosen_length": int(chosen_len[i]),
                "rejected_length": int(rejected_len[i]),
                "truncated": bool(truncated[i]),
            }
            f.write(json.dumps(row | scores, ensure_ascii=False) + "\n")
    return {
        "rows": len(rows),
        "truncated": int(truncated.sum()),
        "mean_margin": float(np.mean(chosen - rejected)),
        "max_length": max_length,
    }


def _cut(arrays: dict[str, np.ndarray], side: str, eos: int) -> np.ndarray:
    """``[N]`` bool: the row fills ``max_length`` without ending in EOS, i.e. its response was cut."""
    tokens, valid = arrays[f"{side}_tokens"], arrays[f"{side}_valid"]
    return valid[:, -1] & (tokens[:, -1] != eos)
