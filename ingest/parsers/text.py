"""Plain text: optional YAML front matter, the rest is one section titled by the file name."""

from __future__ import annotations

from pathlib import PurePath

from ingest.meta import split_front_matter
from ingest.types import Section


def parse(text: str, path: str) -> list[Section]:
    """Read a plain text file as one section; the chunker splits it by paragraphs."""
    meta, body = split_front_matter(text, path)
    title = str(meta.pop("title", "")) or PurePath(path).stem
    body = body.strip()
    return [Section(body, {**meta, "title": title})] if body else []
