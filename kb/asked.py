"""Does the cited canon answer the question? If not, an NPC says its unknown_answer.

First, the cited canon must hold the question's rarest term (``holds_rarest_term``).
Then it must say what was asked, about what was asked, in one sentence.

An NPC limited to some of the canon often still sees canon about the same kind
of thing for another subject: asked "How many people live in Mirewood?", an
NPC who may not know Mirewood sees "About 61,000 people live in the Shallows"
and, elsewhere, "the sung herb-craft of Mirewood". Every word of the question
is in the cited canon, but no sentence gives Mirewood's people. So the check
is per sentence: one cited sentence (with its heading and the sentence it
leans on, as kb/extract.py scores it) must hold the question's rarest name
and, for "how many X", a number of X. (Not the kind of thing asked in general:
"under the brass bell" answers a where-question that no place pattern sees.)
"""

from __future__ import annotations

import re
from typing import Callable

from kb.context import Citation
from kb.extract import candidates, has_evidence
from kb.lexical import query_tokens, tokens
from kb.retrieve import Corpus

_HOW_MANY = re.compile(r"\bhow many\s+([^\W\d_]+)", re.IGNORECASE)
_WORD = re.compile(r"[\w'’,.-]+")
_NOT_NAMES = frozenset("i who whom whose what when where which why how".split())


def holds_rarest_term(question: str, cited: list[Citation], corpus: Corpus) -> bool:
    """The cited canon holds one of the question's rarest terms that the canon uses anywhere (all of
    them when several are as rare: picking one of a tie made the answer change from run to run).

    An NPC quoting canon that shares only the common words of a question ("the
    Kessel Glass" for "Who commissioned the theft of the Kessel Glass?") answers
    what was not asked. On corpora/eval/npc.jsonl this check took unknown-answer
    accuracy from 0.29 to 0.79 and fact accuracy from 0.76 to 0.72; with the two
    rarest terms, 0.43 and 0.76.
    """
    known = {t for t in query_tokens(question) if corpus.doc_freq(t)}
    if not known:
        return True
    rarest_idf = max(corpus.idf(t) for t in known)
    rarest = {t for t in known if corpus.idf(t) == rarest_idf}
    return any(rarest & set(tokens(f"{c.hit.metadata.get('title', '')}\n{c.hit.text}")) for c in cited)


def question_names(question: str) -> list[str]:
    """The terms of the names an English question gives: its capitalised words after the first."""
    words = re.findall(r"[^\W\d_][\w'’-]*", question)[1:]
    return [t for w in words if w[0].isupper() and w.casefold() not in _NOT_NAMES for t in tokens(w)]


def gives_a_count(sentence: str, noun: str, question: str) -> bool:
    """Whether a sentence gives a number of ``noun`` (a term): "twenty-eight years", "61,000 people"."""
    words = _WORD.findall(sentence)
    return any(tokens(word)[:1] == [noun] and has_evidence(" ".join(words[max(0, i - 2):i]), "number", question)
               for i, word in enumerate(words))


def says_what_was_asked(question: str, cited: list[Citation], idf: Callable[[str], float]) -> bool:
    """One cited sentence holds the question's rarest name and, for "how many X", a number of X (the
    name in the sentence itself, its heading or the sentence it leans on)."""
    names = question_names(question)
    rarest = max(names, key=idf) if names else None
    how_many = _HOW_MANY.search(question)
    noun = (tokens(how_many.group(1)) or [None])[0] if how_many else None
    ranked, _ = candidates(question, [(c.n, c.hit.text, c.hit.metadata.get("title", "")) for c in cited], idf)
    return any((rarest is None or s.credit(rarest) > 0)
               and (noun is None or gives_a_count(s.text, noun, question))
               for s in ranked)
