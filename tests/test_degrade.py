"""Degraded copies for selfsup: counts per level, whole words/sentences, key scoring, seeds, arrays."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from jaxspo.data import build_synthetic_task, encode_preference_rows
from jaxspo.data.degrade import Degrader, degraded_arrays, removal_counts, split_units

CORPUS = [
    "The cat sat on the mat. A dog barked loudly! Birds sing?",
    "Unbelievably, programmers refactor constantly. Tests help.",
    "Transformers tokenise subwords; bytes pair merges everywhere.",
] * 20


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline on a tiny corpus: long words split into several tokens."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def words_of(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize(
    "n, levels, fraction, expected",
    [(10, 3, 0.2, [2, 4, 6]), (4, 3, 0.2, [1, 2, 3]), (1, 2, 0.5, [0, 0]), (3, 3, 0.5, [2, 2, 2]), (5, 2, 0.2, [1, 2])],
)
def test_removal_counts(n, levels, fraction, expected):
    assert removal_counts(n, levels, fraction).tolist() == expected


def test_word_level_removes_exactly_the_count_and_keeps_whole_words(bpe):
    text = "Unbelievably, programmers refactor constantly. Tests help the cat."
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # some words are several tokens
    degrader = Degrader(bpe, "word", "tfidf", levels=3, fraction=0.25, seed=0).fit(
        [bpe(t, add_special_tokens=False)["input_ids"] for t in CORPUS]
    )
    copies, valid = degrader.degrade(ids, np.random.default_rng(0))
    original = words_of(text)
    counts = removal_counts(len(original), 3, 0.25)
    previous = original
    for copy, count in zip(copies, counts):
        kept = words_of(bpe.decode(copy))
        assert len(kept) == len(original) - count
        assert all(w in original for w in kept)  # no partial words
        it = iter(previous)
        assert all(w in it for w in kept)  # nested, order kept: a subsequence of the previous level
        previous = kept
    assert valid.tolist() == [True, True, True]


def test_sentence_level_keeps_whole_sentences(bpe):
    text = "The cat sat on the mat. A dog barked loudly! Birds sing?"
    sentences = [text[a:b] for a, b in split_units(text, "sentence")]
    assert sentences == ["The cat sat on the mat.", "A dog barked loudly!", "Birds sing?"]
    degrader = Degrader(bpe, "sentence", "tfidf", levels=2, fraction=0.3, seed=1).fit(
        [bpe(t, add_special_tokens=False)["input_ids"] for t in CORPUS]
    )
    copies, valid = degrader.degrade(bpe(text, add_special_tokens=False)["input_ids"], np.random.default_rng(1))
    for copy, expected_count in zip(copies, (2, 1)):
        decoded = bpe.decode(copy)
        kept = [s for s in sentences if s in decoded]
        assert len(kept) == expected_count and " ".join(kept) == decoded
    assert valid.tolist() == [True, True]


def test_tfidf_removes_the_rarest_word_first():
    task = build_synthetic_task()
    tok = task.tokenizer
    corpus = [tok(t, add_special_tokens=False)["input_ids"] for t in ["1 2 3", "1 2 4", "1 2 5", "1 2 3"]]
    degrader = Degrader(tok, "word", "tfidf", levels=2, fraction=0.33, seed=0).fit(corpus)
    copies, _ = degrader.degrade(tok("1 2 5", add_special_tokens=False)["input_ids"], np.random.default_rng(0))
    assert tok.decode(copies[0]) == "1 2"  # '5' occurs in one response: highest idf
    assert tok.decode(copies[1]) in ("1", "2")  # then '1' or '2' (equal tf-idf: the seed decides)


def test_surprisal_scores_sum_over_a_words_tokens(bpe):
    text = "Unbelievably cat"
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    n_first = len(bpe("Unbelievably", add_special_tokens=False)["input_ids"])
    assert n_first > 1
    surprisal = np.full(len(ids), 1.0)
    surprisal[-1] = 1.5  # 'cat' is the most surprising token, but 'Unbelievably' has more in total
    degrader = Degrader(bpe, "word", "surprisal", levels=1, fraction=0.5, seed=0)
    (copy,), _ = degrader.degrade(ids, np.random.default_rng(0), surprisal)
    assert bpe.decode(copy).strip() == "cat"
    token = Degrader(bpe, "token", "surprisal", levels=1, fraction=1 / len(ids), seed=0)
    (copy,), _ = token.degrade(ids, np.random.default_rng(0), surprisal)
    assert copy == ids[:-1]  # the single most surprising token goes first


def test_arrays_keep_the_prompt_and_are_reproducible_by_seed():
    task = build_synthetic_task()
    tok = task.tokenizer
    arrays = encode_preference_rows(task.splits["train"][:64], tok, 32)

    def build(seed):
        corpus = [
            ids for ids in (tok(r["chosen"], add_special_tokens=False)["input_ids"] for r in task.splits["train"][:64])
        ]
        return degraded_arrays(
            Degrader(tok, "word", "tfidf", 3, 0.2, seed).fit(corpus), arrays, ("chosen", "rejected"), 32
        )

    out = build(0)
    assert out["selfsup_tokens"].shape == (64, 2, 3, 32) and out["selfsup_level_valid"].shape == (64, 2, 3)
    for side_index, side in enumerate(("chosen", "rejected")):
        context = arrays[f"{side}_valid"] & ~arrays[f"{side}_loss_mask"]
        for k in range(3):
            copy = out["selfsup_tokens"][:, side_index, k]
            np.testing.assert_array_equal(np.where(context, copy, 0), np.where(context, arrays[f"{side}_tokens"], 0))
            words = arrays[f"{side}_loss_mask"].sum(1) - 1  # response words (all rows end in EOS here)
            removed = words - (out["selfsup_loss_mask"][:, side_index, k].sum(1) - 1)
            expected = [removal_counts(int(n), 3, 0.2)[k] for n in words]
            np.testing.assert_array_equal(removed, expected)
    again = build(0)
    for name in out:
        np.testing.assert_array_equal(out[name], again[name])
    other = build(1)
    assert (other["selfsup_tokens"] != out["selfsup_tokens"]).any()  # ties broken differently
