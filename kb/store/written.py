"""The vectors a local store's writers wrote last, for a server whose loaded vector index is behind them.

chromadb keeps a local store's vector index in each process's memory, and a
process that loaded it before another one wrote cannot read the new vectors
(it fails "Error finding id") until it opens the store afresh. A server keeps
such a write beside its loaded index instead (kb/catch_up.py), and used to
embed the new passages again for it: 2.2-2.4 s for a 100-section file at
100,000 chunks, most of the time from the ingest's end to the server finding
the file. So each published run of a local store leaves the vectors of its
chunks here, the newest KEPT in all: a catch-up keeps no more than that many
beside the loaded index. Only an aid: a vector missing here is embedded again.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np

from kb.sqlite_files import parts, placeholders, remove_database

KEPT = 4_096  # kb/catch_up.py's EMBEDDED_MAX: a larger write opens the store afresh
_SCHEMA = "CREATE TABLE IF NOT EXISTS written (id TEXT PRIMARY KEY, vector BLOB NOT NULL)"

log = logging.getLogger("kb")


def written_path(kb_dir: Path) -> Path:
    return kb_dir / "cache" / "written.sqlite"


def record(kb_dir: Path, vectors: dict[str, np.ndarray]) -> None:
    """Keep these chunks' vectors (by id) as the newest, and the KEPT newest in all."""
    path = written_path(kb_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=10) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(_SCHEMA)
            db.executemany("INSERT OR REPLACE INTO written VALUES (?, ?)",
                           ((cid, np.asarray(vector, dtype=np.float32).tobytes()) for cid, vector in vectors.items()))
            db.execute("DELETE FROM written WHERE rowid <= (SELECT max(rowid) FROM written) - ?", (KEPT,))
        db.close()
    except (OSError, sqlite3.Error) as exc:  # a server behind this write embeds the passages itself
        log.warning("kept no vectors for servers behind this write in %s: %s", path, exc)
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            remove_database(path)  # not SQLite, or damaged: the next write starts it again


def read(kb_dir: Path, ids: list[str], dim: int) -> dict[str, np.ndarray]:
    """Those of these chunks' vectors kept here, by id (none when the file is missing or unreadable)."""
    path = written_path(kb_dir)
    if not ids or not path.exists():
        return {}
    found = {}
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            for part in parts(ids):
                found.update(db.execute(f"SELECT id, vector FROM written WHERE id IN {placeholders(part)}", part))
        finally:
            db.close()
    except sqlite3.Error:
        return {}
    vectors = {cid: np.frombuffer(blob, dtype=np.float32) for cid, blob in found.items()}
    return {cid: vector for cid, vector in vectors.items() if len(vector) == dim}
