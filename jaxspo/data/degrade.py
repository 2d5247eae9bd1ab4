"""Degraded copies of responses for selfsup (docs/methods/selfsup.md): remove more and more key content per level.

From a response y split into n units (``token``: its tokens; ``word``: whitespace-separated words;
``sentence``: sentences ending in ``.``, ``!`` or ``?`` or a line break), level k = 1…K keeps all units
except the ``c_k = min(ceil(k·fraction·n), n − 1)`` most "key" ones (nested: level k removes a superset
of level k−1's units; at least one unit always stays). Kept units stay whole and in order (words and
sentences are re-joined with single spaces, tokens are kept as ids), so no copy holds a partial word.
A level whose ``c_k`` equals ``c_{k−1}`` (a short response) adds nothing and is marked invalid.

Key scores [I] (higher = removed first):

- ``tfidf``: the unit's sum over its terms (words, lower-cased; token ids for ``token``) of
  tf·idf, tf = the term's count in the response / the response's term count, idf = log((1 + N)/(1 + df)) + 1
  over the N training responses (:class:`Idf`, fitted once and reused for held-out data);
- ``surprisal``: the unit's sum of its tokens' −log π_ref(token | prefix), given per token by the caller
  (a sharded pass of the reference model, :mod:`jaxspo.objectives.selfsup`);
- ``rake``: keyphrases of the response alone (:mod:`jaxspo.data.keyphrases`, an English stoplist plus
  ``stopwords``): a word scores its phrase's RAKE score (stop words 0, so they go last), a sentence the
  sum of its phrases' scores (a phrase split across sentences counts in proportion). Words and sentences only.

Ties are broken by a random key from ``numpy.random.default_rng([seed, side, row])``: the same seed gives
the same copies, another seed may order tied units differently.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxspo.data.encode import pad_sequences, response_sequence
from jaxspo.data.keyphrases import ENGLISH_STOPWORDS, keyphrases
from jaxspo.losses.selfsup_config import KEY_SCORINGS, UNITS

_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n|$)")
_WORD = re.compile(r"\S+")


def removal_counts(num_units: int, levels: int, fraction: float) -> np.ndarray:
    """Units removed at levels 1…K, ``[K]`` int: min(ceil(k·fraction·n), n − 1), never negative."""
    k = np.arange(1, levels + 1)
    wanted = np.ceil(k * fraction * num_units - 1e-9).astype(np.int64)
    return np.clip(wanted, 0, max(num_units - 1, 0))


def removal_order(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit indices, most key (highest score) first; equal scores in a random order from ``rng``."""
    tie_break = rng.random(len(scores))
    return np.lexsort((tie_break, -np.asarray(scores, np.float64)))


