"""What every script parser shares, so a speaker line reads the same whatever format it came from.

A turn is ``(speaker, text)`` with ``speaker`` None for narration.
``dialogue_section`` makes one node's or scene's turns into a Section: one
``Speaker: line`` per turn (narration as a plain line), display markup
stripped (ingest.parsers.markup), ``meta["speaker"]`` listing, sorted, the
speakers whose lines are in it, and ``Section.line_ids`` holding each line's
recorded id (Yarn `#line:`, ink `#line:`/`# id:` tags, loc-table keys).
Speaker names written in capitals (``MAREN``, ``REGGIE'S VOICE``, screenplay
style) become Title Case (``Maren``, ``Reggie's Voice``), so one character has
one name across formats.

Which `X: text` prefix is a speaker (scripts without cues: ink, Yarn, Twee):
- it looks like a name: one to three words (lower-case particles such as
  `of`, `the`, `de`, `van` between them allowed), each starting with a capital
  or a letter without case (Chinese), no digits, and not a label word such as
  `Error`, `Note`, `Ending`, `Warning`, `Step` (LABEL_WORDS);
- what follows has a letter, so a stat line (`Empathy: 5`) is narration;
- and, over the whole file, it is declared (ink's `# speaker: Name` tag),
  or it speaks twice, or some other name in the file speaks too: a file that
  writes dialogue as `Name: line` keeps its one-line characters, while a
  lone `Notice: ...` in a prose script stays narration.
"""

from __future__ import annotations

import re
from collections import Counter

from ingest.errors import ParseError
from ingest.meta import clean_meta
from ingest.parsers.markup import strip_markup
from ingest.types import Section

_SPEAKER_LINE = re.compile(
    r"^(?P<speaker>[^\W\d_][\w'.\-]*(?: [\w'.\-]+){0,4})"  # a name of one to five words (particles included)
    r"(?:\s*:\s+|\s*：\s*)"  # an ASCII colon and a space, or a full-width colon
    r"(?P<text>\S.*)$"
)
NAME_PARTICLES = {"of", "the", "de", "van", "von", "la", "le", "du", "der", "da", "di", "al", "el", "y", "and", "&"}
LABEL_WORDS = {
    "error", "warning", "note", "notes", "notice", "ending", "hint", "tip", "todo", "result", "score",
    "level", "status", "date", "time", "location", "objective", "question", "answer", "example",
    "summary", "chapter", "part", "step", "goal", "reward", "cost", "price", "total", "title",
    "author", "source", "link", "url", "version", "debug", "info", "log", "fixme", "bug", "ps",
    "update", "tags", "tag", "here", "this", "that", "there", "it", "but", "and", "so", "then",
}
_LINE_COMMENT = re.compile(r"(?<!:)//.*$")  # `(?<!:)` keeps the // of a URL
_COMMENT_OPENER = re.compile(r"(?<!:)//|/\*")
_BLOCK_OPENER = re.compile(r"/\*")
_LETTER = re.compile(r"[^\W\d_]")
CHOICE_MARK = "(choice)"


def speaker_name(raw: str) -> str:
    """One spelling per character: `MAREN` and `Maren` are the same speaker."""
    name = " ".join(raw.split())
    if not name.isupper():
        return name
    return re.sub(r"(^|[\s\-.,&\"(])(\w)", lambda m: m[1] + m[2].upper(), name.lower())


def split_speaker(line: str) -> tuple[str | None, str]:
    """Read `Speaker: text` as a turn when the prefix looks like a name (module docstring); else narration.

    `note: ...`, `Error: ...`, `Target 1: ...`, `Here's a url: http://...`
    and `Empathy: 5` stay narration. Whether the file confirms the name is
    decided later, by dialogue_sections.
    """
    line = line.strip()
    match = _SPEAKER_LINE.match(line)
    if not match or not _looks_like_name(match["speaker"]) or not _LETTER.search(match["text"]):
        return None, line
    return match["speaker"], match["text"].strip()


