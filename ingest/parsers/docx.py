"""Word documents through unstructured's partitioner: styles give the heading path."""

from __future__ import annotations

import io

from ingest.errors import IngestError
from ingest.parsers.elements import offline_unstructured, sections_from_elements
from ingest.types import Section
from ingest.zipcheck import check_zip

BINARY = True


def parse(data: bytes, path: str) -> list[Section]:
    """Partition a .docx file into titled sections (after its zip sizes pass ingest.zipcheck)."""
    check_zip(data, path, "DOCX")
    offline_unstructured()
    from unstructured.partition.docx import partition_docx

    try:
        elements = partition_docx(file=io.BytesIO(data))
    except Exception as exc:  # a corrupt zip, a missing part: one line for the user
        raise IngestError(f"unreadable DOCX ({exc.__class__.__name__})", path) from None
    return sections_from_elements(elements, path)
