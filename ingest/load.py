"""One file's bytes to its chunks (or its NPC card): decode, parse, chunk."""

from __future__ import annotations

from ingest.cards import parse_card
from ingest.chunk import chunk_sections
from ingest.decode import decode_text
from ingest.errors import IngestError
from ingest.parse import parse_sections, unexpected
from ingest.types import Chunk


def load_chunks(data: bytes, source: str, file_key: str, file_hash: str,
                chunk_size: int, chunk_overlap: int, cjk_chunk_size: int | None = None) -> list[Chunk]:
    """Parse and chunk one canon file.

    Raises:
        IngestError: the file cannot be decoded or parsed, or yields no text.
    """
    sections = parse_sections(data, source)
    try:
        chunks = chunk_sections(sections, file_key, file_hash, source, chunk_size, chunk_overlap,
                                cjk_chunk_size)
    except IngestError:
        raise
    except Exception as exc:  # nor must chunking a pathological section
        raise unexpected(exc, source) from None
    if not chunks:
        raise IngestError("no text to index", source)
    return chunks


def load_card(data: bytes, source: str) -> dict:
    """Decode and validate one NPC card."""
    return parse_card(decode_text(data, source), source)
