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
from dataclasses import dataclass, field

from kb.check.entities import Canon
from kb.check.findings import RULES, Finding, Location
from kb.check.world import Line, mention_line
from kb.limits import within_limits

COMMON_CHAPTER = 1


def appearance(line: Line) -> int | float | None:
    """The chapter a line belongs to; 1 without a chapter key; None for a chapter that is not a number."""
    if "chapter" not in line.meta:
        return COMMON_CHAPTER
    return line.chapter


def check(canon: Canon) -> list[Finding]:
    return spoilers(canon) + npc_knowledge(canon)


@dataclass
class Uses:
    """Where the canon names one entity, split into prose (documents, loc tables) and every file."""

    prose: list[Line] = field(default_factory=list)
    every: list[Line] = field(default_factory=list)

    def pool(self, line: Line) -> list[Line]:
        """What ``line`` is judged against: the prose for a script line when the prose names the entity."""
        return self.prose if line.file.kind == "script" and self.prose else self.every


def entity_uses(canon: Canon) -> dict[str, Uses]:
    uses: dict[str, Uses] = defaultdict(Uses)
    for line in canon.lines():
        for name, _form in canon.mentioned(line):
            uses[name].every.append(line)
            if line.file.kind != "script":
                uses[name].prose.append(line)
    return uses


def _firsts(lines: list[Line]) -> list[Line]:
    """Each file's earliest line (by chapter), earliest first: the earliest outside any file is among the first two."""
    best: dict[int, Line] = {}
    for line in lines:
        if appearance(line) is None:
            continue
        held = best.get(id(line.file))
        if held is None or appearance(line) < appearance(held):
            best[id(line.file)] = line
    return sorted(best.values(), key=appearance)


def spoilers(canon: Canon) -> list[Finding]:
    """One finding per file and entity: the first line naming it before the other files' first chapter."""
    firsts = {name: Uses(_firsts(u.prose), _firsts(u.every)) for name, u in entity_uses(canon).items()}
    findings = []
    reported: set[tuple[int, str]] = set()
    for line in canon.lines():
        chapter = line.chapter
        if chapter is None:
            continue
        for name, form in canon.mentioned(line):
            if (id(line.file), name) in reported:
                continue
            earliest = next((use for use in firsts[name].pool(line) if use.file is not line.file), None)
            if earliest is None or appearance(earliest) <= chapter:
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
    cards = {f.card.speaker.casefold(): f.card for f in canon.files if f.card and f.card.knows}
    if not cards:
        return []
    uses = entity_uses(canon)
    visible: dict[tuple[str, str], dict[int, Line]] = {}  # (card, entity) -> file -> a line within limits
    findings = []
    for line in canon.lines():
        card = cards.get((line.speaker or "").casefold())
        if card is None:
            continue
        for name, form in canon.mentioned(line):
            if name in (card.name, card.speaker):
                continue
            pool = uses[name].pool(line)
            if (card.name, name) not in visible:
                visible[(card.name, name)] = {id(use.file): use for use in uses[name].every
                                                 if within_limits(use.meta, card.knows, card.strict)}
            seen = visible[(card.name, name)]
            prose_only = pool is uses[name].prose
            known = any(key != id(line.file) and (not prose_only or held.file.kind != "script")
                        for key, held in seen.items())
            elsewhere = next((use for use in pool if use.file is not line.file), None)
            if elsewhere is None or known:
                continue
            limits = ", ".join(f"{k} {'/'.join(map(str, v)) if isinstance(v, list) else v}"
                               for k, v in card.knows.items())
            findings.append(Finding(
                "npc-knowledge", RULES["npc-knowledge"].severity, line.file.shown,
                mention_line(line, form),
                f"{line.speaker} names '{form}', but no canon within {card.name}'s limits ({limits}) "
                "mentions it",
                f"cut '{form}' from {line.speaker}'s line, give the line to someone who may know it, "
                "or widen the card's `knows`",
                [Location(elsewhere.file.shown, mention_line(elsewhere, name))]))
    return findings
