"""Text-layer PDFs through pdfminer.six, one section per page with its page number.

unstructured's PDF support pulls a 6 GB torch stack; pdfminer reads the text
layer directly. Scanned PDFs without a text layer are refused, not OCRed.
"""

from __future__ import annotations

import io
from pathlib import PurePath

from ingest.errors import IngestError
from ingest.types import Section

BINARY = True


def parse(data: bytes, path: str) -> list[Section]:
    """Extract each page's text layer as a section carrying `page`."""
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LTTextContainer

    title = PurePath(path).stem
    sections = []
    try:
        for number, page in enumerate(extract_pages(io.BytesIO(data)), start=1):
            text = "".join(el.get_text() for el in page if isinstance(el, LTTextContainer)).strip()
            if text:
                sections.append(Section(text, {"title": f"{title} > page {number}", "page": number}))
    except Exception as exc:  # pdfminer raises PDFSyntaxError, struct errors, ...
        raise IngestError(f"corrupt or unreadable PDF ({exc.__class__.__name__})", path) from None
    if not sections:
        raise IngestError("PDF has no text layer (scanned?); nothing to index", path)
    return sections
