"""A session's vocabulary, spelled as given.

The glossary in Whisper's prompt (`SttRequest.hotwords`, as `glossary` writes it) makes the model *prefer* a name,
but a small model often still writes what it heard: "Plant Chat" for "Plat Chat", "Abby" for "Abbie", "side show"
for "Sideshow". So the text is corrected too. A run of one to three recognised words with the term's letters (case,
spaces and punctuation aside) always becomes the term. One that spells *nearly* the same (a normalised edit distance
of at most 0.25, one letter in four; 0.5 when they also sound alike by Soundex) becomes it only where the model was
unsure of one of those words (probability under 0.6): a misheard name comes out unsure, a word said and heard
("had", never "Chad") does not. A one-word term may be further off (0.4, two letters in five: "chant" for "chad",
"supposed" for "disposed") where the model all but guessed a word of about its length (under 0.35). A word Whisper
wrote in pieces ("old" "-sposed") is as unsure as its least sure piece. Partials carry no word probabilities, so
they get exact matches only; their final gets the rest. `loadtest.vocabulary` measures both sides: recall of the
terms, and that a vocabulary of words nobody said changes nothing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TypeVar

from rapidfuzz.distance import Levenshtein

from actors.stt.interface import WordTiming

T = TypeVar("T")

CLOSE = 0.25  # normalised edit distance that always counts as the term
SOUNDS_CLOSE = 0.5  # ...and when the two sound alike (same Soundex)
MIN_FUZZY = 4  # shorter terms only match exactly (letters, case and spaces ignored): "Sie" is not "see"
UNSURE = 0.6  # a near miss is corrected only where one of its words came out less probable than this
FAR = 0.4  # ...and a farther one (two letters in five: "chant" for "chad", "supposed" for "disposed")...
GUESS = 0.35  # ...only where the model all but guessed one of its words
_LETTERS = re.compile(r"[^\w]|_", re.UNICODE)
_TRAIL = re.compile(r"[^\w]+$", re.UNICODE)
_LEAD = re.compile(r"^[^\w]+", re.UNICODE)


def key(text: str) -> str:
    return _LETTERS.sub("", text).casefold()


@lru_cache(maxsize=4096)
def soundex(word: str) -> str:
    codes = {**dict.fromkeys("bfpv", "1"), **dict.fromkeys("cgjkqsxz", "2"), **dict.fromkeys("dt", "3"), "l": "4",
             **dict.fromkeys("mn", "5"), "r": "6"}
    letters = [c for c in word if "a" <= c <= "z"]
    if not letters:
        return ""
    out, last = letters[0], codes.get(letters[0], "")
    for c in letters[1:]:
        code = codes.get(c, "")
        if code and code != last:
            out += code
        if c not in "hw":
            last = code
    return (out + "000")[:4]


@lru_cache(maxsize=256)
def glossary(vocabulary: tuple[str, ...]) -> str:
    """The terms as Whisper's prompt reads them (`SttRequest.hotwords`): a list that ends as a sentence does.
    Without the full stop Whisper reads the speech as the list's continuation: it writes it in the list's style
    (lower case, unpunctuated) and skips the speech's first words where they repeat the list's last term ("Giancarlo
    Fisichella perdeu…" came out "perdeu…", "Alright, so…" as "so…")."""
    return f"{', '.join(vocabulary)}." if vocabulary else ""


@dataclasses.dataclass(frozen=True)
class Term:
    text: str  # as the user wrote it
    key: str
    words: int
    sound: str


@lru_cache(maxsize=256)
def terms(vocabulary: tuple[str, ...]) -> tuple[Term, ...]:
    out = []
    for t in vocabulary:
        k = key(t)
        if k:
            out.append(Term(t.strip(), k, len(t.split()), soundex(k)))
    return tuple(out)


def _match(span: str, term: Term, probability: float, words: int) -> float | None:
    """How far the span (of `words` words) is from the term (0 = the same letters), or None when it is not that
    term; the less sure the model was of the span's words (`probability`, its least probable one's), the farther
    it may be: one word for a one-word term, of about its length (across words, "a chat" is two letters in five
    from "Plat Chat"; a garbled "Fisich" for Fichte is not the start of "Fisichella")."""
    if span == term.key:
        return 0.0
    if probability >= UNSURE or len(term.key) < MIN_FUZZY or not span:
        return None
    distance = Levenshtein.normalized_distance(span, term.key)
    if distance <= CLOSE or (distance <= SOUNDS_CLOSE and soundex(span) == term.sound) \
            or (distance <= FAR and probability < GUESS and words == term.words == 1
                and abs(len(span) - len(term.key)) <= 1):
        return distance
    return None


def _glued(tokens: Sequence[str], probability: Sequence[float]) -> list[float]:
    """Each token's probability, a word written in pieces ("old" "-sposed": one word to the reader) taking its
    least probable piece's: the model's doubt about a word is in whichever piece it guessed."""
    out = list(probability)
    i = 0
    while i < len(tokens):
        j = i + 1
        while j < len(tokens) and tokens[j].startswith("-"):
            j += 1
        low = min(out[i:j])
        out[i:j] = [low] * (j - i)
        i = j
    return out


def _spans(tokens: Sequence[str], vocab: tuple[Term, ...], probability: Sequence[float] | None = None
           ) -> list[tuple[int, int, Term]]:
    """Non-overlapping (start, end, term) over the tokens, closest first; near misses only where the words'
    `probability` says the model was unsure (none given: exact spellings only)."""
    found: list[tuple[float, int, int, Term]] = []
    keys = [key(t) for t in tokens]
    sure = _glued(tokens, probability) if probability is not None else [1.0] * len(tokens)
    for term in vocab:
        for n in range(max(1, term.words - 1), term.words + 2):
            for i in range(len(tokens) - n + 1):
                span = "".join(keys[i:i + n])
                d = _match(span, term, min(sure[i:i + n]), n)
                if d is not None and " ".join(tokens[i:i + n]) != term.text:
                    found.append((d, i, i + n, term))
    taken: list[tuple[int, int, Term]] = []
    used: set[int] = set()
    for _, i, j, term in sorted(found, key=lambda f: (f[0], f[1])):
        if used.isdisjoint(range(i, j)):
            taken.append((i, j, term))
            used.update(range(i, j))
    return sorted(taken, key=lambda s: s[0])


def _spelled(first: str, last: str, term: Term) -> str:
    """The term, keeping the punctuation around the recognised words ("(Plant Chat)," → "(Plat Chat),")."""
    lead = _LEAD.match(first)
    trail = _TRAIL.search(last)
    return f"{lead.group(0) if lead else ''}{term.text}{trail.group(0) if trail else ''}"


def correct_text(text: str, vocabulary: tuple[str, ...]) -> str:
    """A partial's text (no word probabilities) with the vocabulary's exact spellings."""
    vocab = terms(vocabulary)
    tokens = text.split()
    if not vocab or not tokens:
        return text
    spans = _spans(tokens, vocab)
    if not spans:
        return text
    return " ".join(_replaced(tokens, spans, lambda run, term: _spelled(run[0], run[-1], term)))


def correct_words(words: Sequence[WordTiming], vocabulary: tuple[str, ...]) -> list[WordTiming] | None:
    """A final's words with the vocabulary's spellings (a corrected run becomes one word spanning it), or None
    when nothing changed."""
    vocab = terms(vocabulary)
    if not vocab or not words:
        return None
    spans = _spans([w.word.strip() for w in words], vocab, [w.probability for w in words])
    if not spans:
        return None
    return _replaced(words, spans, lambda run, term: WordTiming(
        _spelled(run[0].word, run[-1].word, term), run[0].start, run[-1].end, min(w.probability for w in run)))


def _replaced(items: Sequence[T], spans: list[tuple[int, int, Term]], make: Callable[[Sequence[T], Term], T]
              ) -> list[T]:
    """`items` with each span's run replaced by what `make` makes of it and its term."""
    out: list[T] = []
    at = 0
    for i, j, term in spans:
        out += items[at:i]
        out.append(make(items[i:j], term))
        at = j
    return out + list(items[at:])
