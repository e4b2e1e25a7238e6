"""One module per format; this table maps a file ending to the module that reads it.

A text parser has ``parse(text: str, path: str) -> list[Section]`` and gets the
decoded text; a binary parser (``BINARY = True``) gets the raw bytes instead.
Adding a format is one new module and one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULE_BY_SUFFIX = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".html": "html",
    ".htm": "html",
    ".docx": "docx",
    ".pdf": "pdf",
    ".json": "jsonfile",
    ".yarn": "yarn",
    ".ink": "ink",
    ".fountain": "fountain",
    ".twee": "twee",
    ".tw": "twee",
    ".csv": "loctable",
    ".tsv": "loctable",
    ".xlsx": "loctable",
}


def parser_for(suffix: str) -> ModuleType | None:
    """The parser module for a file ending, or None when the format is unsupported."""
    name = MODULE_BY_SUFFIX.get(suffix.lower())
    if name is None:
        return None
    return importlib.import_module(f"{__name__}.{name}")
