"""Named entities of the canon and where each line mentions them.

Entities come from NPC cards (name and speaker), Markdown headings that read
as names (`Kiln Hall`, `Wren Aldmoor`), loc-table strings that read as names
(`The Kessel Glass`), and names mined from running text: Title Case words
(joined by `of`/`the`) seen in mid-sentence and never written in lower case.
A name glued to a title (`Second Oar Aurel Thane`) splits into the two names.
An entity's Chinese rendering from the termbase is one of its forms too.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from kb.check.termbase import HAN, Term, build_termbase, fold, is_term, strip_article, table_rows
from kb.check.world import Line, SourceFile

_WORD = r"[A-Z][a-z]+(?:[-'’][A-Za-z]+)*['’]?"
_SEQUENCE = re.compile(rf"(?<![\w'’-]){_WORD}(?: (?:of (?:the )?)?{_WORD})*")
_SENTENCE_MARKS = ".!?:;\"“”—–-*#>"  # after one of these a capital starts a sentence, not a name
_NAME_WORD = re.compile(rf"^(?:{_WORD}|of|the)$")
_MARKUP = re.compile(r"[*_`]")
MAX_NAME_WORDS = 5
MIN_HAN_FORM = 2  # one Han character is a morpheme of countless words, not a name


@dataclass
class Entity:
    """A named thing: its name, where it comes from (card, heading, table, mined), how text may write it."""

    name: str
    kinds: set[str] = field(default_factory=set)
    forms: set[str] = field(default_factory=set)


@dataclass
class Canon:
    """Everything the rules look at: the files, the entities and termbase, and each line's mentions."""

    files: list[SourceFile]
    entities: dict[str, Entity]
    terms: dict[str, Term]
    mentions: dict[int, list[tuple[str, str]]] = field(default_factory=dict)

    def lines(self):
        for file in self.files:
            yield from file.lines

    def mentioned(self, line: Line) -> list[tuple[str, str]]:
        """(entity name, form as written) for every entity the line names."""
        return self.mentions.get(id(line), [])


def _name_text(text: str) -> str:
    """A line without emphasis marks, so `**Saltreach**` reads like `Saltreach`."""
    return _MARKUP.sub("", text)


def _trim(sequence: str) -> str:
    """`The Kessel Glass's` -> `Kessel Glass`: no leading article, no possessive."""
    sequence = strip_article(sequence)
    for suffix in ("'s", "’s", "'", "’"):
        if sequence.endswith(suffix):
            return sequence[: -len(suffix)]
    return sequence


def mine_names(files: list[SourceFile]) -> Counter:
    """Title Case names seen in mid-sentence, counted; a name also written in lower case is a word, not a name."""
    seen: Counter = Counter()
    lowered: set[str] = set()
    for file in files:
        for line in file.lines:
            text = _name_text(line.text)
            lowered.update(re.findall(r"\b[a-z][\w'’-]*", text))
            for match in _SEQUENCE.finditer(text):
                before = text[:match.start()].rstrip()
                if before and before[-1] not in _SENTENCE_MARKS:
                    seen[_trim(match.group())] += 1
    names = Counter({name: n for name, n in seen.items()
                     if name.lower() not in lowered and len(name.split()) <= MAX_NAME_WORDS})
    for name in list(names):  # `Second Oar Aurel Thane`, `Black Strand of Cinderholm`: two names side by side
        if any(left in names and right in names for left, right in _splits(name)):
            del names[name]
    return names


def _splits(name: str):
    """Every way to cut a name in two: between words, or around an `of` / `of the`."""
    words = name.split()
    for i in range(1, len(words)):
        yield " ".join(words[:i]), " ".join(words[i:])
        for connector in (["of"], ["of", "the"]):
            if words[i:i + len(connector)] == connector and i + len(connector) < len(words):
                yield " ".join(words[:i]), " ".join(words[i + len(connector):])


def _is_name(text: str, mined: Counter) -> bool:
    """A heading or loc string that reads as a name: Title Case words; a single word only if mined as a name."""
    words = strip_article(text).split()
    if not words or len(words) > MAX_NAME_WORDS or not all(_NAME_WORD.match(w) for w in words):
        return False
    return len(words) > 1 or words[0] in mined


def build_canon(files: list[SourceFile]) -> Canon:
    """Mine the entities and the termbase, then find every entity each line mentions."""
    mined = mine_names(files)
    terms = build_termbase(files)
    entities: dict[str, Entity] = {}

    def add(name: str, kind: str, *forms: str) -> None:
        entity = entities.setdefault(name, Entity(name))
        entity.kinds.add(kind)
        entity.forms.update(f for f in (name, *forms) if f)

    for file in files:
        if file.card:
            add(file.card.name, "card", file.card.speaker)
        if file.kind == "table":
            for texts, _where in table_rows(file):
                en = texts.get("en", "")
                if is_term(en) and _is_name(en, mined):
                    add(strip_article(en), "table")
        for meta in file.metas if file.kind == "document" else []:
            for heading in str(meta.get("title", "")).split(" > "):
                if _is_name(heading, mined):
                    add(strip_article(heading), "heading")
    forms = {form for entity in entities.values() for form in entity.forms}
    for name in mined:
        if name not in forms:
            add(name, "mined")
    for entity in entities.values():
        term = terms.get(fold(entity.name))
        if term and len(term.zh) >= MIN_HAN_FORM:
            entity.forms.add(term.zh)
    canon = Canon(files, entities, terms)
    _index_mentions(canon)
    return canon


def _index_mentions(canon: Canon) -> None:
    """Match every form in every line at once; a longer name implies the names inside it."""
    owner = {form: entity.name for entity in canon.entities.values() for form in entity.forms}
    latin = sorted((f for f in owner if not re.search(f"[{HAN}]", f)), key=len, reverse=True)
    han = sorted((f for f in owner if re.search(f"[{HAN}]", f)), key=len, reverse=True)
    patterns = []
    if latin:
        patterns.append(r"(?<![\w'’-])(?:" + "|".join(map(re.escape, latin)) + r")(?![\w-])")
    if han:
        patterns.append("|".join(map(re.escape, han)))
    if not patterns:
        return
    finder = re.compile("|".join(f"(?:{p})" for p in patterns))
    inside = {form: _names_inside(form, owner) for form in owner}
    for line in canon.lines():
        found = []
        for match in finder.finditer(_name_text(line.text)):
            form = match.group()
            found.append((owner[form], form))
            found.extend(inside[form])
        if found:
            canon.mentions[id(line)] = list(dict.fromkeys(found))


def _names_inside(form: str, owner: dict[str, str]) -> list[tuple[str, str]]:
    """The other names a form spells out: `Orrin Light` names `Orrin` and `Light` too."""
    words = form.split()
    return [(owner[part], part) for i in range(len(words)) for j in range(i + 1, len(words) + 1)
            if (part := " ".join(words[i:j])) != form and part in owner]
