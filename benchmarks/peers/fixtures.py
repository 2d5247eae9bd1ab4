"""Benchmark fixtures shared by every system: one HF Llama folder per shape, its tokenizer, and the pairs.

``build_fixture(root, shape)`` writes (once; reused when its ``fixture.json`` exists)::

    root/<shape>/model/        config.json, model.safetensors (random init, seeded), tokenizer files
    root/<shape>/train.jsonl   prompt / chosen / rejected text rows (also read as jaxspo's ``test`` split)
    root/<shape>/test.jsonl    a copy (jaxspo's data source reads a train and an eval split)
    root/<shape>/tokens.jsonl  prompt_ids / chosen_ids / rejected_ids of the same rows (for Tunix)
    root/<shape>/fixture.json  shape, parameter counts, token statistics

The tokenizer is a byte-level BPE of ``VOCAB_SIZE`` tokens trained offline on the rows, with ``<pad>``
and ``</s>`` and no BOS, so every system encodes ``prompt + chosen + </s>`` to the same ids (the
byte-level pre-tokenizer splits at the space that starts every response, which is checked here).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

VOCAB_SIZE = 2048
PAD, EOS = "<pad>", "</s>"


@dataclasses.dataclass(frozen=True)
class Shape:
    """A Llama shape: multi-head attention (kv heads = heads), untied embeddings, SwiGLU MLP."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


SHAPES = {
    "small": Shape(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=688),  # 4.21M parameters
    "medium": Shape(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1376),  # 27.39M
    "tiny": Shape(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),  # tests only
}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Synthetic pairs: words drawn from a seeded lexicon; lengths in words (≈ tokens)."""

    num_pairs: int = 512
    seed: int = 0
    lexicon_size: int = 600
    prompt_words: tuple[int, int] = (16, 40)  # inclusive range
    response_words: tuple[int, int] = (19, 46)


def _lexicon(rng: np.random.Generator, size: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters, size=int(rng.integers(2, 9)))))
    return sorted(words)


def synthetic_pairs(spec: DataSpec) -> list[dict[str, str]]:
    """``spec.num_pairs`` rows {prompt, chosen, rejected}; responses start with a space (a token boundary)."""
    rng = np.random.default_rng(spec.seed)
    lexicon = _lexicon(rng, spec.lexicon_size)
    zipf = 1.0 / np.arange(1, len(lexicon) + 1)  # a skewed word distribution, like text
    zipf /= zipf.sum()

    def words(bounds: tuple[int, int]) -> str:
        return " ".join(rng.choice(lexicon, size=int(rng.integers(bounds[0], bounds[1] + 1)), p=zipf))

    rows = []
    for _ in range(spec.num_pairs):
        prompt = words(spec.prompt_words)
        chosen, rejected = " " + words(spec.response_words), " " + words(spec.response_words)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``<pad>`` (id 0) and ``</s>`` (id 1), no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def tokenized_rows(rows: list[dict[str, str]], tokenizer: Any) -> list[dict[str, list[int]]]:
    """Ids of each row's prompt and responses (responses end with ``</s>``); checks that tokenising
    ``prompt + response`` whole gives the same ids (as TRL does), so all systems see one sequence."""
    eos = tokenizer.eos_token_id
    out = []
    for i, row in enumerate(rows):
        ids = {k: tokenizer(row[k], add_special_tokens=False)["input_ids"] for k in ("prompt", "chosen", "rejected")}
        for side in ("chosen", "rejected"):
            whole = tokenizer(row["prompt"] + row[side] + EOS, add_special_tokens=False)["input_ids"]
            if whole != ids["prompt"] + ids[side] + [eos]:
                raise ValueError(f"row {i}: '{side}' does not tokenise at the prompt boundary")
        out.append(
            {"prompt_ids": ids["prompt"], "chosen_ids": ids["chosen"] + [eos], "rejected_ids": ids["rejected"] + [eos]}
        )
    return out


def llama_config(shape: Shape, tokenizer: Any) -> Any:
    """The ``transformers.LlamaConfig`` of ``shape`` over the tokenizer's vocabulary."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )


def parameter_counts(config: dict[str, Any]) -> dict[str, int]:
    """Parameters of a Llama ``config.json``: total, the matmul weights (N in the FLOP count: everything
    but the embedding table and the norm scales), and the embedding table."""
    d, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    attention = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d
    mlp = 3 * d * config["intermediate_size"]
    head = 0 if config.get("tie_word_embeddings") else d * vocab
    matmul = layers * (attention + mlp) + d * vocab  # the LM head is a matmul, tied or not
    norms = (2 * layers + 1) * d
    embedding = d * vocab
    return {"total": embedding + layers * (attention + mlp) + head + norms, "matmul": matmul, "embedding": embedding}


def token_stats(tokens: list[dict[str, list[int]]], batch_size: int) -> dict[str, float]:
    """Longest prompt and response, and mean real tokens per step (prompt counted for both sides)."""
    per_pair = [2 * len(t["prompt_ids"]) + len(t["chosen_ids"]) + len(t["rejected_ids"]) for t in tokens]
    return {
        "max_prompt_tokens": max(len(t["prompt_ids"]) for t in tokens),
        "max_response_tokens": max(max(len(t["chosen_ids"]), len(t["rejected_ids"])) for t in tokens),
        "max_sequence_tokens": max(
            len(t["prompt_ids"]) + max(len(t["chosen_ids"]), len(t["rejected_ids"])) for t in tokens
        ),
        "mean_real_tokens_per_step": float(np.mean(per_pair)) * batch_size,
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_fixture(
    root: Path, shape_name: str, spec: DataSpec = DataSpec(), batch_size: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Writes the fixture of ``shape_name`` under ``root`` (skipped if present); returns its ``fixture.json``."""
    import torch
    from transformers import LlamaForCausalLM

    folder = root / shape_name
    info_path = folder / "fixture.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    shape = SHAPES[shape_name]
    rows = synthetic_pairs(spec)
    tokenizer = train_tokenizer([r["prompt"] + r["chosen"] for r in rows] + [r["rejected"] for r in rows])
    tokens = tokenized_rows(rows, tokenizer)
    model_dir = folder / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(shape, tokenizer))
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    for name, data in (("train.jsonl", rows), ("test.jsonl", rows), ("tokens.jsonl", tokens)):
        _write_jsonl(folder / name, data)
    config = json.loads((model_dir / "config.json").read_text())
    counted = parameter_counts(config)
    actual = sum(p.numel() for p in model.parameters())
    if counted["total"] != actual:
        raise AssertionError(f"parameter count {counted['total']} != torch's {actual}")
    info = {
        "shape": shape_name,
        **dataclasses.asdict(shape),
        "vocab_size": len(tokenizer),
        "parameters": counted,
        "num_pairs": spec.num_pairs,
        "data_seed": spec.seed,
        "init_seed": seed,
        **token_stats(tokens, batch_size),
    }
    info_path.write_text(json.dumps(info, indent=1))
    return info
