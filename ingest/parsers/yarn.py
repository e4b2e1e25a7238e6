"""Yarn Spinner scripts (.yarn): one dialogue Section per node.

Supported:
- nodes of `key: value` headers, `---`, body, `===`; every header becomes
  metadata (`title` also as `node`), and `tags:` goes through tags_to_meta,
  so `tags: chapter:1 region:Saltreach` gives chapter=1, region="Saltreach";
- `Speaker: line` turns (a speaker by the rule in ingest.parsers.dialogue);
  options `-> text` and Yarn 1 options `[[Text|Node]]` / `[[Node]]` kept as
  `(choice) text`; line group items `=> text` kept as plain lines;
- `#line:abc` hashtags -> the chunk's meta["line_ids"];
- inline `{$expressions}` -> the expression without `$` (`{$gold}` -> `gold`),
  so the sentence still reads; format functions `[select value={$g} male="he"
  female="she"/]`, `[plural ...]`, `[ordinal ...]` -> their cases, `he / she`;
  `[b]`/`[/b]` and other markup stripped (ingest.parsers.markup); escapes
  `\\#`, `\\[`, `\\{` undone;
- file tags (`# key:value` lines before the first node) as metadata of every node.
Dropped: `<<commands>>` (so option conditions and jumps), other end-of-line
hashtags (`#mood:sad`), `//` comments.
Not supported: the text of both `<<if>>` branches is kept.
Skipped (NothingToIndex, by ingest.load): a file whose nodes hold only commands.
Errors: a node not closed with `===` (line of its first header), a body
without a `title:` header (line of its `---`), a line before `---` that is
not a `key: value` header, headers never followed by `---`.
"""

from __future__ import annotations

import re

from ingest.errors import ParseError
from ingest.meta import tags_to_meta
from ingest.parsers.dialogue import choice_turn, dialogue_sections, split_speaker, strip_line_comment
from ingest.types import Section

_HEADER = re.compile(r"^(?P<key>[A-Za-z_][\w.\-]*)\s*:\s*(?P<value>.*)$")
_FILE_TAG = re.compile(r"^#\s*(?P<tag>.+)$")
_HASHTAGS = re.compile(r"(?:^|(?<=\s))(?<!\\)#\S.*$")
_OPTION = re.compile(r"^->\s*(?P<text>.*)$")
_YARN1_OPTION = re.compile(r"^\[\[(?P<inner>[^\]]*)\]\]$")
_FORMAT_FUNCTION = re.compile(r"\[(?:select|plural|ordinal)\b(?P<args>[^\[\]]*)/\]")
_FORMAT_CASE = re.compile(r"\b(?!value=)\w+=\"(?P<text>[^\"]*)\"")
_EXPRESSION = re.compile(r"(?<!\\)\{(?P<expression>[^{}]*)\}")
_ESCAPE = re.compile(r"\\([#\[\]{}<>/\\])")
_LINE_GROUP_ITEM = re.compile(r"^=>\s*")


def parse(text: str, path: str) -> list[Section]:
    """Read every node of a Yarn file.

    Raises:
        ParseError: the node structure is broken; the message names the line.
    """
    parts: list[tuple[list, dict, list]] = []
    file_tags: list[str] = []
    headers: dict[str, str] = {}
    node_line = 0
    body: list[str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = strip_line_comment(raw).strip()
        if body is not None:
            if line == "===":
                parts.append(_node_part(headers, body, file_tags))
                headers, body = {}, None
            else:
                body.append(line)
            continue
        if not line:
            continue
        if line == "---":
            if "title" not in headers:
                raise ParseError("node body starts without a 'title:' header", path, number)
            body = []
            continue
        file_tag = _FILE_TAG.match(line)
        if file_tag and not headers and not parts:
            file_tags.append(file_tag["tag"])
            continue
        header = _HEADER.match(line)
        if not header:
            raise ParseError("expected a 'key: value' node header or '---'", path, number)
        if not headers:
            node_line = number
        headers[header["key"]] = header["value"].strip()
    if body is not None:
        raise ParseError(f"node '{headers['title']}' is not closed with ===", path, node_line)
    if headers:
        raise ParseError("node headers are not followed by '---' and a body", path, node_line)
    return dialogue_sections(parts)


def _node_part(headers: dict[str, str], body: list[str], file_tags: list[str]) -> tuple[list, dict, list]:
    """One node's turns, metadata and line ids, as dialogue_sections takes them."""
    meta = {key: value for key, value in headers.items() if key != "tags"}
    meta.update(tags_to_meta(file_tags + headers.get("tags", "").split()))
    meta["node"] = headers["title"]
    return [_turn(line) for line in body], meta, [_line_id(line) for line in body]


def _line_id(line: str) -> str | None:
    """The `#line:abc` id of a body line, if it has one."""
    tags = _HASHTAGS.search(line)
    ids = [tag[len("#line:"):] for tag in tags.group().split() if tag.startswith("#line:")] if tags else []
    return ids[0] if ids else None


def _without_commands(line: str) -> str:
    """The line without its `<<commands>>`, in one pass (a regex would rescan the line from every unclosed `<<`)."""
    kept = []
    position = 0
    while (start := line.find("<<", position)) >= 0 and (end := line.find(">>", start + 2)) >= 0:
        kept.append(line[position:start])
        position = end + 2
    return "".join(kept) + line[position:]


def _turn(line: str) -> tuple[str | None, str]:
    """One body line without its commands and hashtags, as a turn."""
    line = _HASHTAGS.sub("", _without_commands(line)).strip()
    line = _FORMAT_FUNCTION.sub(lambda match: " / ".join(_FORMAT_CASE.findall(match["args"])), line)
    line = _EXPRESSION.sub(lambda match: match["expression"].replace("$", "").strip(), line)
    option = _OPTION.match(line) or _YARN1_OPTION.match(line)
    if option:
        text = option.groupdict().get("text")
        return choice_turn(_ESCAPE.sub(r"\1", text if text is not None else option["inner"].split("|")[0]))
    return split_speaker(_ESCAPE.sub(r"\1", _LINE_GROUP_ITEM.sub("", line)))
