"""Rows → fixed-shape numpy arrays for the jitted steps, and response decoding.

Training sequences are right padded to a static length ``T = max_length`` (so XLA never recompiles; the
batch pipeline, :mod:`jaxspo.data.pipeline`, later cuts batches to a few shorter static widths)::

    <bos> prompt… response… <eos> <pad> <pad> …

Rows may be text or conversations (:mod:`jaxspo.data.formats`); :mod:`jaxspo.data.chat` gives the
prompt and completion ids: for text, separately tokenised without special tokens and joined, so there is
exactly one ``<bos>`` and one ``<eos>`` (a tokenizer without a BOS token gets none); for conversations,
the chat template's rendering, boundary-checked, with the template's own BOS/EOS. Per position ``t``:

- ``tokens[t]`` (int32): the token id; the pad id after the end of the sequence.
- ``loss_mask[t]`` (bool): True iff token ``t`` is a response token or the closing ``<eos>`` — i.e. ``t``
  is a prediction *target* whose log-prob ``log p(tokens[t] | tokens[<t])`` counts. Never True at ``t = 0``.
- ``valid[t]`` (bool): True iff position ``t`` is not padding.

Length budget: with ``max_prompt_length`` a longer prompt keeps its BOS and its last tokens; then if the
row exceeds ``max_length`` the response is cut from the right and carries no ``<eos>``; a prompt that
leaves no room for one response token raises ValueError. Bad rows raise ValueError naming the row index
and the field.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxspo.data.chat import completion_ids, prompt_ids
from jaxspo.data.formats import to_preference_row

Layout = tuple[list[int], int]  # (token ids, number of leading context tokens, which are not targets)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], int, int]:
    """(prefix, eos, pad): prefix is ``[bos]``, or ``[]`` if the tokenizer has no BOS token."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token")
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad_token; set one, e.g. to its eos_token")
    bos = tokenizer.bos_token_id
    return ([] if bos is None else [bos]), tokenizer.eos_token_id, tokenizer.pad_token_id


def soft_label_of(row: Mapping[str, Any], index: int) -> float:
    """The row's ``soft_label`` in [0, 1]; 1.0 when absent or None."""
    value = row.get("soft_label")
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"row {index}: field 'soft_label' must be a number, got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
        raise ValueError(f"row {index}: field 'soft_label' must be in [0, 1], got {value}")
    return float(value)


def keep_prompt_end(context: list[int], max_prompt_length: int | None, bos: int | None) -> list[int]:
    """The prompt budget: a context longer than ``max_prompt_length`` keeps its leading BOS (if any) and
    its last tokens; ``None`` = no budget."""
    if max_prompt_length is None or len(context) <= max_prompt_length:
        return context
    head = context[:1] if context and context[0] == bos else []
    return head + context[len(context) - (max_prompt_length - len(head)) :]


def response_sequence(
    context: list[int], response: list[int], eos: int | None, max_length: int, index: int, field: str
) -> Layout:
    """``context + response + [eos]`` (no eos if ``eos`` is None), the response cut from the right (and no
    eos) if it does not fit."""
    if not response:
        raise ValueError(f"row {index}: field {field!r} has no tokens")
    room = max_length - len(context)
    if not context or room < 1:
        raise ValueError(
            f"row {index}: field 'prompt' takes {len(context)} tokens (with BOS); it needs between 1 and "
            f"max_length - 1 = {max_length - 1} to leave room for a response"
        )
    closed = response + ([] if eos is None else [eos])
    body = closed if len(closed) <= room else response[:room]
    return context + body, len(context)


