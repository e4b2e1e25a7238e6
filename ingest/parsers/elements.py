"""unstructured, made to run offline, and its elements turned into sections.

unstructured 0.27 downloads a spaCy model the first time it classifies text.
We hand it a blank multilingual pipeline with a sentencizer instead: element
typing then rests on markup (headings, lists), which is what we use.
"""

from __future__ import annotations

import functools
import os
from pathlib import PurePath

from ingest.types import Section


@functools.cache
def offline_unstructured():
    """Import unstructured with telemetry off and a local spaCy pipeline in place of the download."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
    import spacy
    from unstructured.nlp import tokenize

    nlp = spacy.blank("xx")
    nlp.add_pipe("sentencizer")
    tokenize._get_nlp = lambda: nlp
    return tokenize


def sections_from_elements(elements, path: str) -> list[Section]:
    """Group unstructured elements under their Title elements, keeping the heading path."""
    doc_title = PurePath(path).stem
    sections: list[Section] = []
    heading: list[str] = []
    depth_of: dict[str, int] = {}
    body: list[str] = []

    def flush():
        text = "\n\n".join(body).strip()
        body.clear()
        if text:
            sections.append(Section(text, {"title": " > ".join(heading) or doc_title}))

    for element in elements:
        text = (element.text or "").strip()
        if not text:
            continue
        if element.category == "Title":
            flush()
            depth = element.metadata.category_depth or 0
            heading = [h for h in heading if depth_of.get(h, 0) < depth]
            depth_of[text] = depth
            heading.append(text)
        else:
            body.append(text)
    flush()
    return sections
