"""One file's bytes to its sections: decode and parse, no chunking (what `kb check` needs, without tiktoken)."""

from __future__ import annotations

from pathlib import Path, PurePath

from ingest.decode import decode_text
from ingest.errors import IngestError
from ingest.parsers import parser_for
from ingest.types import Section


def parse_sections(data: bytes, source: str, file_path: Path | None = None) -> list[Section]:
    """Decode and parse one canon file into its sections (no chunking).

    With ``file_path`` (the file on disk), a parser that reads a project
    beyond one file (``project_meta``: a split tweego project's StoryTitle)
    adds what it finds to every section's metadata the file does not set.

    Raises:
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
        return sections
    except IngestError:
        raise
    except Exception as exc:  # a pathological file (e.g. JSON nested 100,000 deep) must not stop the others
        raise unexpected(exc, source) from None


def unexpected(exc: Exception, source: str) -> IngestError:
    """A parser's or chunker's own exception as one line naming the file."""
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return IngestError(f"cannot parse ({exc.__class__.__name__}: {detail})", source)
