"""Keyphrase scores of a text's words by rapid automatic keyword extraction (RAKE, Rose et al. 2010).

One document at a time, no corpus and no model: the words (whitespace-separated, lower-cased, edge
punctuation stripped) are cut into candidate phrases at every stop word, at punctuation ending a word
(``.,;:!?``) and at line breaks. Each content word w gets deg(w)/freq(w): freq = its number of
occurrences in candidate phrases, deg = the summed length (in words) of the candidate phrases it occurs
in — words that occur in long phrases score high. A phrase scores the sum of its words' scores.

:func:`keyphrases` lists the phrases with their scores; :func:`word_scores` gives every word its phrase's
score (0 for stop words and bare punctuation), so removing the highest-scoring words removes the top
keyphrases first and stop words last.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

# English function words and spoken fillers (ours; the stoplist is RAKE's one setting).
ENGLISH_STOPWORDS = frozenset(
    """
    a about above after again against all almost also although am among an and another any anyone anything
    are around as at be because been before being below between both but by can cannot could did do does
    doing done down during each either else enough etc even ever every few for from further get gets got
    had has have having he her here hers herself him himself his how however i if in into is it its itself
    just least less let like may me might mine more most much must my myself neither no nor not now of off
    often on once one only or other others otherwise our ours ourselves out over own per perhaps please quite
    rather really same shall she should since so some something such than that the their theirs them
    themselves then there therefore these they this those though through thus to too toward towards under
    until up upon us very via was we well were what whatever when where whether which while who whom whose
    why will with within without would yet you your yours yourself yourselves
    um umm uh uhm er erm ah oh hmm mm ok okay yeah yes anyway basically actually
    """.split()
)
_EDGE = re.compile(r"^\W+|\W+$")
_BREAK_AFTER = re.compile(r"[.,;:!?]$")


def keyphrases(
    text: str, spans: list[tuple[int, int]], stopwords: Iterable[str] = ENGLISH_STOPWORDS
) -> list[tuple[list[int], float]]:
    """The text's candidate phrases (word indices, in order) and their RAKE scores.

    ``spans``: the character spans ``[start, end)`` of the text's whitespace-separated words, in order.
    """
    stop = frozenset(w.lower() for w in stopwords)
    words = [_EDGE.sub("", text[a:b]).lower() for a, b in spans]
    phrases: list[list[int]] = []
    current: list[int] = []
    for index, (start, end) in enumerate(spans):
        if words[index] and words[index] not in stop:
            current.append(index)
        elif current:
            phrases.append(current)
            current = []
        gap = text[end : spans[index + 1][0]] if index + 1 < len(spans) else ""
        if current and (_BREAK_AFTER.search(text[start:end]) or "\n" in gap):
            phrases.append(current)
            current = []
    if current:
        phrases.append(current)
    frequency = Counter(words[i] for phrase in phrases for i in phrase)
    degree: Counter[str] = Counter()
    for phrase in phrases:
        for i in phrase:
            degree[words[i]] += len(phrase)
    return [(phrase, sum(degree[words[i]] / frequency[words[i]] for i in phrase)) for phrase in phrases]


def word_scores(text: str, spans: list[tuple[int, int]], stopwords: Iterable[str] = ENGLISH_STOPWORDS) -> list[float]:
    """The RAKE score of the phrase each word belongs to, ``[len(spans)]`` (0 for stop words, punctuation)."""
    scores = [0.0] * len(spans)
    for phrase, score in keyphrases(text, spans, stopwords):
        for i in phrase:
            scores[i] = score
    return scores
