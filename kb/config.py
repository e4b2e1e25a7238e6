"""One Settings object from command-line flags and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value and value.strip().isdigit() else default


@dataclass
class Settings:
    """Where the knowledge base lives and how it chunks, retrieves and answers.

    Environment: KB_DIR, KB_CHROMA_URL, KB_EMBED_MODEL, KB_CHUNK_TOKENS,
    KB_CJK_CHUNK_TOKENS, KB_CHUNK_OVERLAP, KB_CONTEXT_TOKENS, KB_MAX_FILE_MB, OPENAI_API_KEY,
    OPENAI_BASE_URL, KB_MODEL.
    """

    kb_dir: Path = field(default_factory=lambda: Path(os.environ.get("KB_DIR") or ".kb"))
    chroma_url: str | None = field(default_factory=lambda: os.environ.get("KB_CHROMA_URL") or None)
    embed_model: str | None = field(default_factory=lambda: os.environ.get("KB_EMBED_MODEL") or None)
    chunk_tokens: int = field(default_factory=lambda: _env_int("KB_CHUNK_TOKENS", 600))
    cjk_chunk_tokens: int = field(default_factory=lambda: _env_int("KB_CJK_CHUNK_TOKENS", 1000))
    chunk_overlap: int = field(default_factory=lambda: _env_int("KB_CHUNK_OVERLAP", 40))
    context_tokens: int = field(default_factory=lambda: _env_int("KB_CONTEXT_TOKENS", 3000))
    max_file_mb: int = field(default_factory=lambda: _env_int("KB_MAX_FILE_MB", 20))
    api_key: str | None = field(default_factory=lambda: os.environ.get("OPENAI_API_KEY") or None)
    base_url: str | None = field(default_factory=lambda: os.environ.get("OPENAI_BASE_URL") or None)
    model: str = field(default_factory=lambda: os.environ.get("KB_MODEL") or "gpt-4o-mini")

    @property
    def llm_configured(self) -> bool:
        """Generation is on when a key or an OpenAI-compatible base URL is set."""
        return bool(self.api_key or self.base_url)
