"""What a batch of chunks adds to the BM25 postings tables (kb/postings.py), worked out apart from them.

Pure and light to import (no store, no chromadb): a large build runs it in
the parse worker (kb/parse_worker.py), a process of its own, while the caller
reads the next batch from the store and writes the one before.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ingest.tokens import count_tokens
from kb.extract import stored_analysis
from kb.lexical import tokens_and_pairs


@dataclass
class FileChunks:
    """One file version's visible chunks, as the store holds them."""

    key: str
    version: str
    ids: list[str]
    texts: list[str]
    metas: list[dict]


def indexed_tokens(text: str, meta: dict) -> tuple[list[str], list[str]]:
    """A chunk's terms and word pairs as the postings hold them: its title's and its text's."""
    return tokens_and_pairs(f"{meta.get('title', '')}\n{text}")


def counted(chunks: FileChunks, numbered: dict[str, int]):
    """One file's term and pair counts as lengths and (chunk, term number, count) rows, terms numbered in
    ``numbered``: a batch of 5,000 chunks held as a Counter per chunk and field was most of a first build's peak,
    and as a Python tuple per row 153 MB more of a server's while it indexed another process's 5,000-chunk change."""
    lengths, pair_lengths, parts = [], [], []
    for doc, (text, meta) in enumerate(zip(chunks.texts, chunks.metas)):
        for tokens, field_lengths in zip(indexed_tokens(text, meta), (lengths, pair_lengths)):
            counts = Counter(tokens)
            part = np.empty((len(counts), 3), dtype=np.int32)
            part[:, 0] = doc
            part[:, 1] = [numbered.setdefault(term, len(numbered)) for term in counts]
            part[:, 2] = list(counts.values())
            parts.append(part)
            field_lengths.append(len(tokens))
    return (np.array(lengths, dtype=np.int32), np.array(pair_lengths, dtype=np.int32),
            np.concatenate(parts) if parts else np.empty((0, 3), dtype=np.int32))


def chunk_rows(chunks: FileChunks, worked_out: dict[str, tuple[int, str]]) -> list[tuple]:
    """One file's rows of the chunks table, with each chunk's token count and sentence analysis: from
    ``worked_out`` (by text) when the version before held the same text (0.35 s of a 10,000-row table's edit)."""
    rows = []
    for pos, (cid, text, meta) in enumerate(zip(chunks.ids, chunks.texts, chunks.metas)):
        tokens, sentences = worked_out.get(text) or (count_tokens(text), stored_analysis(text))
        rows.append((cid, chunks.key, pos, text, json.dumps(meta, ensure_ascii=False), tokens, sentences))
    return rows


def prepared(batch: list[FileChunks], worked_out: dict[str, dict]) -> tuple[dict[str, int], list[tuple]]:
    """A batch's terms, numbered as first met (its rows hold these numbers until written), and per file its term
    counts and chunks table rows, reusing what ``worked_out`` holds for its version before."""
    numbered: dict[str, int] = {}
    return numbered, [(*counted(chunks, numbered), chunk_rows(chunks, worked_out[chunks.key])) for chunks in batch]
