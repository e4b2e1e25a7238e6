"""Continuity: one entity and attribute stated with different numbers in different files.

Offline heuristic: a sentence naming an entity and a number, keyed by the
entity and the noun after the number (`58 metres` -> metres); two such
statements in different files with different numbers whose other words
overlap enough are a suspected contradiction. With `--llm` the chat model
reads both sentences and says whether they really contradict; a confirmed one
becomes an error, a refuted one a note.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import Stemmer

from kb.check.entities import Canon
from kb.check.findings import RULES, Finding, Location
from kb.check.termbase import HAN
from kb.check.world import Line, mention_line

UNITS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
         "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
         "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
        "eighty": 80, "ninety": 90}
ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
            "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
            "fourteenth": 14, "fifteenth": 15, "twentieth": 20, "thirtieth": 30}
SCALES = {"hundred": 100, "thousand": 1000}
_NUMBER_WORD = "|".join(sorted([*UNITS, *TENS, *ORDINALS, *SCALES], key=len, reverse=True))
_NUMBER = re.compile(
    rf"(?<![\w-])(?P<number>\d[\d,]*(?:\.\d+)?|(?:{_NUMBER_WORD})(?:[- ](?:and )?(?:{_NUMBER_WORD}))*)"
    r"(?:st|nd|rd|th)?(?:-[a-z]+)*\s+(?:of\s+)?(?P<noun>[A-Za-z][a-z]+)", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“])")
STOPWORDS = set("a an and the of in on at to for by with from as is was are were be been has have had it "
                "its his her their this that these those who which what when where since about than "
                "not no or but so if into over under up down out after before each every only".split())
MIN_OVERLAP = 0.35  # share of the two sentences' other words in common


@dataclass
class Statement:
    line: Line
    sentence: str
    entity: str
    form: str
    value: float
    number: str
    noun: str       # stemmed: the key
    noun_text: str  # as written: the message
    words: frozenset


def number_value(text: str) -> float | None:
    """`2,000` -> 2000, `twenty-two` -> 22, `two thousand` -> 2000, `eleventh` -> 11."""
    text = text.lower().replace(",", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    total = current = 0
    for word in re.split(r"[- ]+", text):
        if word in ("and", ""):
            continue
        if word in SCALES:
            current = max(current, 1) * SCALES[word]
            total, current = total + current, 0
        else:
            current += UNITS.get(word) or TENS.get(word) or ORDINALS.get(word, 0)
    return float(total + current) if total + current else None


def statements(canon: Canon) -> list[Statement]:
    stemmer = Stemmer.Stemmer("english")
    found = []
    for line in canon.lines():
        names = canon.mentioned(line)
        if not names or re.search(f"[{HAN}]", line.text):
            continue
        for sentence in _SENTENCE.split(line.text):
            present = [(name, form) for name, form in names if form in sentence]
            numbers = list(_NUMBER.finditer(sentence))
            if not present or not numbers:
                continue
            words = frozenset(stemmer.stemWords(
                w for w in re.findall(r"[a-z]+", sentence.lower())
                if w not in STOPWORDS and number_value(w) is None))
            for match in numbers:
                value = number_value(match["number"])
                if value is None or (match.start() > 0 and match["number"][0].isupper()):
                    continue  # `Nine Oars`, `Second Oar`: a number inside a name
                noun = stemmer.stemWord(match["noun"].lower())
                for name, form in present:
                    entity_words = set(stemmer.stemWords(re.findall(r"[a-z]+", form.lower())))
                    if noun in entity_words:  # `the eleventh of Saltmonth` dates, it says nothing of Saltmonth
                        continue
                    found.append(Statement(line, sentence, name, form, value, match["number"], noun,
                                           match["noun"], frozenset(words - entity_words - {noun})))
    return found


def suspects(canon: Canon) -> list[tuple[Statement, Statement]]:
    """Pairs of statements about one entity and noun, in different files, with different numbers."""
    by_key = defaultdict(list)
    for statement in statements(canon):
        by_key[(statement.entity, statement.noun)].append(statement)
    pairs, seen = [], set()
    for group in by_key.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a.line.file is b.line.file or a.value == b.value or _overlap(a, b) < MIN_OVERLAP:
                    continue
                key = (id(a.line), id(b.line))
                if key not in seen:
                    seen.add(key)
                    pairs.append((a, b))
    return pairs


def _overlap(a: Statement, b: Statement) -> float:
    union = a.words | b.words
    return len(a.words & b.words) / len(union) if union else 0.0


def check(canon: Canon, confirm=None, paths: set[str] | None = None) -> list[Finding]:
    """Suspected contradictions touching ``paths`` (all when None); ``confirm(a, b) -> (verdict, reason)`` asks a model."""
    findings = []
    for a, b in suspects(canon):
        if paths is not None and not {a.line.file.shown, b.line.file.shown} & paths:
            continue  # neither side is being checked: no finding, and no question to the model
        severity, verdict = RULES["continuity"].severity, ""
        if confirm is not None:
            contradicts, reason = confirm(a, b)
            severity = "error" if contradicts else "note"
            verdict = f"; the model {'confirms' if contradicts else 'sees no'} contradiction: {reason}"
        for here, there in ((a, b), (b, a)):  # reported in both files, so --changed-since sees it from either
            where = Location(there.line.file.shown, mention_line(there.line, there.number))
            findings.append(Finding(
                "continuity", severity, here.line.file.shown, mention_line(here.line, here.number),
                f"'{here.form}': {here.number} {here.noun_text} here, {there.number} in {where.path}:{where.line} "
                f"(\"{here.sentence}\" / \"{there.sentence}\"){verdict}",
                "make both files state the same figure, or say why they differ", [where]))
    return findings


def model_judge(settings):
    """A confirm() for check(): the chat model reads both statements (through kb.llm, the only openai caller)."""
    from kb.llm import chat

    def confirm(a: Statement, b: Statement) -> tuple[bool, str]:
        question = (
            f"Two passages from one game's canon both speak of {a.entity}.\n"
            f"A ({a.line.file.shown}:{a.line.number}): {a.sentence}\n"
            f"B ({b.line.file.shown}:{b.line.number}): {b.sentence}\n"
            "Do A and B contradict each other (state different values for the same fact)? "
            "Answer YES or NO, then one short sentence why.")
        reply = chat([{"role": "system", "content": "You check game lore for continuity errors. Be strict "
                                                    "and literal."},
                      {"role": "user", "content": question}], settings).strip()
        verdict, _, reason = reply.partition(" ")
        return verdict.strip(".,:;!").upper() == "YES", (reason.strip() or reply)

    return confirm
