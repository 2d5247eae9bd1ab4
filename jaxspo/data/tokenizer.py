"""The built-in task's vocabulary and its tiny word-level tokenizer (one token per space-separated word).

Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then ``reverse``, ``:``, the digits ``0``–``9``
and the filler words. Like a Llama tokenizer, ``tokenizer(text)`` prepends ``<bos>`` (and never appends
``<eos>``); ``add_special_tokens=False`` gives the bare words. An unknown word (``12``, ``hello``)
becomes ``<unk>``; decoding joins words with single spaces.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PROMPT_WORD = "reverse"
SEPARATOR = ":"
DIGITS = tuple(str(d) for d in range(10))
FILLER_WORDS = ("um", "well", "so", "ok")
TASK_VOCAB = (*SPECIAL_TOKENS, PROMPT_WORD, SEPARATOR, *DIGITS, *FILLER_WORDS)


def build_task_tokenizer() -> PreTrainedTokenizerFast:
    """Builds the task tokenizer offline (vocabulary ``TASK_VOCAB``, 20 ids); survives ``save_pretrained``."""
    vocab = {word: i for i, word in enumerate(TASK_VOCAB)}
    core = Tokenizer(WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = Whitespace()
    core.post_processor = TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )
