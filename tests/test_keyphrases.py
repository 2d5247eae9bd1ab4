"""RAKE key content for selfsup: phrase scores by hand, stop words and fillers never key, degraded copies."""

import numpy as np
import pytest

from jaxspo.config import ConfigError, load_config
from jaxspo.data import build_synthetic_task
from jaxspo.data.degrade import Degrader, split_units
from jaxspo.data.keyphrases import keyphrases, word_scores
from jaxspo.data.tokenizer import DIGITS, FILLER_WORDS
from jaxspo.losses.selfsup_config import SelfsupConfig


def phrases_of(text: str, **kwargs) -> list[tuple[list[str], float]]:
    words = text.split()
    return [
        ([words[i] for i in phrase], score) for phrase, score in keyphrases(text, split_units(text, "word"), **kwargs)
    ]


def test_phrase_scores_are_the_sum_of_degree_over_frequency():
    # phrases: [3 1] [4] [1 5 9] [2]; freq(1) = 2, deg(1) = 2 + 3; deg/freq: 3→2, 1→2.5, 4→1, 5→3, 9→3, 2→1
    assert phrases_of("3 1 um 4 well 1 5 9 so 2") == [
        (["3", "1"], 4.5),
        (["4"], 1.0),
        (["1", "5", "9"], 8.5),
        (["2"], 1.0),
    ]


def test_stop_words_punctuation_and_line_breaks_end_phrases():
    text = "The fast red car, um, and the old boat\nBlue sky wins"
    assert [p for p, _ in phrases_of(text)] == [["fast", "red", "car,"], ["old", "boat"], ["Blue", "sky", "wins"]]
    scores = word_scores(text, split_units(text, "word"))
    words = text.split()
    assert all(s == 0.0 for w, s in zip(words, scores) if w.strip(",.").lower() in ("the", "um", "and"))
    assert [p for p, _ in phrases_of("fast car sky", stopwords=["car"])] == [["fast"], ["sky"]]


@pytest.fixture(scope="module")
def task():
    return build_synthetic_task()


def test_builtin_task_removes_digits_before_any_filler(task):
    """On the built-in task every filler is a stop word: no copy loses a filler while it still holds a digit."""
    tok = task.tokenizer
    degrader = Degrader(tok, "word", "rake", levels=3, fraction=0.3, seed=0)
    checked = 0
    for row, r in enumerate(task.splits["train"][:200]):
        words = r["chosen"].split()
        fillers = sum(w in FILLER_WORDS for w in words)
        copies, valid = degrader.degrade(
            tok(r["chosen"], add_special_tokens=False)["input_ids"], np.random.default_rng(row)
        )
        for copy, ok in zip(copies, valid):
            kept = tok.decode(copy).split()
            if ok and any(w in DIGITS for w in kept):
                assert sum(w in FILLER_WORDS for w in kept) == fillers
                checked += 1
    assert checked > 100


def test_extra_stopwords_and_sentence_units(task):
    tok = task.tokenizer
    ids = tok("3 1 um 4", add_special_tokens=False)["input_ids"]
    (copy,), _ = Degrader(tok, "word", "rake", levels=1, fraction=0.5, seed=0).degrade(ids, np.random.default_rng(0))
    assert tok.decode(copy) == "um 4"  # the two-word phrase '3 1' first
    extra = Degrader(tok, "word", "rake", levels=1, fraction=0.5, seed=0, stopwords=["3", "1"])
    (copy,), _ = extra.degrade(ids, np.random.default_rng(0))
    assert tok.decode(copy) in ("3 1", "1 um", "3 um")  # now '4' is the only key word, then a tie of zeros
    assert "4" not in tok.decode(copy).split()


def test_sentence_unit_removes_the_sentence_with_most_keyphrase_content(task):
    class Words:  # a whitespace tokenizer over a fixed vocabulary, enough for sentence units
        vocab = ["the", "cat", "sat.", "a", "big", "old", "grey", "dog", "ran.", "so."]

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(self.vocab[i] for i in ids)

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [self.vocab.index(w) for w in text.split()]}

    tok = Words()
    ids = tok("the cat sat. a big old grey dog ran. so.")["input_ids"]
    (copy,), _ = Degrader(tok, "sentence", "rake", levels=1, fraction=0.3, seed=0).degrade(
        ids, np.random.default_rng(0)
    )
    assert tok.decode(copy) == "the cat sat. so."


def test_rake_with_token_units_is_refused():
    with pytest.raises(ConfigError, match="loss.selfsup.unit to word or sentence"):
        load_config(None, ["loss.selfsup.key_scoring=rake", "loss.selfsup.unit=token"])
    SelfsupConfig(key_scoring="rake", unit="sentence").validate()
    with pytest.raises(ValueError, match="rake"):
        Degrader(None, "token", "rake", levels=1, fraction=0.5, seed=0)
