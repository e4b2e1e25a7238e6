"""Small SQLite helpers shared by the caches kb keeps beside a store (postings, written vectors)."""

from __future__ import annotations

from pathlib import Path

IN_LIMIT = 500  # values bound in one ``IN (...)``


def placeholders(values: list) -> str:
    """An ``IN`` list's ``(?,?,...)`` for these values."""
    return f"({','.join('?' * len(values))})"


def parts(values: list):
    """These values IN_LIMIT at a time, for queries that bind them all."""
    for start in range(0, len(values), IN_LIMIT):
        yield values[start:start + IN_LIMIT]


def remove_database(path: Path) -> None:
    """Delete a SQLite file with its write-ahead log and shared memory."""
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        name.unlink(missing_ok=True)
