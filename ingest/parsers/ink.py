"""Ink scripts (.ink): one dialogue Section per knot, and one per stitch.

Supported:
- global tags (`# chapter: 2`, `# region: X` lines before the first content
  or knot) -> metadata of every section;
- knots `=== name ===` / `== name` -> meta["knot"]; stitches `= name` start a
  section of their own with meta["knot"] and meta["stitch"] (the knot's text
  before its first stitch is a section with only meta["knot"]; text before
  the first knot is a section with neither);
- line tags `# key: value` -> metadata of their section (later values win;
  bare tags collect in meta["tags"]), removed from the text; line id tags
  (`#line:abc`, `# id: abc`, `#line_id:`) -> the chunk's meta["line_ids"];
  `# speaker: Name` declares a speaker;
- `Speaker: line` turns, a speaker by the rule in ingest.parsers.dialogue
  (so `Error: ...`, `Keystroke registered: ...`, `Target 1: ...` are
  narration); choices `*`, `+`, nested `* *`, after a gather on the same
  line (`-*[choice]`), labels `(name)`, `[bracketed]` choice-only text ->
  `(choice) text` with the brackets dropped; gathers `-` -> plain lines;
- inline logic, read in one pass (linear in the line's length):
  `{a|b}` / `{&a|b}` / `{~a|b}` / `{!a|b}` -> `a / b`, `{cond: a|b}` ->
  `a / b` with the spaces at the options' edges kept, options that are only
  a divert (`{->a|->b}`) vanish, `{variable}` -> `variable` so the sentence
  reads; multi-line `{ cond:` ... `- else:` ... `}` blocks, also opened on a
  gather line (`- { not flag:`), keep every branch's text;
- Unity rich text (`<i>`, `<b>`, `<color=red>`) and other markup stripped
  (ingest.parsers.markup).
Dropped: diverts `-> target` (END, DONE, tunnels `->->`), threads `<- x`, glue
`<>`, `//` and `/* */` comments (`//*[...]` is a line comment), VAR, CONST,
LIST, INCLUDE, EXTERNAL, TODO and `~` logic lines, and whole
`=== function f() ===` knots.
Not supported: escapes (`\\#`, `\\{`); a speaker inside a conditional branch
line (`- cond: Maren: hi`) loses its condition but keeps the speaker.
Errors: a knot or stitch header without a valid name, an unbalanced `{` or
`}` on a line, a multi-line `{` block never closed, an unclosed `/*`.
"""

from __future__ import annotations

import re

from ingest.errors import ParseError
from ingest.meta import tags_to_meta
from ingest.parsers.dialogue import blank_block_comments, choice_turn, dialogue_sections, split_speaker
from ingest.types import Section

_KNOT = re.compile(
    r"^={2,}\s*(?P<function>function\s+)?(?P<name>[A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*=*$")
_STITCH = re.compile(r"^=\s*(?P<name>[A-Za-z_]\w*)\s*(?:\([^)]*\))?$")
_LOGIC = re.compile(r"^(?:~|(?:VAR|CONST|LIST|INCLUDE|EXTERNAL)\s|TODO:)")
_BLOCK_OPEN = re.compile(r"^\{(?:[^{}]*:)?\s*$")
_MARKS = re.compile(  # gathers, then choice bullets, then a label: `- - (top) * * (pick) text`
    r"^(?P<gather>(?:-(?!>)\s*)*)(?:\(\w+\)\s*)?(?P<choice>(?:[*+]\s*)*)(?:\(\w+\)\s*)?")
_DIVERT = re.compile(r"(?:->->|->|<-)\s*(?:[A-Za-z_][\w.]*(?:\([^)]*\))?)?")
_GLUE = re.compile(r"<>")
_SEQUENCE_MARK = "&~!"
LINE_ID_TAGS = ("line", "id", "line_id", "lineid")


def parse(text: str, path: str) -> list[Section]:
    """Read every knot and stitch of an ink file.

    Raises:
        ParseError: a header, brace or comment is broken; the message names the line.
    """
    text = blank_block_comments(text, path, line_comments=True)
    parts: list[dict] = []
    global_tags: list[str] = []
    current = _new_part(knot=None, stitch=None)
    open_blocks: list[int] = []
    in_function = False
    seen_content = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or _LOGIC.match(line):
            continue
        if line.startswith("=="):
            knot = _KNOT.match(line)
            if not knot:
                raise ParseError(f"knot header {line!r} has no valid name", path, number)
            parts.append(current)
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
            parts.append(current)
            current = _new_part(knot=current["knot"], stitch=stitch["name"])
            seen_content = True
            continue
        content, *tags = line.split("#")
        marks = _MARKS.match(content)
        if _BLOCK_OPEN.match(content[marks.end():].strip()):  # `{ cond:`, also after a gather: `- { cond:`
            open_blocks.append(number)
            continue
        if content.strip() == "}" and open_blocks:
            open_blocks.pop()
            continue
        if not seen_content and not content.strip():
            global_tags.extend(tags)
            continue
        seen_content = True
        line_ids = [tag.partition(":")[2].strip() for tag in tags
                    if tag.partition(":")[0].strip().lower() in LINE_ID_TAGS and tag.partition(":")[1]]
        current["tags"].extend(tag for tag in tags if tag.partition(":")[0].strip().lower() not in LINE_ID_TAGS)
        current["turns"].append(_turn(content, marks, bool(open_blocks), path, number))
        current["line_ids"].append(line_ids[0] if line_ids else None)
    if open_blocks:
        raise ParseError("'{' block is never closed with '}'", path, open_blocks[-1])
    parts.append(current)
    return dialogue_sections([_section_part(part, global_tags) for part in parts], _declared(parts, global_tags))


