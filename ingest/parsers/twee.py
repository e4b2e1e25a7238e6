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
- link macros keep their label: SugarCube `<<link "Go">>`, `<<button
  [[Go|Hall]]>>`, `<<linkreplace "Go">>`..., Harlowe `(link: "Go")`,
  `(link-goto: "Go", "Hall")`..., Chapbook `{link to: 'Hall', label: 'Go'}`,
  `{reveal link: 'Go', ...}`;
- a line that is only a link (or a link macro, or a Chapbook `> [[link]]`)
  -> `(choice) text`, as Yarn options and ink choices; `Speaker: line` turns
  (a speaker by the rule in ingest.parsers.dialogue, so `Empathy: 5` is
  narration); everything else as narration lines;
- Chapbook `{variable}` inserts -> the variable's name, so the sentence reads;
  `{cycling link for: 'x', choices: ['a', 'b']}` and `{dropdown menu ...}`
  -> `a / b`.
Dropped: SugarCube `<<macros>>` (spanning lines too; `<<script>>` bodies
whole), Harlowe `(macro: ...)` calls (nested parentheses and lines
included), Chapbook vars sections (`name: value` lines above a `--` line) and
other inserts (`{embed passage: 'x'}`, `{back link}`), HTML tags and
`<!-- -->` comments, `/* */` comments, hook brackets `[ ]` and `{ }`, hook
names `|name>` / `<name|`, `''bold''`, `**bold**`, `//italic//`,
`__underline__` and `~~strike~~` marks; markup stripped by ingest.parsers.markup.
- a split tweego project: a file without StoryTitle takes meta["story"]
  from a StoryTitle passage in another .twee/.tw file of its folder or the
  folder above (project_meta, called by ingest.load with the file's path).
Not supported: `$variables` stay verbatim; a prose parenthesis that looks
like a macro (`(note: ...)`) is dropped; when only the StoryTitle file of a
split project changes, the other files keep the story they were ingested with.
Errors: a `::` header without a name or otherwise malformed, text before
the first passage, a StoryData that is not JSON (line inside the file), an
unclosed `/*`.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from ingest.errors import ParseError
from ingest.meta import tags_to_meta
from ingest.parsers.dialogue import blank_block_comments, choice_turn, dialogue_sections, split_speaker
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
_SCRIPT_MACRO = re.compile(r"<<script>>.*?<</script>>", re.DOTALL)
_SUGARCUBE_MACRO = re.compile(r"<<(?P<name>/?[\w-]*)(?P<args>.*?)>>", re.DOTALL)
_HARLOWE_MACRO_START = re.compile(r"\((?P<name>[A-Za-z][\w-]*):")
_LINK_MACRO = re.compile(r"^(?:link|button|click|choice|actions|back|return|cycling-link|seq-link)", re.IGNORECASE)
_QUOTED = re.compile(r"\"(?P<double>[^\"]*)\"|'(?P<single>[^']*)'")
_CHAPBOOK_INSERT = re.compile(r"\{(?P<name>[A-Za-z_][\w.]*(?: [A-Za-z_]\w*)*)\s*(?::(?P<args>[^{}\n]*))?\}")
_CHAPBOOK_LABEL = re.compile(r"\blabel:\s*(?:\"(?P<double>[^\"]*)\"|'(?P<single>[^']*)')")
_CHAPBOOK_CHOICES = re.compile(r"\bchoices:\s*\[(?P<list>[^\]]*)\]")
_CHAPBOOK_VAR = re.compile(r"^[\w.]+(?:\s*\([^)]*\))?\s*:\s*.*$")
_BLOCKQUOTE = re.compile(r"^>\s+")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HOOK_NAME = re.compile(r"\|\w+>|<\w+\|")
_HTML_TAG = re.compile(r"<[^<>]*>")
_HOOK_BRACKET = re.compile(r"[\[\]{}]")
_TEXT_MARKS = re.compile(r"''|(?<![:/])//|__|~~|\*\*+")


def parse(text: str, path: str) -> list[Section]:
    """Read every story passage of a Twee file.

    Raises:
        ParseError: a header, StoryData or comment is broken; the message names the line.
    """
    passages = _passages(text, path)
    story = _title_of(passages)
    for passage in passages:
        if passage["name"] == "StoryData":
            _check_story_data(passage, path)
    parts = []
    for passage in passages:
        if passage["name"] in ("StoryTitle", "StoryData") or _SKIPPED_TAGS & set(passage["tags"]):
            continue
        body = _without_macros(blank_block_comments("\n".join(passage["body"]), path, passage["line"]))
        meta = {"story": story, **tags_to_meta(passage["tags"]), "node": passage["name"]}
        parts.append(([_turn(line) for line in _without_vars_section(body.splitlines())], meta, []))
    return dialogue_sections(parts)


def project_meta(file: Path) -> dict:
    """`story` for a file of a split tweego project: the StoryTitle found in its folder or the one above."""
    for folder in (file.parent, file.parent.parent):
        for other in sorted(folder.glob("*.tw*")):
            if other.suffix.lower() in (".twee", ".tw") and other != file:
                title = _story_title(other, other.stat().st_mtime_ns)
                if title:
                    return {"story": title}
    return {}


@functools.lru_cache(maxsize=4096)
def _story_title(file: Path, mtime_ns: int) -> str | None:
    """The StoryTitle passage's text in one Twee file (cached per file version), or None."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    if ":: StoryTitle" not in text:
        return None
    try:
        passages = _passages(text, str(file))
    except ParseError:
        return None
    return _title_of(passages)


def _title_of(passages: list[dict]) -> str | None:
    """The text of the StoryTitle passage, if there is one with text."""
    return next((" ".join(p["body"]).strip() or None for p in passages if p["name"] == "StoryTitle"), None)


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


def _without_macros(body: str) -> str:
    """A passage body with SugarCube and Harlowe macros gone (lines they span included), link labels kept as links."""
    body = _SUGARCUBE_MACRO.sub(_macro_label, _SCRIPT_MACRO.sub("", _HTML_COMMENT.sub("", body)))
    return _strip_harlowe_macros(body)


def _macro_label(match: re.Match) -> str:
    """A link macro as `[[label]]` (so a line of it reads as a choice); any other macro as nothing."""
    if not _LINK_MACRO.match(match["name"]):
        return ""
    link = _LINK.search(match["args"])
    if link:
        return link.group()
    quoted = _QUOTED.search(match["args"])
    label = quoted and (quoted["double"] if quoted["double"] is not None else quoted["single"])
    return f"[[{label}]] " if label else ""


def _without_vars_section(lines: list[str]) -> list[str]:
    """A Chapbook passage without its vars section: `name: value` lines above a `--` line."""
    if "--" not in (line.strip() for line in lines):
        return lines
    end = [line.strip() for line in lines].index("--")
    if all(_CHAPBOOK_VAR.match(line.strip()) for line in lines[:end] if line.strip()):
        return lines[end + 1:]
    return lines


def _turn(line: str) -> tuple[str | None, str]:
    """One passage line as a turn; a line that is only a link is the player's choice."""
    line = _BLOCKQUOTE.sub("", line.strip())
    link = _LINK_LINE.match(line)
    if link:
        return choice_turn(_visible(_link_text(link["inner"])))
    return split_speaker(_visible(line))


def _visible(line: str) -> str:
    """The words a reader sees: links as their text, inserts, HTML and hook markup removed."""
    line = _LINK.sub(lambda match: _link_text(match["inner"]), line)
    line = _CHAPBOOK_INSERT.sub(_insert_text, line)
    line = _HTML_TAG.sub("", _HOOK_NAME.sub("", line))
    return _TEXT_MARKS.sub("", _HOOK_BRACKET.sub("", line)).strip()


def _insert_text(match: re.Match) -> str:
    """A Chapbook insert as what it shows: `{name}` -> name, its choices, a link's label, otherwise nothing."""
    if match["args"] is None and " " not in match["name"]:
        return match["name"]
    choices = _CHAPBOOK_CHOICES.search(match["args"] or "")
    if choices:
        return " / ".join(q["double"] or q["single"] or "" for q in _QUOTED.finditer(choices["list"])
                          if q["double"] or q["single"])
    label = _CHAPBOOK_LABEL.search(match["args"] or "")
    if not label and match["name"].endswith("link"):
        label = _QUOTED.search(match["args"] or "")
    return (label["double"] if label["double"] is not None else label["single"]) if label else ""


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


def _strip_harlowe_macros(text: str) -> str:
    """Remove `(name: ...)` calls, counting parentheses so nested ones and their lines go too.

    A link macro (`(link: "Go")`, `(link-goto: "Go", "Hall")`) leaves `[[Go]]`;
    a call never closed is cut at its line's end.
    """
    kept = []
    position = 0
    while match := _HARLOWE_MACRO_START.search(text, position):
        kept.append(text[position:match.start()])
        depth = 0
        end = match.start()
        while end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
            if depth == 0:
                break
        if depth:
            end = text.find("\n", match.start())
            end = len(text) if end < 0 else end
        quoted = _QUOTED.search(text, match.end(), end)
        if match["name"].lower().startswith("link") and quoted:
            kept.append(f"[[{quoted['double'] if quoted['double'] is not None else quoted['single']}]] ")
        position = end
    kept.append(text[position:])
    return "".join(kept)