def split_units(text: str, unit: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the words or sentences of ``text`` (stripped, non-empty)."""
    pattern = _WORD if unit == "word" else _SENTENCE
    spans = []
    for match in pattern.finditer(text):
        start, end = match.span()
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + len(piece.rstrip())))
    return spans


class Idf:
    """Smoothed inverse document frequency over a corpus of responses (each a list of terms)."""

    def __init__(self, documents: Sequence[Sequence[object]]):
        self.num_documents = len(documents)
        self.document_frequency = Counter(term for doc in documents for term in set(doc))

    def __call__(self, term: object) -> float:
        df = self.document_frequency.get(term, 0)
        return math.log((1 + self.num_documents) / (1 + df)) + 1.0


def _terms(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


class Degrader:
    """Makes K degraded copies of responses given as token ids (see the module docstring).

    ``levels`` K ≥ 1, ``fraction`` in (0, 1]: each level removes about ``fraction`` more of the units.
    ``stopwords``: words added to the English stoplist of ``rake``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        unit: str,
        key_scoring: str,
        levels: int,
        fraction: float,
        seed: int,
        stopwords: Sequence[str] = (),
    ):
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        if key_scoring not in KEY_SCORINGS:
            raise ValueError(f"key_scoring must be one of {KEY_SCORINGS}, got {key_scoring!r}")
        if key_scoring == "rake" and unit == "token":
            raise ValueError("key_scoring 'rake' scores words and phrases: use the word or sentence unit")
        self.tokenizer, self.unit, self.key_scoring = tokenizer, unit, key_scoring
        self.levels, self.fraction, self.seed = levels, fraction, seed
        self.stopwords = ENGLISH_STOPWORDS | {w.lower() for w in stopwords}
        self.idf: Idf | None = None

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def document_terms(self, ids: Sequence[int]) -> list[object]:
        """A response's TF-IDF terms: its token ids (``token`` unit) or lower-cased words."""
        return list(ids) if self.unit == "token" else _terms(self.text(ids))

    def fit(self, responses: Sequence[Sequence[int]]) -> "Degrader":
        """Fits the IDF on the training responses (needed for ``tfidf``)."""
        self.idf = Idf([self.document_terms(ids) for ids in responses])
        return self

    def _units(self, ids: list[int]) -> tuple[list[object], list[list[int]]]:
        """(units, token positions of each unit). Units are ids (``token``) or text pieces."""
        if self.unit == "token":
            return list(ids), [[i] for i in range(len(ids))]
        text = self.text(ids)
        spans = split_units(text, self.unit)
        units = [text[a:b] for a, b in spans]
        if self.key_scoring != "surprisal":
            return units, [[] for _ in units]
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(encoded["input_ids"]) != list(ids):
            raise ValueError(
                f"surprisal scoring needs the decoded text to re-tokenise to the same ids ({self.unit} unit)"
            )
        members: list[list[int]] = [[] for _ in units]
        for position, (_, end) in enumerate(encoded["offset_mapping"]):
            index = next((u for u, (a, b) in enumerate(spans) if a < end <= b), None)
            if index is not None:
                members[index].append(position)
        return units, members

    def _rake_scores(self, ids: list[int]) -> np.ndarray:
        """RAKE key scores of the response's words or sentences (see the module docstring)."""
        text = self.text(ids)
        words = split_units(text, "word")
        units = words if self.unit == "word" else split_units(text, self.unit)
        scores = np.zeros(len(units))
        for phrase, score in keyphrases(text, words, self.stopwords):
            for i in phrase:
                start = words[i][0]
                unit = next(u for u, (a, b) in enumerate(units) if a <= start < b)
                scores[unit] += score if self.unit == "word" else score / len(phrase)
        return scores

    def _scores(
        self, ids: list[int], units: list[object], members: list[list[int]], surprisal: np.ndarray | None
    ) -> np.ndarray:
        if self.key_scoring == "rake":
            return self._rake_scores(ids)
        if self.key_scoring == "surprisal":
            if surprisal is None:
                raise ValueError("key_scoring 'surprisal' needs per-token surprisal")
            return np.array([float(np.sum(surprisal[m])) for m in members])
        if self.idf is None:
            raise ValueError("key_scoring 'tfidf' needs fit() on the training responses first")
        counts = Counter(self.document_terms(ids))
        total = max(sum(counts.values()), 1)
        weight = {term: count / total * self.idf(term) for term, count in counts.items()}
        if self.unit == "token":
            return np.array([weight[u] for u in units])
        return np.array([sum(weight[t] for t in _terms(u)) for u in units])

    def degrade(
        self, ids: Sequence[int], rng: np.random.Generator, surprisal: np.ndarray | None = None
    ) -> tuple[list[list[int]], np.ndarray]:
        """K degraded copies of one response (token ids, no special tokens) and which levels are valid ``[K]``.

        ``surprisal`` ``[len(ids)]``: −log π_ref of each token (``surprisal`` scoring only).
        """
        ids = list(ids)
        units, members = self._units(ids)
        counts = removal_counts(len(units), self.levels, self.fraction)
        valid = np.diff(np.concatenate([[0], counts])) > 0
        order = removal_order(self._scores(ids, units, members, surprisal), rng)
        copies = []
        for count in counts:
            removed = set(order[:count].tolist())
            kept = [u for i, u in enumerate(units) if i not in removed]
            if self.unit == "token":
                copies.append(kept)
            else:
                copies.append(self.tokenizer(" ".join(kept), add_special_tokens=False)["input_ids"])
        return copies, valid


def response_ids(tokens: np.ndarray, loss_mask: np.ndarray, eos_id: int) -> list[list[int]]:
    """Response token ids of encoded rows ``[N, T]`` (loss-masked positions, without the closing EOS)."""
    out = []
    for row, mask in zip(tokens, loss_mask):
        ids = row[mask].tolist()
        out.append(ids[:-1] if ids and ids[-1] == eos_id else ids)
    return out


def degraded_arrays(
    degrader: Degrader,
    arrays: dict[str, np.ndarray],
    sides: Sequence[str],
    max_length: int,
    surprisal: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Encoded degraded copies of each row's ``sides`` responses, with the row's own prompt ids.

    ``arrays``: encoded preference rows (``{side}_tokens/_loss_mask/_valid`` ``[N, T]``). ``surprisal``:
    side → ``[N, T − 1]`` −log π_ref of token t + 1 (as :func:`~jaxspo.train.logprobs.token_logps`).
    Returns ``selfsup_tokens`` ``[N, S, K, T]`` int32, ``selfsup_loss_mask``, ``selfsup_valid`` (same, bool)
    and ``selfsup_level_valid`` ``[N, S, K]`` bool, S = len(sides).
    """
    tok = degrader.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    per_side = []
    for side_index, side in enumerate(sides):
        tokens, mask, valid = arrays[f"{side}_tokens"], arrays[f"{side}_loss_mask"], arrays[f"{side}_valid"]
        responses = response_ids(tokens, mask, eos)
        sequences, level_valid = [], []
        for row, ids in enumerate(responses):
            context = tokens[row][valid[row] & ~mask[row]].tolist()
            token_surprisal = None
            if surprisal is not None:
                token_surprisal = surprisal[side][row][mask[row][1:]][: len(ids)]
            rng = np.random.default_rng([degrader.seed, side_index, row])
            copies, ok = degrader.degrade(ids, rng, token_surprisal)
            sequences += [
                response_sequence(context, copy, eos, max_length, row, f"{side} level {k + 1}")
                for k, copy in enumerate(copies)
            ]
            level_valid.append(ok)
        packed = pad_sequences(sequences, max_length, pad)
        per_side.append(
            [x.reshape(len(responses), degrader.levels, max_length) for x in packed] + [np.stack(level_valid)]
        )
    names = ("selfsup_tokens", "selfsup_loss_mask", "selfsup_valid", "selfsup_level_valid")
    return {name: np.stack([side[i] for side in per_side], axis=1) for i, name in enumerate(names)}
