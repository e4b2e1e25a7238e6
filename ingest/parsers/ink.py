"""Ink scripts (.ink): one dialogue Section per knot, and one per stitch.

Supported:
- global tags (`# chapter: 2`, `# region: X` lines before the first content
  or knot) -> metadata of every section;
- knots `=== name ===` / `== name` -> meta["knot"]; stitches `= name` start a
  section of their own with meta["knot"] and meta["stitch"] (the knot's text
  before its first stitch is a section with only meta["knot"]; text before
  the first knot is a section with neither);
- line tags `# key: value` -> metadata of their section (later values win;
  bare tags collect in meta["tags"]), removed from the text;
- `Speaker: line` turns; choices `*`, `+`, nested `* *`, labels `(name)`,
  `[bracketed]` choice-only text -> `(choice) text` with the brackets dropped;
  gathers `-` -> plain lines;
- inline logic: `{a|b}` / `{&a|b}` / `{~a|b}` / `{!a|b}` -> `a / b`,
  `{cond: a|b}` -> `a / b`, `{variable}` -> nothing; multi-line
  `{ cond:` ... `- else:` ... `}` blocks keep every branch's text.
Dropped: diverts `-> target` (END, DONE, tunnels `->->`), threads `<- x`, glue
`<>`, `//` and `/* */` comments, VAR, CONST, LIST, INCLUDE, EXTERNAL, TODO and
`~` logic lines, and whole `=== function f() ===` knots.
Not supported: escapes (`\\#`, `\\{`); a speaker inside a conditional branch
line (`- cond: Maren: hi`) loses its condition but keeps the speaker.
Errors: a knot or stitch header without a valid name, an unbalanced `{` or
`}` on a line, a multi-line `{` block never closed, an unclosed `/*`.
"""

from __future__ import annotations

import re

from ingest.errors import ParseError
from ingest.meta import tags_to_meta
from ingest.parsers.dialogue import (
    blank_block_comments,
    choice_turn,
    dialogue_section,
    split_speaker,
    strip_line_comment,
)
from ingest.types import Section

_KNOT = re.compile(
    r"^={2,}\s*(?P<function>function\s+)?(?P<name>[A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*=*$")
_STITCH = re.compile(r"^=\s*(?P<name>[A-Za-z_]\w*)\s*(?:\([^)]*\))?$")
_LOGIC = re.compile(r"^(?:~|(?:VAR|CONST|LIST|INCLUDE|EXTERNAL)\s|TODO:)")
_BLOCK_OPEN = re.compile(r"^\{(?:[^{}]*:)?\s*$")
_CHOICE = re.compile(r"^[*+](?:\s*[*+])*\s*(?:\(\w+\)\s*)?(?P<text>.*)$")
_GATHER = re.compile(r"^(?:-(?!>)\s*)+(?:\(\w+\)\s*)?(?P<text>.*)$")
_INNERMOST_BRACES = re.compile(r"\{(?P<body>[^{}]*)\}")
_DIVERT = re.compile(r"(?:->->|->|<-)\s*(?:[A-Za-z_][\w.]*(?:\([^)]*\))?)?")
_GLUE = re.compile(r"<>")


def parse(text: str, path: str) -> list[Section]:
    """Read every knot and stitch of an ink file.

    Raises:
        ParseError: a header, brace or comment is broken; the message names the line.
    """
    text = blank_block_comments(text, path)
    sections: list[Section] = []
    global_tags: list[str] = []
    current = _new_part(knot=None, stitch=None)
    open_blocks: list[int] = []
    in_function = False
    seen_content = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = strip_line_comment(raw).strip()
        if not line or _LOGIC.match(line):
            continue
        if line.startswith("=="):
            knot = _KNOT.match(line)
            if not knot:
                raise ParseError(f"knot header {line!r} has no valid name", path, number)
            _close(current, global_tags, sections)
            current = _new_part(knot=knot["name"], stitch=None)
            in_function = bool(knot["function"])
            seen_content = True
            continue
        if in_function:
            continue
        if line.startswith("="):
            stitch = _STITCH.match(line)
            if not stitch:
                raise ParseError(f"stitch header {line!r} has no valid name", path, number)
            _close(current, global_tags, sections)
            current = _new_part(knot=current["knot"], stitch=stitch["name"])
            seen_content = True
            continue
        if _BLOCK_OPEN.match(line):
            open_blocks.append(number)
            continue
        if line == "}" and open_blocks:
            open_blocks.pop()
            continue
        _check_braces(line, path, number)
        content, *tags = line.split("#")
        if not seen_content and not content.strip():
            global_tags.extend(tags)
            continue
        seen_content = True
        current["tags"].extend(tags)
        current["turns"].append(_turn(content, in_block=bool(open_blocks)))
    if open_blocks:
        raise ParseError("'{' block is never closed with '}'", path, open_blocks[-1])
    _close(current, global_tags, sections)
    return sections


def _new_part(knot: str | None, stitch: str | None) -> dict:
    """The knot or stitch being read: its names, line tags and turns."""
    return {"knot": knot, "stitch": stitch, "tags": [], "turns": []}


def _close(part: dict, global_tags: list[str], sections: list[Section]) -> None:
    """Add the finished knot or stitch to `sections` when it has text."""
    meta = tags_to_meta(global_tags + part["tags"])
    for key in ("knot", "stitch"):
        if part[key]:
            meta[key] = part[key]
    section = dialogue_section(part["turns"], meta)
    if section:
        sections.append(section)


def _check_braces(line: str, path: str, number: int) -> None:
    """Refuse a line whose braces do not pair up: its logic could not be told from its text."""
    depth = 0
    for char in line:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise ParseError("'}' without a matching '{' on this line", path, number)
    if depth:
        raise ParseError("'{' is not closed on this line", path, number)


def _turn(content: str, in_block: bool) -> tuple[str | None, str]:
    """One content line (tags already cut off) as a turn."""
    line = content.strip()
    choice = _CHOICE.match(line)
    if choice:
        return choice_turn(_visible(choice["text"].replace("[", "").replace("]", "")))
    gather = _GATHER.match(line)
    if gather:
        line = _branch_text(gather["text"]) if in_block else gather["text"]
    return split_speaker(_visible(line))


def _branch_text(line: str) -> str:
    """A `- cond: text` branch of a multi-line block without its condition (a speaker stays)."""
    speaker, _ = split_speaker(line)
    if speaker or ":" not in line:
        return line
    return line.split(":", 1)[1]


def _visible(text: str) -> str:
    """The words a player could see: inline logic resolved, diverts and glue removed."""
    while True:
        resolved = _INNERMOST_BRACES.sub(_inline_text, text)
        if resolved == text:
            break
        text = resolved
    return _GLUE.sub("", _DIVERT.sub("", text)).strip()


def _inline_text(match: re.Match) -> str:
    """`{a|b}` and `{cond: a|b}` -> `a / b`; a bare `{variable}` prints nothing we know."""
    body = match["body"]
    if ":" in body:
        body = body.split(":", 1)[1]
    elif "|" not in body:
        return ""
    options = [option.strip() for option in body.lstrip("&~!").split("|")]
    return " / ".join(option for option in options if option)
