"""Twine stories in Twee 3 (.twee, .tw): one dialogue Section per passage.

Supported:
- passages `:: Name [tag1 tag2] {"position":"..."}` -> meta["node"] = name
  plus the tags through tags_to_meta (`[chapter:1 region:Saltreach]` gives
  chapter=1, region="Saltreach"; bare tags go to meta["tags"]);
- `StoryTitle` text -> meta["story"] of every section; `StoryData` is checked
  to be JSON and otherwise skipped; passages tagged `script` or `stylesheet`
  are skipped;
- links `[[text->Target]]`, `[[Target<-text]]`, `[[text|Target]]`,
  `[[Target]]` (and SugarCube setters `[[a|b][$x to 1]]`) -> their text;
- a line that is only a link -> `(choice) text`, as Yarn options and ink
  choices; `Speaker: line` turns; everything else as narration lines.
Dropped: SugarCube `<<macros>>`, Harlowe `(macro: ...)` calls (nested
parentheses included), HTML tags and one-line `<!-- -->` comments, `/* */`
comments, hook brackets `[ ]` and hook names `|name>` / `<name|`.
Not supported: a Harlowe macro spanning lines is cut at the line end;
`$variables`, `''bold''` and `//italic//` markup stay verbatim; a prose
parenthesis that looks like a macro (`(note: ...)`) is dropped.
Errors: a `::` header without a name or otherwise malformed, text before
the first passage, a StoryData that is not JSON (line inside the file), an
unclosed `/*`.
"""

from __future__ import annotations

import json
import re

from ingest.errors import ParseError
from ingest.meta import tags_to_meta
from ingest.parsers.dialogue import (
    blank_block_comments,
    choice_turn,
    dialogue_section,
    split_speaker,
)
from ingest.types import Section

_PASSAGE_HEADER = re.compile(
    r"^::(?P<name>(?:\\.|[^\\\[{])*)"  # the name, with \[ \{ escapes
    r"(?:\[(?P<tags>[^\]]*)\])?\s*"
    r"(?P<metadata>\{.*\})?\s*$"
)
_ESCAPE = re.compile(r"\\(.)")
_SKIPPED_TAGS = {"script", "stylesheet"}
_LINK = re.compile(r"\[\[(?P<inner>.*?)\]\]")
_LINK_LINE = re.compile(r"^\[\[(?P<inner>(?:(?!\]\]).)*)\]\]$")
_SUGARCUBE_MACRO = re.compile(r"<<.*?>>")
_HARLOWE_MACRO_START = re.compile(r"\([A-Za-z][\w-]*:")
_HOOK_NAME = re.compile(r"\|\w+>|<\w+\|")
_HTML_TAG = re.compile(r"<[^<>]*>")
_HOOK_BRACKET = re.compile(r"[\[\]]")


def parse(text: str, path: str) -> list[Section]:
    """Read every story passage of a Twee file.

    Raises:
        ParseError: a header, StoryData or comment is broken; the message names the line.
    """
    passages = _passages(text, path)
    story = None
    sections: list[Section] = []
    for passage in passages:
        if passage["name"] == "StoryTitle":
            story = " ".join(passage["body"]).strip()
        elif passage["name"] == "StoryData":
            _check_story_data(passage, path)
    for passage in passages:
        if passage["name"] in ("StoryTitle", "StoryData") or _SKIPPED_TAGS & set(passage["tags"]):
            continue
        body = blank_block_comments("\n".join(passage["body"]), path, passage["line"])
        meta = {"story": story, **tags_to_meta(passage["tags"]), "node": passage["name"]}
        section = dialogue_section([_turn(line) for line in body.splitlines()], meta)
        if section:
            sections.append(section)
    return sections


def _passages(text: str, path: str) -> list[dict]:
    """Split the file into passages: name, tags, first body line number and body lines."""
    passages: list[dict] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("::"):
            header = _PASSAGE_HEADER.match(line.rstrip())
            if not header:
                raise ParseError("malformed passage header; expected ':: Name [tags] {metadata}'",
                                 path, number)
            name = _ESCAPE.sub(r"\1", header["name"]).strip()
            if not name:
                raise ParseError("passage header ':: Name [tags]' has no name", path, number)
            tags = header["tags"].split() if header["tags"] else []
            passages.append({"name": name, "tags": tags, "line": number + 1, "body": []})
        elif passages:
            passages[-1]["body"].append(line)
        elif line.strip():
            raise ParseError("text before the first ':: Name' passage header", path, number)
    return passages


def _check_story_data(passage: dict, path: str) -> None:
    """Refuse a StoryData passage that is not JSON, naming the line in the file."""
    try:
        json.loads("\n".join(passage["body"]))
    except json.JSONDecodeError as exc:
        raise ParseError(f"StoryData is not valid JSON: {exc.msg}", path,
                         passage["line"] + exc.lineno - 1) from None


def _turn(line: str) -> tuple[str | None, str]:
    """One passage line as a turn; a line that is only a link is the player's choice."""
    link = _LINK_LINE.match(line.strip())
    if link:
        return choice_turn(_visible(_link_text(link["inner"])))
    return split_speaker(_visible(line))


def _visible(line: str) -> str:
    """The words a reader sees: links as their text, macros, HTML and hook markup removed."""
    line = _LINK.sub(lambda match: _link_text(match["inner"]), line)
    line = _strip_harlowe_macros(_SUGARCUBE_MACRO.sub("", line))
    line = _HTML_TAG.sub("", _HOOK_NAME.sub("", line))
    return _HOOK_BRACKET.sub("", line).strip()


def _link_text(inner: str) -> str:
    """The text a link shows: `text->T`, `T<-text`, `text|T`, or the target itself."""
    inner = inner.split("][")[0]
    if "|" in inner:
        return inner.split("|", 1)[0]
    if "->" in inner:
        return inner.rsplit("->", 1)[0]
    if "<-" in inner:
        return inner.split("<-", 1)[1]
    return inner


def _strip_harlowe_macros(line: str) -> str:
    """Remove `(name: ...)` calls, counting parentheses so nested ones go too."""
    kept = []
    position = 0
    while match := _HARLOWE_MACRO_START.search(line, position):
        kept.append(line[position:match.start()])
        depth = 0
        end = match.start()
        while end < len(line):
            depth += {"(": 1, ")": -1}.get(line[end], 0)
            end += 1
            if depth == 0:
                break
        position = end
    kept.append(line[position:])
    return "".join(kept)
