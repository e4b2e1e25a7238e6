"""Lore KB: your studio's canon, searchable and citable, offline by default.

The public API is `KnowledgeBase` (kb/api.py) and the small types it returns;
names are imported on first use, so `kb --help` does not load chromadb.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "KnowledgeBase": "kb.api", "NPC": "kb.api",
    "Settings": "kb.config", "RetrievalConfig": "kb.config",
    "Hit": "kb.retrieve", "Citation": "kb.context", "Answer": "kb.answer", "IngestReport": "kb.sync",
    **{name: "kb.errors" for name in ("KBError", "ConfigError", "InvalidRequest", "NotFound", "Unavailable",
                                      "StoreLocked", "ModelMismatch", "Busy", "Forbidden", "Unauthorized",
                                      "LLMError")},
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'kb' has no attribute '{name}'")
    return getattr(importlib.import_module(_HOMES[name]), name)
