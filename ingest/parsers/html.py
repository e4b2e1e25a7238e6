"""HTML through unstructured's partitioner: headings become the heading path."""

from __future__ import annotations

from ingest.errors import IngestError
from ingest.parsers.elements import offline_unstructured, sections_from_elements
from ingest.types import Section


def parse(text: str, path: str) -> list[Section]:
    """Partition an HTML page into titled sections."""
    offline_unstructured()
    from unstructured.partition.html import partition_html

    try:
        elements = partition_html(text=text)
    except Exception as exc:  # unstructured raises many kinds; the user needs one line
        raise IngestError(f"unreadable HTML ({exc.__class__.__name__}: {exc})", path) from None
    return sections_from_elements(elements, path)
