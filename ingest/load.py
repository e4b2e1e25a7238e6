"""One file's bytes to its chunks (or its NPC card): decode, parse, chunk."""

from __future__ import annotations

from pathlib import Path, PurePath

from ingest.cards import parse_card
from ingest.chunk import chunk_sections
from ingest.decode import decode_text
from ingest.errors import IngestError, NothingToIndex
from ingest.parsers import parser_for
from ingest.types import Chunk


def load_chunks(data: bytes, source: str, file_key: str, file_hash: str,
                chunk_size: int, chunk_overlap: int, cjk_chunk_size: int | None = None,
                file_path: Path | None = None) -> list[Chunk]:
    """Parse and chunk one canon file.

    With ``file_path`` (the file on disk), a parser that reads a project
    beyond one file (``project_meta``: a split tweego project's StoryTitle)
    adds what it finds to every section's metadata the file does not set.

    Raises:
        NothingToIndex: the file parses but yields no text (a command-only script).
        IngestError: the file cannot be decoded or parsed.
    """
    parser = parser_for(PurePath(source).suffix)
    try:
        if getattr(parser, "BINARY", False):
            if not data:
                raise IngestError("file is empty", source)
            sections = parser.parse(data, source)
        else:
            sections = parser.parse(decode_text(data, source), source)
        if file_path is not None and hasattr(parser, "project_meta"):
            project = parser.project_meta(file_path)
            for section in sections:
                section.meta = {**project, **section.meta}
        chunks = chunk_sections(sections, file_key, file_hash, source, chunk_size, chunk_overlap,
                                cjk_chunk_size)
    except IngestError:
        raise
    except Exception as exc:  # a pathological file (e.g. JSON nested 100,000 deep) must not stop the others
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise IngestError(f"cannot parse ({exc.__class__.__name__}: {detail})", source) from None
    if not chunks:
        raise NothingToIndex("no text to index", source)
    return chunks


def load_card(data: bytes, source: str) -> dict:
    """Decode and validate one NPC card."""
    return parse_card(decode_text(data, source), source)
