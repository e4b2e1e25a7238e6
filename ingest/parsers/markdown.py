"""Markdown read natively: YAML front matter to metadata, ATX headings to a heading path.

A native parser, not unstructured's: bench/markdown_parsers.py measures both on
the same files (README has the figures); this one keeps the heading path,
which is what citations need, and is much faster.
"""

from __future__ import annotations

import re
from pathlib import PurePath

from ingest.meta import split_front_matter
from ingest.types import Section

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^(```|~~~)")


def parse(text: str, path: str) -> list[Section]:
    """Split a Markdown document into one section per heading, each with its heading path."""
    meta, body = split_front_matter(text, path)
    doc_title = str(meta.pop("title", "")) or PurePath(path).stem
    sections: list[Section] = []
    trail: list[tuple[int, str]] = []
    lines: list[str] = []
    in_fence = False

    def flush():
        body_text = "\n".join(lines).strip()
        lines.clear()
        if body_text:
            heading = [h for _, h in trail] or [doc_title]
            sections.append(Section(body_text, {**meta, "title": " > ".join(heading)}))

    for line in body.splitlines():
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            flush()
            level = len(match.group(1))
            trail = [(lvl, h) for lvl, h in trail if lvl < level]
            trail.append((level, match.group(2).strip()))
        else:
            lines.append(line)
    flush()
    return sections
