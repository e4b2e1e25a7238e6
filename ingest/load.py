"""One file's bytes to its chunks (or its NPC card): decode, parse, chunk."""

from __future__ import annotations

from pathlib import Path

from ingest.cards import Card, parse_card
from ingest.chunk import chunk_sections
from ingest.decode import decode_text
from ingest.errors import IngestError, NothingToIndex
from ingest.parse import parse_sections, unexpected
from ingest.types import Chunk


def load_chunks(data: bytes, source: str, file_key: str, file_hash: str,
                chunk_size: int, chunk_overlap: int, cjk_chunk_size: int | None = None,
                file_path: Path | None = None, max_chunks: int | None = None) -> list[Chunk]:
    """Parse and chunk one canon file (``file_path`` as in ``parse_sections``).

    ``max_chunks`` bounds the embedding work one file can ask for (a section makes at least one chunk).

    Raises:
        NothingToIndex: the file parses but yields no text (a command-only script).
        IngestError: the file cannot be decoded or parsed, or makes more than ``max_chunks`` chunks.
    """
    sections = parse_sections(data, source, file_path)
    _check_count(len(sections), max_chunks, source)
    try:
        chunks = chunk_sections(sections, file_key, file_hash, source, chunk_size, chunk_overlap,
                                cjk_chunk_size)
    except IngestError:
        raise
    except Exception as exc:  # nor must chunking a pathological section
        raise unexpected(exc, source) from None
    if not chunks:
        raise NothingToIndex("no text to index", source)
    _check_count(len(chunks), max_chunks, source)
    return chunks


def _check_count(count: int, max_chunks: int | None, source: str) -> None:
    if max_chunks is not None and count > max_chunks:
        raise IngestError(f"file makes over {max_chunks:,} chunks (KB_MAX_FILE_CHUNKS)", source)


def load_card(data: bytes, source: str) -> Card:
    """Decode and validate one NPC card."""
    return parse_card(decode_text(data, source), source)
