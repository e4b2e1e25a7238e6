"""Spoilers: a name the rest of the canon introduces in a later chapter, and NPCs who name what they cannot know.

A line without a `chapter` is common knowledge (known from chapter 1). An
entity's first chapter is taken from the *other* files, so the file under
check cannot vouch for itself; a name no other file uses is never a spoiler.
A script is checked against the prose canon (documents, loc tables) when the
prose names the entity at all, so two scripts that slip alike do not vouch
for each other; a document is checked against every other file.
"""

from __future__ import annotations

from collections import defaultdict

from kb.check.entities import Canon
from kb.check.findings import RULES, Finding, Location
from kb.check.world import Line, mention_line
from kb.limits import within_limits

COMMON_CHAPTER = 1


def appearance(line: Line) -> int | None:
    """The chapter a line belongs to; 1 without a chapter key; None for a chapter that is not a number."""
    if "chapter" not in line.meta:
        return COMMON_CHAPTER
    return line.chapter


def check(canon: Canon) -> list[Finding]:
    return spoilers(canon) + npc_knowledge(canon)


def _uses(canon: Canon) -> dict[str, list[Line]]:
    uses: dict[str, list[Line]] = defaultdict(list)
    for line in canon.lines():
        for name, _form in canon.mentioned(line):
            uses[name].append(line)
    return uses


def reference(uses: list[Line], line: Line) -> list[Line]:
    """The lines that say what the canon knows of an entity, as seen from ``line``'s file."""
    others = [l for l in uses if l.file is not line.file]
    if line.file.kind != "script":
        return others
    prose = [l for l in others if l.file.kind != "script"]
    return prose or others


def spoilers(canon: Canon) -> list[Finding]:
    """One finding per file and entity: the first line naming it before the others' first chapter."""
    uses = {name: [l for l in lines if appearance(l) is not None] for name, lines in _uses(canon).items()}
    findings = []
    reported: set[tuple[int, str]] = set()
    for line in canon.lines():
        chapter = line.chapter
        if chapter is None:
            continue
        for name, form in canon.mentioned(line):
            if (id(line.file), name) in reported:
                continue
            others = reference(uses[name], line)
            if not others:
                continue
            earliest = min(others, key=appearance)
            if appearance(earliest) <= chapter:
                continue
            reported.add((id(line.file), name))
            findings.append(Finding(
                "spoiler", RULES["spoiler"].severity, line.file.shown, mention_line(line, form),
                f"'{form}' is named in chapter {chapter}, but the rest of the canon first names "
                f"'{name}' in chapter {appearance(earliest)}",
                f"move this to chapter {appearance(earliest)} or later, or introduce '{name}' in "
                f"chapter {chapter}'s canon",
                [Location(earliest.file.shown, mention_line(earliest, name))]))
    return findings


def npc_knowledge(canon: Canon) -> list[Finding]:
    """An NPC's own line names an entity that only canon outside its card's `knows` mentions."""
    cards = {f.card["speaker"].casefold(): f.card for f in canon.files if f.card and f.card["knows"]}
    if not cards:
        return []
    uses = _uses(canon)
    findings = []
    for line in canon.lines():
        card = cards.get((line.speaker or "").casefold())
        if card is None or not _comparable(card["knows"]):
            continue
        for name, form in canon.mentioned(line):
            if name in (card["name"], card["speaker"]):
                continue
            elsewhere = reference(uses[name], line)
            if not elsewhere or any(within_limits(l.meta, card["knows"]) for l in elsewhere):
                continue
            limits = ", ".join(f"{k} {'/'.join(map(str, v)) if isinstance(v, list) else v}"
                               for k, v in card["knows"].items())
            findings.append(Finding(
                "npc-knowledge", RULES["npc-knowledge"].severity, line.file.shown,
                mention_line(line, form),
                f"{line.speaker} names '{form}', but no canon within {card['name']}'s limits ({limits}) "
                "mentions it",
                f"cut '{form}' from {line.speaker}'s line, give the line to someone who may know it, "
                "or widen the card's `knows`",
                [Location(elsewhere[0].file.shown, mention_line(elsewhere[0], name))]))
    return findings


def _comparable(limits: dict) -> bool:
    """A card whose numeric limits are numbers (the metadata rule reports the others)."""
    return isinstance(limits.get("chapter", 0), int)
