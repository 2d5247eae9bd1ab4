"""Token ids of prompt and completion, for text rows and for conversations under a chat template.

Text rows (TRL "standard"): ``prompt`` and completion are tokenised separately without special
tokens (as TRL does) and joined as ``[bos] prompt completion [eos]``: one BOS (none if the tokenizer
has none) and one EOS, appended by the encoder.

Conversations: the tokenizer's chat template renders the prompt messages with the generation prompt
(``add_generation_prompt=True``) and the whole conversation (prompt + completion messages); both
texts are tokenised with ``add_special_tokens=False`` (the template writes BOS itself if the model
wants one, so it is never doubled). The prompt's ids must be a prefix of the whole conversation's ids
— the **boundary check** — else the row is an error (the template renders the prompt differently when
an answer follows, so no clean prompt/completion split exists). The completion ids are the rest; if
they already contain the EOS token (the template closed the turn with it) no second EOS is appended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from jaxspo.data.formats import field, is_conversation, messages, text

# (completion ids, whether the encoder must append EOS)
Completion = tuple[list[int], bool]


def token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, without special tokens (BOS/EOS are the encoders' job)."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def conversation_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: list[dict], completion: list[dict], where: str
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one conversation under the chat template, boundary-checked."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{where}: a conversational row needs a tokenizer with a chat_template (this one has none)")
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    prompt_ids, full_ids = token_ids(tokenizer, [prompt_text, full_text])
    if full_ids[: len(prompt_ids)] != prompt_ids:
        k = next(
            (i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), min(len(prompt_ids), len(full_ids))
        )
        raise ValueError(
            f"{where}: the chat template's prompt ({len(prompt_ids)} tokens) is not a prefix of prompt + completion "
            f"(they differ at token {k}); the prompt/completion boundary is undefined for this template"
        )
    if len(full_ids) == len(prompt_ids):
        raise ValueError(f"{where} has no tokens")
    return prompt_ids, full_ids[len(prompt_ids) :]


def prompt_ids(rows: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """The context ids of each row's ``prompt``: ``[bos] + ids`` for text, the template's for messages."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    out: list[list[int] | None] = [None] * len(rows)
    plain = []
    for i, row in enumerate(rows):
        prompt = field(row, i, "prompt")
        if is_conversation(prompt):
            rendered = tokenizer.apply_chat_template(
                messages(prompt, f"row {i}: field 'prompt'"), tokenize=False, add_generation_prompt=True
            )
            out[i] = token_ids(tokenizer, [rendered])[0]
        else:
            plain.append((i, text(prompt, f"row {i}: field 'prompt'")))
    for (i, _), ids in zip(plain, token_ids(tokenizer, [t for _, t in plain])):
        out[i] = bos + ids
    return out


def completion_ids(
    rows: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, name: str, contexts: list[list[int]]
) -> list[Completion]:
    """Each row's ``name`` field as completion ids after its context (from :func:`prompt_ids`)."""
    out: list[Completion | None] = [None] * len(rows)
    plain = []
    for i, row in enumerate(rows):
        value, where = field(row, i, name), f"row {i}: field {name!r}"
        if is_conversation(row["prompt"]) != is_conversation(value):
            raise ValueError(f"{where}: prompt and completion must both be text or both be message lists")
        if is_conversation(value):
            context, ids = conversation_ids(tokenizer, row["prompt"], messages(value, where), where)
            if context != contexts[i]:
                raise ValueError(
                    f"{where}: the chat template renders the prompt differently with and without a completion"
                )
            out[i] = (ids, tokenizer.eos_token_id not in ids)
        else:
            plain.append((i, text(value, where)))
    for (i, _), ids in zip(plain, token_ids(tokenizer, [t for _, t in plain])):
        out[i] = (ids, True)
    return out
