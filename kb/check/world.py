"""The canon as `kb check` reads it from disk: each file's raw lines and its parsed lines, each with a line number.

The parsers keep no line numbers, so every parsed line is found again in the
raw text by searching for its words, from where the previous one was found.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ingest.cards import Card, parse_card
from ingest.decode import decode_text
from ingest.discover import discover
from ingest.errors import IngestError
from ingest.meta import load_yaml
from ingest.parse import parse_sections
from ingest.parsers.dialogue import CHOICE_MARK
from ingest.types import Section
from kb.errors import KBError

TABLE_SUFFIXES = (".csv", ".tsv", ".xlsx")
NEEDLE_CHARS = 40  # enough of a line's start to find it, short enough to sit on one raw line
MENTION_REACH = 12  # raw lines one parsed line may span (a screenplay speech, a wrapped paragraph)


@dataclass
class Line:
    """One parsed line of canon: what is said or written, by whom, under which metadata, where."""

    file: "SourceFile"
    number: int
    text: str
    speaker: str | None
    meta: dict

    @property
    def chapter(self) -> int | float | None:
        """The line's chapter as a number (2, or 2.5 for an interlude); None when absent or not a number."""
        value = self.meta.get("chapter")
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class SourceFile:
    """A file of the checked paths: `kind` is document, script (dialogue), table (loc table) or card."""

    path: Path
    shown: str
    kind: str
    raw: list[str]
    lines: list[Line] = field(default_factory=list)
    metas: list[dict] = field(default_factory=list)
    card: Card | None = None
    card_data: dict | None = None
    error: IngestError | None = None

    def find(self, needle: str, start: int = 1) -> int:
        """The 1-based number of the first raw line from ``start`` holding ``needle`` (then from the top); 0 if none."""
        if not needle:
            return 0
        for number in itertools.chain(range(start, len(self.raw) + 1), range(1, start)):
            if needle in self.raw[number - 1]:
                return number
        return 0

    def key_line(self, key: str) -> int:
        """The line where a metadata key is set (`key: value`, `key:value` in tags, `"key":` in JSON)."""
        pattern = re.compile(rf"(?:^|[\s#\[{{,\"']){re.escape(key)}[\"']?\s*:")
        return next((n for n, text in enumerate(self.raw, start=1) if pattern.search(text)), 1)


def shown_path(path: Path) -> str:
    """A path as findings print it: relative to the working directory when it is below it."""
    try:
        return Path(os.path.relpath(path)).as_posix() if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:  # another drive on Windows
        return str(path)


def load_world(paths: list[str]) -> list[SourceFile]:
    """Every canon file and NPC card under ``paths``, parsed; a file that fails carries its error.

    Raises:
        KBError: a named path does not exist.
    """
    found, _skipped, missing = discover(paths)
    if missing:
        path, why = missing[0]
        raise KBError(f"{path}: {why}")
    return [_load(item.path, item.kind) for item in found]


def _load(path: Path, kind: str) -> SourceFile:
    """One file read, parsed and numbered; a file that cannot be read or parsed carries its error."""
    shown = shown_path(path)
    try:
        data = _read(path, shown)
        raw = _raw_lines(data, shown)
        if kind == "card":
            return SourceFile(path, shown, "card", raw, card=parse_card("\n".join(raw), shown),
                              card_data=_card_mapping(raw))
        sections = parse_sections(data, shown)
    except IngestError as exc:
        return SourceFile(path, shown, kind, [], error=exc)
    file = SourceFile(path, shown, "document", raw)
    if path.suffix.lower() in TABLE_SUFFIXES:
        file.kind = "table"
    elif any(section.dialogue or section.meta.get("speaker") for section in sections):
        file.kind = "script"
    _number_lines(file, sections)
    return file


def _raw_lines(data: bytes, shown: str) -> list[str]:
    """The text's lines to find line numbers in; none for a binary format (.docx, .pdf, .xlsx), whose parser reads bytes."""
    try:
        return decode_text(data, shown).splitlines()
    except IngestError:
        return []


def _read(path: Path, shown: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IngestError(f"cannot read file: {exc.strerror}", shown) from None


def _number_lines(file: SourceFile, sections: list[Section]) -> None:
    """Each section's lines (and each new heading) as Lines, found in the raw text in order."""
    cursor = 1
    heading = None
    for section in sections:
        file.metas.append(section.meta)
        title = str(section.meta.get("title", ""))
        if not section.dialogue and title and title != heading:  # a heading names things as its text does
            heading = title
            last = title.split(" > ")[-1]
            cursor = file.find(last, cursor) or cursor
            file.lines.append(Line(file, cursor, last, None, section.meta))
        speakers = section.meta.get("speaker", []) if section.dialogue else []
        key = str(section.meta.get("key", ""))  # a loc-table row: `key: string`, found from the key's line on
        if key:
            cursor = file.find(key, cursor) or cursor
        for text in section.text.splitlines():
            speaker, said = _split(text.removeprefix(f"{key}: ") if key else text, speakers)
            cursor = next((n for needle in _needles(said) if (n := file.find(needle, cursor))), cursor)
            file.lines.append(Line(file, cursor, said, speaker, section.meta))


def _card_mapping(raw: list[str]) -> dict:
    """The card's YAML as written (keys of `knows` included), for the metadata checks."""
    data = load_yaml("\n".join(raw))  # parse_card has already refused an alias bomb
    return data if isinstance(data, dict) else {}


def _split(text: str, speakers: list[str]) -> tuple[str | None, str]:
    """`Speaker: line` -> (speaker, line) for the section's own speakers; anything else is narration.

    A player's choice loses its `(choice)` mark: the words are what the checks read.
    """
    for speaker in speakers:
        if text.startswith(f"{speaker}: "):
            return speaker, text[len(speaker) + 2:].removeprefix(CHOICE_MARK).strip()
    return None, text.removeprefix(CHOICE_MARK).strip()


def _needles(text: str) -> list[str]:
    """The start of a line's words as the raw file would have them: as parsed, then without a leading `(aside)`."""
    text = text.strip()
    without_aside = re.sub(r"^\([^)]*\)\s*", "", text)
    return [t[:NEEDLE_CHARS].strip() for t in (text, without_aside) if t]


def mention_line(line: Line, form: str) -> int:
    """The raw line where ``form`` is written in ``line`` (a long parsed line may span several raw ones)."""
    number = line.file.find(form, line.number) if line.number else 0
    return number if line.number <= number <= line.number + MENTION_REACH else line.number
