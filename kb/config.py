"""One Settings object from command-line flags and the environment, and the retrieval knobs.

A setting read from the environment is checked once, here: a value that
cannot be used is one ConfigError naming the variable, never silently ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kb.errors import ConfigError

TOKEN_ENV = "KB_API_TOKEN"        # kb serve's full token: every route (tools, CI, the CLI's hand-off)
NPC_TOKEN_ENV = "KB_NPC_TOKEN"    # the token a game client ships with: only the NPC routes


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer setting from the environment, or ``default`` when unset or blank.

    Raises:
        ConfigError: the value is not a whole number of at least ``minimum``.
    """
    value = (os.environ.get(name) or "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None
    if number < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return number


@dataclass(frozen=True)
class RetrievalConfig:
    """How hybrid retrieval weighs its parts; one process can hold several (bench/ablation.py does).

    The defaults were chosen on ../shared/eval's dev halves (README, bench/ablation.py):
    USE's cosine lowered English MRR at any weight, so English keeps it only for the
    cross-lingual lane; Chinese gains from a little.
    """

    dense_weight: dict = field(default_factory=lambda: {"en": 0.0, "zh": 0.1})
    cross_lingual_weight: float = 0.9   # a chunk in another language scores this share of its cosine
    pair_weight: float = 0.5            # word-pair BM25 added at this weight; flat from 0.25 to 0.5
    short_chunk_terms: int = 20         # chunks shorter than this are scaled down (barks, UI strings)
    bm25_scaling: str = "share-of-best"  # or "min-max", as before the fusion fix
    drop_question_words: bool = True    # a Chinese question's stopword-only bigrams (是什么) leave the query
    depth: int = 50                     # candidates each retriever hands to the fusion (at least 4k)
    ef_search: int = 100                # HNSW search breadth, set when a store is created

    def __post_init__(self):
        if self.bm25_scaling not in ("share-of-best", "min-max"):
            raise ConfigError(f"bm25_scaling must be 'share-of-best' or 'min-max', not {self.bm25_scaling!r}")


@dataclass
class Settings:
    """Where the knowledge base lives and how it chunks, retrieves and answers.

    Environment: KB_DIR, KB_CHROMA_URL, KB_EMBED_MODEL, KB_CHUNK_TOKENS,
    KB_CJK_CHUNK_TOKENS, KB_CHUNK_OVERLAP, KB_CONTEXT_TOKENS, KB_MAX_FILE_MB, KB_MAX_FILE_CHUNKS,
    KB_PARSE_TIMEOUT_S and KB_PARSE_MEMORY_MB (what parsing one file may take), OPENAI_API_KEY,
    OPENAI_BASE_URL, KB_MODEL, KB_CONDENSE (how a follow-up becomes a search: `terms`, offline,
    or `model`, rewritten by the chat model when one is configured).

    Raises:
        ConfigError: a numeric variable is set to something that is not a usable number.
    """

    kb_dir: Path = field(default_factory=lambda: Path(os.environ.get("KB_DIR") or ".kb"))
    chroma_url: str | None = field(default_factory=lambda: os.environ.get("KB_CHROMA_URL") or None)
    embed_model: str | None = field(default_factory=lambda: os.environ.get("KB_EMBED_MODEL") or None)
    chunk_tokens: int = field(default_factory=lambda: env_int("KB_CHUNK_TOKENS", 600, minimum=16))
    cjk_chunk_tokens: int = field(default_factory=lambda: env_int("KB_CJK_CHUNK_TOKENS", 1000, minimum=16))
    chunk_overlap: int = field(default_factory=lambda: env_int("KB_CHUNK_OVERLAP", 40, minimum=0))
    context_tokens: int = field(default_factory=lambda: env_int("KB_CONTEXT_TOKENS", 3000, minimum=64))
    max_file_mb: int = field(default_factory=lambda: env_int("KB_MAX_FILE_MB", 20))
    max_file_chunks: int = field(default_factory=lambda: env_int("KB_MAX_FILE_CHUNKS", 100_000))
    parse_timeout_s: int = field(default_factory=lambda: env_int("KB_PARSE_TIMEOUT_S", 120))
    parse_memory_mb: int = field(default_factory=lambda: env_int("KB_PARSE_MEMORY_MB", 2048, minimum=256))
    api_key: str | None = field(default_factory=lambda: os.environ.get("OPENAI_API_KEY") or None)
    base_url: str | None = field(default_factory=lambda: os.environ.get("OPENAI_BASE_URL") or None)
    model: str = field(default_factory=lambda: os.environ.get("KB_MODEL") or "gpt-4o-mini")
    condense: str = field(default_factory=lambda: (os.environ.get("KB_CONDENSE") or "terms").strip())
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def __post_init__(self):
        if self.condense not in ("terms", "model"):
            raise ConfigError(f"KB_CONDENSE={self.condense!r} must be 'terms' or 'model'")
        if self.chunk_overlap >= self.chunk_tokens:
            raise ConfigError(f"KB_CHUNK_OVERLAP={self.chunk_overlap} must be below "
                              f"KB_CHUNK_TOKENS={self.chunk_tokens}")

    @property
    def llm_configured(self) -> bool:
        """Generation is on when a key or an OpenAI-compatible base URL is set."""
        return bool(self.api_key or self.base_url)
