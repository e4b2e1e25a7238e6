"""Tokens for BM25 in English and Chinese: stemmed words, and character bigrams for CJK.

Measured on ../shared/eval (see README): character bigrams beat jieba words
on both Chinese sets; Snowball stemming with spaCy's 326 English stopwords
removed beat bm25s's 33-word list on the English set (MRR 0.803 -> 0.820).
Mixed text gets both treatments, so one index serves both languages.
A question's bigrams that lie wholly inside Chinese stopwords ("是什么",
"哪些") are dropped from the query: they matched chatty passages instead of
the canon asked about (cmrc2018 MRR 0.977 -> 0.985).
English word pairs (`word_pairs`) feed a second index: a question's "old
woman" or "fish doctor" then counts for more than its two words apart
(fairytaleqa MRR 0.816 -> 0.851).
"""

from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path

import Stemmer

from ingest.text import CJK_CHARS, fold


def spacy_stop_words(lang: str) -> frozenset[str]:
    """spaCy's stopword list for a language, read from its data module without importing spaCy.

    `import spacy` costs about as much as chromadb (0.5-1 s), and every `kb search`
    process paid it for two word lists.
    """
    package = Path(importlib.util.find_spec("spacy").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location(f"kb_stop_words_{lang}", package / "lang" / lang / "stop_words.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozenset(module.STOP_WORDS)


_CJK_RUN = re.compile(f"[{CJK_CHARS}]+")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOP = spacy_stop_words("en")
_ZH_STOP = frozenset(w for w in spacy_stop_words("zh") if _CJK_RUN.fullmatch(w))
_ZH_STOP_LONGEST = max(map(len, _ZH_STOP))


_local = threading.local()


def _stemmer():
    """This thread's stemmer: a Stemmer has internal state and must not be shared across threads."""
    if not hasattr(_local, "stemmer"):
        _local.stemmer = Stemmer.Stemmer("english")
    return _local.stemmer


def _stems(folded: str) -> list[str]:
    """The stems of a folded text's words that are not stopwords, in order."""
    return _stemmer().stemWords([w for w in _WORD.findall(folded) if w not in _STOP])


def _cjk_bigrams(folded: str) -> list[str]:
    """Character bigrams of a folded text's CJK runs (a lone character kept)."""
    terms = []
    for run in _CJK_RUN.findall(folded):
        terms.extend([run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)])
    return terms


def _pairs(stems: list[str]) -> list[str]:
    return [f"{a}_{b}" for a, b in zip(stems, stems[1:])]


def is_word_pair(term: str) -> bool:
    """Whether an indexed term is a word pair (no word or CJK bigram holds an underscore)."""
    return "_" in term


def tokens(text: str) -> list[str]:
    """BM25 terms: stemmed non-stopword words plus CJK character bigrams (lone characters kept)."""
    folded = fold(text)
    return _stems(folded) + _cjk_bigrams(folded)


def word_pairs(text: str) -> list[str]:
    """Each stemmed word joined to the next one kept, so "the old woman" gives old_woman."""
    return _pairs(_stems(fold(text)))


def tokens_and_pairs(text: str) -> tuple[list[str], list[str]]:
    """`tokens` and `word_pairs` of one text from a single stemming pass, for building the indexes."""
    folded = fold(text)
    stems = _stems(folded)
    return stems + _cjk_bigrams(folded), _pairs(stems)


def _stopword_covered(run: str) -> list[bool]:
    """Which characters of a CJK run lie inside some occurrence of a Chinese stopword."""
    covered = [False] * len(run)
    for start in range(len(run)):
        for end in range(start + 1, min(len(run), start + _ZH_STOP_LONGEST) + 1):
            if run[start:end] in _ZH_STOP:
                covered[start:end] = [True] * (end - start)
    return covered


def query_tokens(text: str) -> list[str]:
    """A question's BM25 terms: `tokens`, less the CJK bigrams made only of stopword characters."""
    filler = set()
    for run in _CJK_RUN.findall(fold(text)):
        covered = _stopword_covered(run)
        filler.update(run[i:i + 2] for i in range(len(run) - 1) if covered[i] and covered[i + 1])
    return [t for t in tokens(text) if t not in filler]
