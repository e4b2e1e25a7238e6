"""Speakers: who talks with no card or character entry, which card never talks, who talks where their card forbids."""

from __future__ import annotations

from rapidfuzz.distance import OSA

from ingest.cards import Card
from kb.check.entities import Canon
from kb.check.findings import RULES, Finding
from kb.limits import within_limits

ENTRY_KINDS = {"card", "heading"}


def check(canon: Canon) -> list[Finding]:
    return unknown_speakers(canon) + silent_cards(canon) + out_of_bounds(canon)


def _cards(canon: Canon) -> list[Card]:
    return [file.card for file in canon.files if file.card]


def _entries(canon: Canon) -> list[str]:
    """Names that have a card or a heading of their own."""
    return [e.name for e in canon.entities.values() if e.kinds & ENTRY_KINDS]


def has_entry(speaker: str, cards: list[Card], entries: list[str]) -> bool:
    """A card's name or speaker, or a character entry whose name is the speaker's or begins with it."""
    folded = speaker.casefold()
    if any(folded in (c.name.casefold(), c.speaker.casefold()) for c in cards):
        return True
    return any(e.casefold() == folded or e.casefold().startswith(folded + " ") for e in entries)


def unknown_speakers(canon: Canon) -> list[Finding]:
    cards, entries = _cards(canon), _entries(canon)
    known = sorted({c.speaker for c in cards} | set(entries))
    findings, seen = [], set()
    for line in canon.lines():
        if not line.speaker or (id(line.file), line.speaker) in seen or has_entry(line.speaker, cards, entries):
            continue
        seen.add((id(line.file), line.speaker))
        near = [k for k in known if OSA.distance(k.split()[0], line.speaker) <= 2]
        hint = f"did you mean {near[0]}? " if near else ""
        findings.append(Finding(
            "unknown-speaker", RULES["unknown-speaker"].severity, line.file.shown, line.number,
            f"'{line.speaker}' speaks here but has no NPC card and no character entry",
            hint + f"add an npcs/ card or a '## {line.speaker} ...' entry to the character bible"))
    return findings


def silent_cards(canon: Canon) -> list[Finding]:
    spoken = {line.speaker.casefold() for line in canon.lines() if line.speaker}
    return [Finding("silent-card", RULES["silent-card"].severity, file.shown, file.key_line("speaker")
                    if "speaker" in (file.card_data or {}) else file.key_line("name"),
                    f"card '{file.card.name}' has speaker '{file.card.speaker}', who never speaks "
                    "in the scripts",
                    "set `speaker:` to the name the scripts give this character, or write their lines")
            for file in canon.files if file.card and file.card.speaker.casefold() not in spoken]


def out_of_bounds(canon: Canon) -> list[Finding]:
    """A line in a scene whose metadata (e.g. region) is outside the list its speaker's card allows."""
    places = {c.speaker.casefold(): (c, {k: v for k, v in c.knows.items() if isinstance(v, list)})
              for c in _cards(canon)}
    findings, seen = [], set()
    for line in canon.lines():
        card, limits = places.get((line.speaker or "").casefold(), (None, None))
        if not limits or within_limits(line.meta, limits):
            continue
        key = next(k for k in limits if not within_limits(line.meta, {k: limits[k]}))
        if (id(line.file), line.speaker, key) in seen:
            continue
        seen.add((id(line.file), line.speaker, key))
        allowed = ", ".join(map(str, limits[key]))
        findings.append(Finding(
            "speaker-out-of-bounds", RULES["speaker-out-of-bounds"].severity, line.file.shown, line.number,
            f"{line.speaker} speaks in a scene with {key} {line.meta[key]}, but {card.name}'s card "
            f"allows only {key} {allowed}",
            f"give the line to another character, move the scene, or add it to the card's knows.{key}"))
    return findings