def _looks_like_name(name: str) -> bool:
    """One to three capitalised words (particles between them free), no digits, not a label word."""
    words = name.split()
    if words[0].lower() in LABEL_WORDS or any(char.isdigit() for char in name):
        return False
    named = [word for word in words if word.lower() not in NAME_PARTICLES]
    return (0 < len(named) <= 3 and words[0].lower() not in NAME_PARTICLES
            and all(not word[0].islower() for word in named))


def choice_turn(text: str) -> tuple[str | None, str]:
    """A player's option as a turn, marked so it reads as a choice rather than something said."""
    speaker, text = split_speaker(text)
    return speaker, f"{CHOICE_MARK} {text}" if text else ""


def dialogue_sections(parts: list[tuple[list, dict, list]], declared: set[str] = frozenset()) -> list[Section]:
    """A file's nodes as Sections, ``(turns, meta, line ids)`` each, with the file's speakers confirmed.

    A speaker is kept when declared, when it speaks twice in the file, or when
    another name in the file speaks too (module docstring); otherwise its line
    is narration again, written as it was.
    """
    counts = Counter(speaker for turns, _, _ in parts for speaker, _ in turns if speaker)
    file_has_dialogue = len(counts) > 1 or any(count > 1 for count in counts.values())
    sections = []
    for turns, meta, line_ids in parts:
        confirmed = [(speaker, text) if not speaker or speaker in declared or file_has_dialogue
                     else (None, f"{speaker}: {text}") for speaker, text in turns]
        section = dialogue_section(confirmed, meta, line_ids)
        if section:
            sections.append(section)
    return sections


def dialogue_section(turns: list[tuple[str | None, str]], meta: dict,
                     line_ids: list[str | None] | None = None) -> Section | None:
    """One node or scene as a dialogue Section, or None when it has no text.

    Each turn is one line (markup stripped, inner whitespace and newlines
    collapsed), so no line is ever split; ``meta["speaker"]`` is replaced by
    the speakers present; ``line_ids``, parallel to ``turns``, gives each
    line's recorded id.
    """
    lines = []
    kept_ids: list[str | None] = []
    speakers = set()
    for index, (speaker, text) in enumerate(turns):
        text = " ".join(strip_markup(text).split())
        if not text or text == CHOICE_MARK:
            continue
        if speaker:
            name = speaker_name(speaker)
            speakers.add(name)
            lines.append(f"{name}: {text}")
        else:
            lines.append(text)
        kept_ids.append(line_ids[index] if line_ids else None)
    if not lines:
        return None
    meta = {key: value for key, value in meta.items() if key != "speaker"}
    place = " > ".join(str(meta[k]) for k in ("knot", "stitch") if meta.get(k)) or meta.get("scene") or meta.get("node")
    if place:
        meta.setdefault("title", place)
    if speakers:
        meta["speaker"] = sorted(speakers)
    return Section(text="\n".join(lines), meta=clean_meta(meta), dialogue=True,
                   line_ids=kept_ids if any(kept_ids) else [])


def strip_line_comment(line: str) -> str:
    """Drop a `// comment` to the end of the line."""
    return _LINE_COMMENT.sub("", line)


def blank_block_comments(text: str, path: str, first_line: int = 1, line_comments: bool = False) -> str:
    """Drop `/* ... */` comments but keep their newlines, so later errors still name the right line.

    With ``line_comments`` (ink, Yarn), `// ...` comments go too, read in
    the same pass, so `//*[old choice]` is a line comment, not a `/*`.

    Raises:
        ParseError: a `/*` is never closed; the line is where it opens.
    """
    opener = _COMMENT_OPENER if line_comments else _BLOCK_OPENER
    kept = []
    position = 0
    while match := opener.search(text, position):  # one pass: a regex would rescan from every unclosed /*
        if match.group() == "//":
            end = text.find("\n", match.end())
            end = len(text) if end < 0 else end
        else:
            end = text.find("*/", match.end()) + 2
            if end < 2:
                raise ParseError("comment opened with /* is never closed with */", path,
                                 first_line + text.count("\n", 0, match.start()))
        kept.append(text[position:match.start()] + "\n" * text.count("\n", match.start(), end))
        position = end
    return "".join(kept) + text[position:]
