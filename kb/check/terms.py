"""Terminology: Chinese renderings that differ from the termbase, English names spelt two ways, dropped terms."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from rapidfuzz.distance import OSA

from kb.check.entities import Canon
from kb.check.findings import RULES, Finding, Location
from kb.check.termbase import HAN, bilingual_pairs, fold, rendering, same_term, table_rows
from kb.check.world import mention_line

RARE_USES = 2          # a spelling used this often or less may be a slip ...
COMMON_RATIO = 3       # ... of a spelling used at least this many times as often
MIN_SPELLING_CHARS = 5  # shorter names are one letter apart by chance (Oar, Orr)
MIN_NEAR_CHARS = 3      # two-character words one character apart are everywhere in Chinese
_HAN_CHAR = re.compile(f"[{HAN}]")
_HAN_NAME = re.compile(f"[{HAN}·]+")


def check(canon: Canon) -> list[Finding]:
    return mismatches(canon) + spellings(canon) + dropped(canon)


def mismatches(canon: Canon) -> list[Finding]:
    """A `中文（English）` pair, a second loc row, or a Chinese name one character off, differing from the termbase."""
    findings = []
    reported = set()
    for pair in bilingual_pairs(canon.files):
        term = canon.terms.get(fold(pair.en))
        zh = rendering(pair)
        if term and not same_term(zh, term.zh):
            zh = zh[-len(term.zh):]  # `商人李长胜` against 李长生: the slip is the name, not the title before it
            reported.add((id(pair.line), zh))
            findings.append(_mismatch(pair.line.file.shown, mention_line(pair.line, zh), zh, pair.en, term))
    for line, zh, term in near_renderings(canon):
        if (id(line), zh) not in reported:
            reported.add((id(line), zh))
            findings.append(_mismatch(line.file.shown, mention_line(line, zh), zh, term.en, term))
    for file in canon.files:
        if file.kind != "table":
            continue
        for texts, where in table_rows(file):
            term = canon.terms.get(fold(texts.get("en", "")))
            zh = texts.get("zh")
            if (term and zh and zh != term.zh and (id(where["zh"]), zh) not in reported
                    and (term.path, term.line) != (file.shown, where["en"].number)):
                findings.append(_mismatch(file.shown, where["zh"].number, zh, texts["en"], term))
    return findings


def near_renderings(canon: Canon):
    """(line, written, term) where Chinese text holds a term's rendering with one character changed.

    The first character must match: a name with another first character is
    another name or word (靠退潮 is not a slip of 长退潮), while a homophone
    slip changes a later one (李长胜 for 李长生). One substitution leaves one
    half of the rendering intact, so only the places where a half occurs are
    compared (fast on a large canon).
    """
    terms = [t for t in canon.terms.values() if len(t.zh) >= MIN_NEAR_CHARS and _HAN_NAME.fullmatch(t.zh)]
    renderings = {t.zh for t in canon.terms.values()}
    for line in canon.lines():
        text = line.text
        if not _HAN_CHAR.search(text):
            continue
        for term in terms:
            size, half = len(term.zh), len(term.zh) // 2
            starts = {i for i in _positions(text, term.zh[:half])} | \
                     {i - half for i in _positions(text, term.zh[half:])}
            for start in sorted(i for i in starts if 0 <= i <= len(text) - size):
                written = text[start:start + size]
                if (_HAN_NAME.fullmatch(written) and written not in renderings and written[0] == term.zh[0]
                        and sum(a != b for a, b in zip(written, term.zh)) == 1):
                    yield line, written, term


def _positions(text: str, part: str):
    start = text.find(part)
    while start >= 0:
        yield start
        start = text.find(part, start + 1)


def _mismatch(path: str, line: int, zh: str, en: str, term) -> Finding:
    return Finding("term-mismatch", RULES["term-mismatch"].severity, path, line,
                   f"'{en}' is rendered '{zh}' here, but the termbase has '{term.zh}'",
                   f"write '{term.zh}', or change the termbase entry (`kb check --termbase` shows it)",
                   [Location(term.path, term.line)])


def spellings(canon: Canon) -> list[Finding]:
    """A rarely used English name one or two edits from a much more common one of as many words."""
    uses: Counter = Counter()
    lines = defaultdict(list)
    for line in canon.lines():
        for name, form in canon.mentioned(line):
            if form == name:
                uses[name] += 1
                lines[name].append(line)
    findings = []
    names = [n for n in uses if len(n) >= MIN_SPELLING_CHARS and not re.search(r"[^\x00-\x7f]", n)]
    for rare in names:
        if uses[rare] > RARE_USES:
            continue
        for common in names:
            if (uses[common] >= COMMON_RATIO * uses[rare] and len(common.split()) == len(rare.split())
                    and _near(rare, common)):
                findings.extend(Finding(
                    "name-spelling", RULES["name-spelling"].severity, line.file.shown, mention_line(line, rare),
                    f"'{rare}' ({uses[rare]} use(s)) looks like a misspelling of '{common}' "
                    f"({uses[common]} uses)",
                    f"write '{common}', or if '{rare}' is another name, ignore this rule for the file")
                    for line in lines[rare])
                break
    return findings


def _near(rare: str, common: str) -> bool:
    """One edit apart (two for long names), and not a plural, possessive or other word form."""
    if rare.rstrip("s") == common.rstrip("s") or rare.lower() == common.lower():
        return False
    allowed = 2 if len(common) >= 10 else 1
    return OSA.distance(rare, common) <= allowed


def dropped(canon: Canon) -> list[Finding]:
    """A loc row whose English holds a termbase term whose Chinese its translation lacks."""
    by_form = {term.form: term for term in canon.terms.values()}
    if not by_form:
        return []
    finder = re.compile(r"(?<![\w-])(?:" + "|".join(map(re.escape, sorted(by_form, key=len, reverse=True)))
                        + r")(?![\w-])")
    findings = []
    for file in canon.files:
        if file.kind != "table":
            continue
        for texts, where in table_rows(file):
            en, zh = texts.get("en"), texts.get("zh")
            if not en or not zh:
                continue
            for term in (by_form[form] for form in dict.fromkeys(finder.findall(en))):
                if fold(term.en) != fold(en) and term.zh not in zh:
                    findings.append(Finding(
                        "term-dropped", RULES["term-dropped"].severity, file.shown, where["zh"].number,
                        f"the English names '{term.form}' but the Chinese lacks its rendering '{term.zh}'",
                        f"translate '{term.form}' as '{term.zh}', or fix the termbase entry",
                        [Location(term.path, term.line)]))
    return findings
