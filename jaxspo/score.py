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
from jaxspo.models import ModelConfig
from jaxspo.models.hf_config import model_config_from_hf
from jaxspo.models.hf_io import load_params, load_tokenizer
from jaxspo.sharding import DEFAULT_RULES, activation_sharding, make_mesh, named_sharding
from jaxspo.train.state import abstract_model, param_shardings
from jaxspo.objectives.batches import PAIR_FIELDS, PairBatch
from jaxspo.objectives.pairs import padded_pair_logps


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
    cfg = model_config_from_hf(model_dir, ModelConfig(dtype=dtype, param_dtype=dtype))
    max_length = min(max_length, cfg.max_position_embeddings)
    encode = functools.partial(encode_preference_rows, tokenizer=tokenizer, max_length=max_length)
    encoded, _ = encode_screened(rows, encode, str(data), on_bad_row="error", hint="fix or delete the row")
    arrays = {k: v for k, v in encoded.items() if k in PAIR_FIELDS}
    mesh = make_mesh({"data": -1})
    graphdef, abstract = abstract_model(cfg)
    params = load_params(model_dir, cfg, abstract, param_shardings(abstract, mesh, DEFAULT_RULES))

    @jax.jit
    def score(params, batch):
        with activation_sharding(mesh, DEFAULT_RULES):
            return padded_pair_logps(graphdef, params, PairBatch.from_fields(batch))

    n = len(rows)
    order = np.arange(-(-n // batch_size) * batch_size) % n  # the last batch repeats rows: one shape, one compile

    def rows_sharding(x: np.ndarray):
        return named_sharding(("batch",) + (None,) * (x.ndim - 1), x.shape, mesh, DEFAULT_RULES)

    results = []
    for start in range(0, len(order), batch_size):
        host = {k: v[order[start : start + batch_size]] for k, v in arrays.items()}
        batch = {k: jax.device_put(v, rows_sharding(v)) for k, v in host.items()}
        results.append(np.stack([np.asarray(x) for x in score(params, batch)], axis=1))  # [b, 4]
    chosen, rejected, chosen_len, rejected_len = np.concatenate(results)[:n].T
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
        "rows": n,
        "truncated": int(truncated.sum()),
        "mean_margin": float(np.mean(chosen - rejected)),
        "max_length": max_length,
    }


def _cut(arrays: dict[str, np.ndarray], side: str, eos: int) -> np.ndarray:
    """``[N]`` bool: the row fills ``max_length`` without ending in EOS, i.e. its response was cut."""
    tokens, valid = arrays[f"{side}_tokens"], arrays[f"{side}_valid"]
    return valid[:, -1] & (tokens[:, -1] != eos)
