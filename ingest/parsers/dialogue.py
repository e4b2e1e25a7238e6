"""What every script parser shares, so a speaker line reads the same whatever format it came from.

A turn is ``(speaker, text)`` with ``speaker`` None for narration.
``dialogue_section`` makes one node's or scene's turns into a Section: one
``Speaker: line`` per turn (narration as a plain line) and ``meta["speaker"]``
listing, sorted, the speakers whose lines are in it. Speaker names written in
capitals (``MAREN``, screenplay style) become Title Case (``Maren``), so one
character has one name across formats.
"""

from __future__ import annotations

import re

from ingest.errors import ParseError
from ingest.meta import clean_meta
from ingest.types import Section

_SPEAKER_LINE = re.compile(
    r"^(?P<speaker>[^\W\d_][\w'.\-]*(?: [\w'.\-]+){0,2})"  # a name of one to three words
    r"(?:\s*:\s+|\s*：\s*)"  # an ASCII colon and a space, or a full-width colon
    r"(?P<text>\S.*)$"
)
_LINE_COMMENT = re.compile(r"(?<!:)//.*$")  # `(?<!:)` keeps the // of a URL
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
CHOICE_MARK = "(choice)"


def speaker_name(raw: str) -> str:
    """One spelling per character: `MAREN` and `Maren` are the same speaker."""
    name = " ".join(raw.split())
    return name.title() if name.isupper() else name


def split_speaker(line: str) -> tuple[str | None, str]:
    """Read `Speaker: text` as a turn; a line whose prefix is not a plausible name is narration.

    A plausible name is one to three words starting with a letter that is not
    lower case, so `note: ...`, `else: ...` and `http://...` stay narration.
    """
    line = line.strip()
    match = _SPEAKER_LINE.match(line)
    if not match or match["speaker"][0].islower():
        return None, line
    return match["speaker"], match["text"].strip()


def choice_turn(text: str) -> tuple[str | None, str]:
    """A player's option as a turn, marked so it reads as a choice rather than something said."""
    speaker, text = split_speaker(text)
    return speaker, f"{CHOICE_MARK} {text}" if text else ""


def dialogue_section(turns: list[tuple[str | None, str]], meta: dict) -> Section | None:
    """One node or scene as a dialogue Section, or None when it has no text.

    Each turn is one line (inner whitespace and newlines collapsed), so no
    line is ever split; ``meta["speaker"]`` is replaced by the speakers present.
    """
    lines = []
    speakers = set()
    for speaker, text in turns:
        text = " ".join(text.split())
        if not text:
            continue
        if speaker:
            name = speaker_name(speaker)
            speakers.add(name)
            lines.append(f"{name}: {text}")
        else:
            lines.append(text)
    if not lines:
        return None
    meta = {key: value for key, value in meta.items() if key != "speaker"}
    place = " > ".join(str(meta[k]) for k in ("knot", "stitch") if meta.get(k)) or meta.get("scene") or meta.get("node")
    if place:
        meta.setdefault("title", place)
    if speakers:
        meta["speaker"] = sorted(speakers)
    return Section(text="\n".join(lines), meta=clean_meta(meta), dialogue=True)


def strip_line_comment(line: str) -> str:
    """Drop a `// comment` to the end of the line."""
    return _LINE_COMMENT.sub("", line)


def blank_block_comments(text: str, path: str, first_line: int = 1) -> str:
    """Drop `/* ... */` comments but keep their newlines, so later errors still name the right line.

    Raises:
        ParseError: a `/*` is never closed; the line is where it opens.
    """
    text = _BLOCK_COMMENT.sub(lambda match: "\n" * match.group().count("\n"), text)
    start = text.find("/*")
    if start >= 0:
        raise ParseError("comment opened with /* is never closed with */", path,
                         first_line + text.count("\n", 0, start))
    return text
