"""One file's bytes to its sections: decode and parse, no chunking (what `kb check` needs, without tiktoken)."""

from __future__ import annotations

from pathlib import PurePath

from ingest.decode import decode_text
from ingest.errors import IngestError
from ingest.parsers import parser_for
from ingest.types import Section


def parse_sections(data: bytes, source: str) -> list[Section]:
    """Decode and parse one canon file into its sections (no chunking).

    Raises:
        IngestError: the file cannot be decoded or parsed.
    """
    parser = parser_for(PurePath(source).suffix)
    try:
        if getattr(parser, "BINARY", False):
            if not data:
                raise IngestError("file is empty", source)
            return parser.parse(data, source)
        return parser.parse(decode_text(data, source), source)
    except IngestError:
        raise
    except Exception as exc:  # a pathological file (e.g. JSON nested 100,000 deep) must not stop the others
        raise unexpected(exc, source) from None


def unexpected(exc: Exception, source: str) -> IngestError:
    """A parser's or chunker's own exception as one line naming the file."""
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return IngestError(f"cannot parse ({exc.__class__.__name__}: {detail})", source)