def _new_part(knot: str | None, stitch: str | None) -> dict:
    """The knot or stitch being read: its names, line tags, turns and their line ids."""
    return {"knot": knot, "stitch": stitch, "tags": [], "turns": [], "line_ids": []}


def _section_part(part: dict, global_tags: list[str]) -> tuple[list, dict, list]:
    """A finished knot or stitch as dialogue_sections takes it: turns, metadata, line ids."""
    meta = tags_to_meta(global_tags + part["tags"])
    for key in ("knot", "stitch"):
        if part[key]:
            meta[key] = part[key]
    return part["turns"], meta, part["line_ids"]


def _declared(parts: list[dict], global_tags: list[str]) -> set[str]:
    """Speakers named by a `# speaker: Name` tag anywhere in the file."""
    return {tag.partition(":")[2].strip() for tags in [global_tags, *(p["tags"] for p in parts)]
            for tag in tags if tag.partition(":")[0].strip().lower() == "speaker"}


def _turn(content: str, marks: re.Match, in_block: bool, path: str, number: int) -> tuple[str | None, str]:
    """One content line (tags already cut off) as a turn: a choice, a gather's text or a plain line."""
    rest = content[marks.end():]
    if marks["choice"]:
        return choice_turn(_visible(rest.replace("[", "").replace("]", ""), path, number))
    if marks["gather"] and in_block:
        rest = _branch_text(rest)
    return split_speaker(_visible(rest, path, number))


def _branch_text(line: str) -> str:
    """A `- cond: text` branch of a multi-line block without its condition (a speaker stays)."""
    speaker, _ = split_speaker(line)
    if speaker or ":" not in line:
        return line
    return line.split(":", 1)[1]


def _visible(text: str, path: str, number: int) -> str:
    """The words a player could see: inline logic resolved (linear time), diverts and glue removed.

    `{a|b}` / `{&a|b}` / `{cond: a|b}` -> `a / b` (options holding only a
    divert vanish, spaces at their edges stay); `{variable}` -> `variable`.

    Raises:
        ParseError: a `}` without its `{`, or a `{` not closed on the line.
    """
    nodes = _inline_tree(text, path, number)
    visible = [False] * len(nodes)
    for index in range(len(nodes) - 1, -1, -1):  # children come after their parents
        node = nodes[index]
        node["shown"] = [option for option in node["options"]
                         if any(visible[item] if isinstance(item, int) else item.strip() for item in option)]
        visible[index] = bool(node["shown"])
    out: list[str] = []
    stack = [(0, 0, 0)]  # node, option, item: where writing resumes
    while stack:
        index, option, item = stack.pop()
        shown = nodes[index]["shown"]
        while option < len(shown):
            if item == 0 and option > 0:
                out.append(" / ")
            if item < len(shown[option]):
                piece = shown[option][item]
                item += 1
                if isinstance(piece, int):
                    stack.append((index, option, item))
                    stack.append((piece, 0, 0))
                    break
                out.append(piece)
            else:
                option, item = option + 1, 0
    return " ".join("".join(out).split())


def _inline_tree(text: str, path: str, number: int) -> list[dict]:
    """One pass over a line's braces: node 0 is the line, each `{...}` a node whose options hold text and child nodes.

    A node's first `:` before any `|` ends its condition, which is dropped.
    """
    nodes = [{"options": [[]], "condition": False}]
    open_nodes = [0]
    start = 0
    for position, char in enumerate(text):
        if char not in "{}|:":
            continue
        node = nodes[open_nodes[-1]]
        if char == ":" and (len(open_nodes) == 1 or node["condition"] or len(node["options"]) > 1):
            continue
        if char == "|" and len(open_nodes) == 1:
            continue
        node["options"][-1].append(_GLUE.sub("", _DIVERT.sub("", text[start:position])))
        start = position + 1
        if char == "{":
            if text[start:start + 1] in tuple(_SEQUENCE_MARK):
                start += 1
            nodes.append({"options": [[]], "condition": False})
            node["options"][-1].append(len(nodes) - 1)
            open_nodes.append(len(nodes) - 1)
        elif char == "}":
            if len(open_nodes) == 1:
                raise ParseError("'}' without a matching '{' on this line", path, number)
            open_nodes.pop()
        elif char == "|":
            node["options"].append([])
        else:  # the condition ends: what came before it is not shown
            node["options"] = [[]]
            node["condition"] = True
    if len(open_nodes) > 1:
        raise ParseError("'{' is not closed on this line", path, number)
    nodes[0]["options"][-1].append(_GLUE.sub("", _DIVERT.sub("", text[start:])))
    return nodes
