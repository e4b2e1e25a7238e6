"""The termbase: English↔Chinese name pairs from loc tables (a row's `en` and `zh`) and bilingual canon (`灰港（Greyhithe）`).

A loc table's pair wins over the canon's; among the canon's own pairs the most
frequent rendering wins. Chinese has no spaces, so the Chinese side of a
`中文（English）` pair is the longest tail of the run of Han characters before
the bracket after its last particle or preposition (or all of a quoted run).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from kb.check.world import Line, SourceFile

HAN = "\u3400-\u9fff\uf900-\ufaff"
_PAIR = re.compile(rf"(?P<quote>[“「『]?)(?P<zh>[{HAN}·]+)[”」』]?[（(](?P<en>[A-Za-z][A-Za-z'’\- ]*[A-Za-z])[）)]")
_SENTENCE_MARKS = re.compile(r"[.!?;:,()\d]")
MAX_TERM_WORDS = 4
_FUNCTION_CHARS = re.compile("[的是在和与了把于到从由及将被向对叫即]")  # particles and prepositions: never a term's start


@dataclass
class Term:
    """One English term, its Chinese rendering, and where the pair was learned."""

    en: str
    zh: str
    path: str
    line: int

    @property
    def form(self) -> str:
        """The English as running text names it: `The Kessel Glass` -> `Kessel Glass`."""
        return strip_article(self.en)


@dataclass
class Pair:
    """A `中文（English）` occurrence in the canon: the Han run before the bracket, and its line."""

    en: str
    run: str
    quoted: bool
    line: Line


def strip_article(name: str) -> str:
    return name[4:] if name.startswith("The ") and len(name) > 4 else name


def fold(en: str) -> str:
    """How two spellings of one English term compare: article and case aside."""
    return strip_article(en.strip()).casefold()


def is_term(text: str) -> bool:
    """A loc string short and plain enough to be a name or term rather than a sentence."""
    return 0 < len(text.split()) <= MAX_TERM_WORDS and not _SENTENCE_MARKS.search(text)


def table_rows(file: SourceFile) -> list[tuple[dict[str, str], dict[str, Line]]]:
    """A loc table's rows as {lang: text} with the Line of each, in file order."""
    rows: dict[str, tuple[dict, dict]] = {}
    for line in file.lines:
        key, lang = line.meta.get("key"), line.meta.get("lang")
        if not key or not lang:
            continue
        texts, where = rows.setdefault(key, ({}, {}))
        texts[lang] = line.text
        where[lang] = line
    return list(rows.values())


def bilingual_pairs(files: list[SourceFile]) -> list[Pair]:
    """Every `中文（English）` occurrence in the canon's lines."""
    return [Pair(m["en"], m["zh"], bool(m["quote"]), line)
            for file in files for line in file.lines if "（" in line.text or "(" in line.text
            for m in _PAIR.finditer(line.text)]


def rendering(pair: Pair) -> str:
    """The Chinese term of a pair: a quoted run whole, else the run after its last function character.

    `潮历元年始于奥尔德拉堤道（Aldra Causeway）` -> 奥尔德拉堤道. A title may stay
    attached (港务长伊德里斯·卡洛); that only makes the term match less often.
    """
    if pair.quoted:
        return pair.run
    return _FUNCTION_CHARS.split(pair.run)[-1] or pair.run


def same_term(rendered: str, known: str) -> bool:
    """One rendering is the other, with or without a title or particle in front."""
    return rendered.endswith(known) or known.endswith(rendered)


def build_termbase(files: list[SourceFile]) -> dict[str, Term]:
    """English term (folded) -> Term: loc tables first, then the canon's most frequent rendering."""
    terms: dict[str, Term] = {}
    for file in files:
        if file.kind != "table":
            continue
        for texts, where in table_rows(file):
            en, zh = texts.get("en"), texts.get("zh")
            if en and zh and is_term(en) and fold(en) not in terms:
                terms[fold(en)] = Term(en, zh, file.shown, where["en"].number)
    votes: dict[str, Counter] = defaultdict(Counter)
    first: dict[tuple[str, str], Pair] = {}
    for pair in bilingual_pairs(files):
        if fold(pair.en) in terms:
            continue
        zh = rendering(pair)
        votes[fold(pair.en)][zh] += 1
        first.setdefault((fold(pair.en), zh), pair)
    for key, counter in votes.items():  # the most frequent rendering; on a tie the shortest
        zh = min(counter, key=lambda z: (-counter[z], len(z)))
        pair = first[(key, zh)]
        terms[key] = Term(pair.en, zh, pair.line.file.shown, pair.line.number)
    return terms


def sorted_terms(terms: dict[str, Term]) -> list[Term]:
    return sorted(terms.values(), key=lambda t: t.en.casefold())


def termbase_csv(terms: dict[str, Term]) -> str:
    """The termbase for localizers to review: en, zh, and where each pair was learned."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["en", "zh", "source"])
    for term in sorted_terms(terms):
        writer.writerow([term.en, term.zh, f"{term.path}:{term.line}"])
    return out.getvalue()
