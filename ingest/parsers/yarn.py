"""Yarn Spinner scripts (.yarn): one dialogue Section per node.

Supported:
- nodes of `key: value` headers, `---`, body, `===`; every header becomes
  metadata (`title` also as `node`), and `tags:` goes through tags_to_meta,
  so `tags: chapter:1 region:Saltreach` gives chapter=1, region="Saltreach";
- `Speaker: line` turns; options `-> text` kept as `(choice) text`; line
  group items `=> text` kept as plain lines;
- file tags (`# key:value` lines before the first node) as metadata of every node.
Dropped: `<<commands>>` (so option conditions and jumps), end-of-line
hashtags (`#line:abc`, `#mood:sad`), `//` comments.
Not supported: the text of both `<<if>>` branches is kept; inline
`{$expressions}` and `[markup]` stay verbatim; escapes (`\\#`) are not undone.
Errors: a node not closed with `===` (line of its first header), a body
without a `title:` header (line of its `---`), a line before `---` that is
not a `key: value` header, headers never followed by `---`.
"""

from __future__ import annotations

import re

from ingest.errors import ParseError
from ingest.meta import tags_to_meta
from ingest.parsers.dialogue import choice_turn, dialogue_section, split_speaker, strip_line_comment
from ingest.types import Section

_HEADER = re.compile(r"^(?P<key>[A-Za-z_][\w.\-]*)\s*:\s*(?P<value>.*)$")
_FILE_TAG = re.compile(r"^#\s*(?P<tag>.+)$")
_COMMAND = re.compile(r"<<.*?>>")
_HASHTAGS = re.compile(r"(?:^|\s)#\S.*$")
_OPTION = re.compile(r"^->\s*(?P<text>.*)$")
_LINE_GROUP_ITEM = re.compile(r"^=>\s*")


def parse(text: str, path: str) -> list[Section]:
    """Read every node of a Yarn file.

    Raises:
        ParseError: the node structure is broken; the message names the line.
    """
    sections: list[Section] = []
    file_tags: list[str] = []
    headers: dict[str, str] = {}
    node_line = 0
    body: list[str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = strip_line_comment(raw).strip()
        if body is not None:
            if line == "===":
                section = _node_section(headers, body, file_tags)
                if section:
                    sections.append(section)
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
        if file_tag and not headers and not sections:
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
    return sections


def _node_section(headers: dict[str, str], body: list[str], file_tags: list[str]) -> Section | None:
    """One node's headers and body lines as a dialogue Section."""
    meta = {key: value for key, value in headers.items() if key != "tags"}
    meta.update(tags_to_meta(file_tags + headers.get("tags", "").split()))
    meta["node"] = headers["title"]
    return dialogue_section([_turn(line) for line in body], meta)


def _turn(line: str) -> tuple[str | None, str]:
    """One body line without its commands and hashtags, as a turn."""
    line = _HASHTAGS.sub("", _COMMAND.sub("", line)).strip()
    option = _OPTION.match(line)
    if option:
        return choice_turn(option["text"])
    return split_speaker(_LINE_GROUP_ITEM.sub("", line))
