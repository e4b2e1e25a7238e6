"""Does the cited canon say what was asked, about what was asked, in one sentence?

An NPC limited to some of the canon often still sees canon about the same kind
of thing for another subject: asked "How many people live in Mirewood?", an
NPC who may not know Mirewood sees "About 61,000 people live in the Shallows"
and, elsewhere, "the sung herb-craft of Mirewood". Every word of the question
is in the cited canon, but no sentence gives Mirewood's people. So the check
is per sentence: one cited sentence (with its heading and the sentence it
leans on, as kb/extract.py scores it) must hold the question's rarest name,
the kind of thing the question asks for (a person, a date, a number, a place),
and for "how many X" a number of X.
"""

from __future__ import annotations

import re
from typing import Callable

from kb.context import Citation
from kb.extract import candidates, has_evidence, question_type, term_credit
from kb.lexical import tokens

_HOW_MANY = re.compile(r"\bhow many\s+([^\W\d_]+)", re.IGNORECASE)
_WORD = re.compile(r"[\w'’,.-]+")
_NOT_NAMES = frozenset("i who whom whose what when where which why how".split())


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
    """One cited sentence holds the question's rarest name, the kind of thing it asks for, and for
    "how many X" a number of X (each in the sentence itself, its heading or the sentence it leans on)."""
    names = question_names(question)
    rarest = max(names, key=idf) if names else None
    how_many = _HOW_MANY.search(question)
    noun = (tokens(how_many.group(1)) or [None])[0] if how_many else None
    kind = question_type(question)
    ranked, _ = candidates(question, [(c.n, c.hit.text, c.hit.metadata.get("title", "")) for c in cited], idf)
    return any((rarest is None or term_credit(rarest, s.terms, s.context) > 0)
               and (s.typed or kind is None)
               and (noun is None or gives_a_count(s.text, noun, question))
               for s in ranked)