def pad_sequences(sequences: list[Layout], max_length: int, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pads sequences to ``[N, max_length]``: (tokens int32, loss_mask bool, valid bool)."""
    tokens = np.full((len(sequences), max_length), pad, dtype=np.int32)
    loss_mask = np.zeros((len(sequences), max_length), dtype=bool)
    valid = np.zeros((len(sequences), max_length), dtype=bool)
    for i, (ids, num_context) in enumerate(sequences):
        tokens[i, : len(ids)] = ids
        loss_mask[i, num_context : len(ids)] = True
        valid[i, : len(ids)] = True
    return tokens, loss_mask, valid


def check_encode_inputs(items: Sequence[Any], length: int, length_name: str) -> None:
    """ValueError unless there is something to encode and ``length`` (named ``length_name``) is a positive int."""
    if not items:
        raise ValueError("nothing to encode: the input list is empty")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"{length_name} must be a positive int, got {length!r}")


def _encode_responses(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    response_fields: tuple[str, ...],
    max_prompt_length: int | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Encodes ``prompt`` + each response field of every row: field → (tokens, loss_mask, valid)."""
    check_encode_inputs(rows, max_length, "max_length")
    _, eos, pad = special_token_ids(tokenizer)
    contexts = prompt_ids(rows, tokenizer)
    packed = {}
    for field in response_fields:
        completions = completion_ids(rows, tokenizer, field, contexts)
        sequences = [
            response_sequence(
                keep_prompt_end(context, max_prompt_length, tokenizer.bos_token_id),
                ids,
                eos if add_eos else None,
                max_length,
                i,
                field,
            )
            for i, (context, (ids, add_eos)) in enumerate(zip(contexts, completions))
        ]
        packed[field] = pad_sequences(sequences, max_length, pad)
    return packed


def encode_preference_rows(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int | None = None,
) -> dict[str, np.ndarray]:
    """Preference rows in any format of :mod:`jaxspo.data.formats` (text or conversations, optional
    ``soft_label``) → arrays. ``max_prompt_length`` (None = no budget) cuts long prompts from the left.

    Returns ``{chosen,rejected}_{tokens,loss_mask,valid}`` ``[N, max_length]`` (int32 / bool / bool) and
    ``soft_label`` ``[N]`` float32 (P(chosen ≻ rejected); 1.0 where the row has none).
    """
    rows = [to_preference_row(row, i) for i, row in enumerate(rows)]
    packed = _encode_responses(rows, tokenizer, max_length, ("chosen", "rejected"), max_prompt_length)
    for i, row in enumerate(rows):
        if row["chosen"] == row["rejected"]:
            raise ValueError(f"row {i}: field 'rejected' is identical to field 'chosen'")
    arrays = {}
    for field, (tokens, loss_mask, valid) in packed.items():
        arrays |= {f"{field}_tokens": tokens, f"{field}_loss_mask": loss_mask, f"{field}_valid": valid}
    arrays["soft_label"] = np.array([soft_label_of(row, i) for i, row in enumerate(rows)], dtype=np.float32)
    return arrays


def encode_sft_rows(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int | None = None,
) -> dict[str, np.ndarray]:
    """SFT rows (``prompt``, ``completion``: both text or both messages) → ``tokens``, ``loss_mask``,
    ``valid`` ``[N, max_length]``.

    The loss mask covers the completion tokens and the closing ``<eos>``.
    """
    tokens, loss_mask, valid = _encode_responses(rows, tokenizer, max_length, ("completion",), max_prompt_length)[
        "completion"
    ]
    return {"tokens": tokens, "loss_mask": loss_mask, "valid": valid}


def encode_prompts(
    prompts: Sequence[str | list], tokenizer: PreTrainedTokenizerBase, max_prompt_length: int, keep_end: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts (text or message lists) → LEFT-padded ``(tokens [N, P] int32, valid [N, P] bool)``, ``P =
    max_prompt_length``.

    Each row is ``<pad>… <bos> prompt…`` (a conversation: its chat template with the generation prompt) so
    that generation continues right after the last column. A prompt longer than ``P`` tokens raises
    ValueError naming its index, or with ``keep_end`` keeps its BOS and last tokens.
    """
    check_encode_inputs(prompts, max_prompt_length, "max_prompt_length")
    _, _, pad = special_token_ids(tokenizer)
    try:
        contexts = prompt_ids([{"prompt": p} for p in prompts], tokenizer)
    except ValueError as err:
        raise ValueError(str(err).replace("row ", "prompt ", 1).replace(": field 'prompt'", "", 1)) from None
    width = max_prompt_length
    tokens = np.full((len(prompts), width), pad, dtype=np.int32)
    valid = np.zeros((len(prompts), width), dtype=bool)
    for i, ids in enumerate(contexts):
        if keep_end:
            ids = keep_prompt_end(ids, width, tokenizer.bos_token_id)
        if len(ids) > max_prompt_length:
            raise ValueError(f"prompt {i}: {len(ids)} tokens (with BOS) exceed max_prompt_length={width}")
        tokens[i, width - len(ids) :] = ids
        valid[i, width - len(ids) :] = True
    return tokens, valid


def decode_responses(tokens: np.ndarray, valid: np.ndarray, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Sampled responses ``[N, T]`` → N strings: valid positions before the first EOS, minus BOS/pad."""
    tokens, valid = np.asarray(tokens), np.asarray(valid, dtype=bool)
    if tokens.ndim != 2 or tokens.shape != valid.shape:
        raise ValueError(f"tokens {tokens.shape} and valid {valid.shape} must both be [N, T]")
    eos, dropped = tokenizer.eos_token_id, {tokenizer.bos_token_id, tokenizer.pad_token_id}
    kept = []
    for row, keep in zip(tokens, valid):
        ids = row[keep].tolist()
        ids = ids[: ids.index(eos)] if eos in ids else ids
        kept.append([t for t in ids if t not in dropped])
    return tokenizer.batch_decode(kept, skip_special_tokens=False)
