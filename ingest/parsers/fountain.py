"""Fountain screenplays (.fountain): one dialogue Section per scene.

Supported:
- the title page (`Key: value` lines at the top until the first blank line,
  indented continuation lines joined) -> metadata of every section, keys lower
  case with spaces as `_`, emphasis removed: `Title` -> meta["story"] (the
  script's name; each section's title is its scene), `Chapter: 3` ->
  chapter=3, `Region`, `Author`, `Draft date` -> draft_date;
- scene headings (INT. / EXT. / INT./EXT. / INT/EXT / I/E / EST., or forced
  with a leading `.`, scene numbers `#1#` removed) -> a new section with
  meta["scene"] and its title = the heading; text before the first heading
  is a section too; a scene with no text holds its heading as its one line,
  so an outline of headings is indexed;
- character cues (an upper-case line after a blank line and before a
  non-blank one, or forced with `@`; punctuation allowed: `GIDEON, TEX &
  SCOBIE`, `"BARTHOLOMEW"` (quotes dropped), `REGGIE'S VOICE`; extensions
  like `(V.O.)` / `(CONT'D)` and the dual-dialogue `^` dropped) -> one
  `Speaker: line` turn for the whole dialogue block, the name in Title Case
  (`MAREN (V.O.)` -> `Maren`, `REGGIE'S VOICE` -> `Reggie's Voice`);
  parentheticals such as `(whispering)` are kept inline in the turn;
- action paragraphs -> narration lines (forced `!`, lyrics `~` and centered
  `> text <` markers removed); `*`/`**`/`***`/`_` emphasis markers removed,
  nested ones (`_**bold underline**_`) too.
Dropped: transitions (`CUT TO:`, `FADE OUT.`, forced `>`), boneyard `/* */`,
notes `[[ ]]`, sections `#`, synopses `=`, page breaks `===`.
Not supported: a blank line inside a dialogue block (the two-space trick)
ends the dialogue, and so does a centered `> line <` right after it.
Errors: a `/*` boneyard never closed (line where it opens).
"""

from __future__ import annotations

import re

from ingest.parsers.dialogue import blank_block_comments, dialogue_section
from ingest.types import Section

_TITLE_KEY = re.compile(r"^(?P<key>[A-Za-z][\w ]*?):\s*(?P<value>.*)$")
_SCENE_HEADING = re.compile(
    r"^(?:(?:INT\./EXT|INT/EXT|I/E|INT|EXT|EST)[. ]|\.(?=[^.\s]))", re.IGNORECASE)
_SCENE_NUMBER = re.compile(r"\s*#[\w.\-]+#$")
_TRANSITION = re.compile(r"^(?:[A-Z0-9 '.\-]+ TO:|FADE (?:IN|OUT)[:.]?|FADE TO BLACK\.?|>.*[^<])$")
_CENTERED = re.compile(r"^>\s*(?P<text>.*?)\s*<$")
_SKIPPED = re.compile(r"^(?:#|=)")  # sections, synopses and page breaks
_CUE = re.compile(r"^(?P<forced>@)?(?P<name>[^(^]+?)\s*(?:\(.*\))?\s*\^?$")
_CUE_NAME = re.compile(r"^[\w '.,&\"\-]+$")
_NOTE = re.compile(r"\[\[.*?\]\]", re.DOTALL)
_EMPHASIS = re.compile(r"(\*{1,3}|_)(?=\S)(?P<text>.+?)(?<=\S)\1")
_ACTION_MARK = re.compile(r"^[!~]\s*")


def parse(text: str, path: str) -> list[Section]:
    """Read a screenplay's title page and scenes.

    Raises:
        ParseError: a boneyard `/*` is never closed.
    """
    text = blank_block_comments(text, path)
    text = _NOTE.sub(lambda match: "\n" * match.group().count("\n"), text)
    lines = [line.strip() for line in text.splitlines()]
    title_meta, start = _title_page(lines)
    sections: list[Section] = []
    scene: str | None = None
    turns: list[tuple[str | None, str]] = []
    index = start
    while index < len(lines):
        line = lines[index]
        after_blank = index == start or not lines[index - 1]
        index += 1
        if not line or _TRANSITION.match(line) or _SKIPPED.match(line):
            continue
        if after_blank and _SCENE_HEADING.match(line):
            _close_scene(title_meta, scene, turns, sections)
            scene = _SCENE_NUMBER.sub("", line.removeprefix(".")).strip()
            turns = []
            continue
        name = _cue_name(line) if after_blank and index < len(lines) and lines[index] else None
        if name:
            speech = []
            while index < len(lines) and lines[index] and not _CENTERED.match(lines[index]):
                speech.append(_plain(lines[index]))
                index += 1
            turns.append((name, " ".join(speech)))
            continue
        centered = _CENTERED.match(line)
        turns.append((None, _plain(centered["text"] if centered else _ACTION_MARK.sub("", line))))
    _close_scene(title_meta, scene, turns, sections)
    return sections


def _title_page(lines: list[str]) -> tuple[dict, int]:
    """The title page's metadata and the index of the first line after it."""
    if not lines or not _TITLE_KEY.match(lines[0]) or _TRANSITION.match(lines[0]):
        return {}, 0
    meta: dict = {}
    key = None
    for index, line in enumerate(lines):
        if not line:
            return meta, index + 1
        field = _TITLE_KEY.match(line)
        if field:
            key = field["key"].strip().lower().replace(" ", "_")
            meta[key] = _plain(field["value"])
        elif key:
            meta[key] = f"{meta[key]} {_plain(line)}".strip()
    return meta, len(lines)


def _cue_name(line: str) -> str | None:
    """The character named by a cue line, or None when the line is not a cue."""
    cue = _CUE.match(line)
    if not cue or not _CUE_NAME.match(cue["name"]):
        return None
    name = cue["name"].strip()
    if not cue["forced"] and not (name.isupper() and any(char.isalpha() for char in name)):
        return None
    return name.strip('"').strip()


def _plain(text: str) -> str:
    """Text without Fountain's emphasis markers, nested ones included (at most `_***...***_`: two passes)."""
    for _ in range(2):
        text = _EMPHASIS.sub(lambda match: match["text"], text)
    return text.strip()


def _close_scene(title_meta: dict, scene: str | None, turns: list, sections: list[Section]) -> None:
    """Add the finished scene to `sections` when it has text."""
    meta = {("story" if key == "title" else key): value for key, value in title_meta.items()}
    if scene:
        meta["scene"] = meta["title"] = scene
        turns = turns or [(None, scene)]
    section = dialogue_section(turns, meta)
    if section:
        sections.append(section)
