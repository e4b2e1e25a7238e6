"""The BM25 postings on disk (SQLite, data only), kept current from the store's file records.

One row per ingested file version (its key, hash and ingest time) holds that
file's visible chunks (ids, texts, metadata as JSON) and their term counts as
packed integer arrays; a vocabulary table gives each term and word pair a
stable id; a chunks table keeps what an answer would otherwise work out for
each chunk it cites (its token count and its sentences with their terms). Opening diffs the store's file records against the rows: only a
new, changed or removed file is read from the store and tokenized, so a script
drop touches its own postings and a reopened store builds nothing. Several
`kb serve` replicas on one Chroma server each keep such a file current from
the store they share.

Nothing here is code: a file that is not our format, is corrupt, or comes from
an older format is deleted and rebuilt from the store (11.7: the pickle it
replaces ran whatever a writer of the cache directory put there).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.tokens import count_tokens
from kb.extract import ANALYSIS_VERSION, stored_analysis
from kb.lexical import tokens_and_pairs
from kb.store import FileRecord, Store

FORMAT = 6  # bump when the schema or the tokenizer changes
VERSION = FORMAT * 100 + ANALYSIS_VERSION  # PRAGMA user_version: a new sentence analysis rebuilds the index too
DAMAGE = (sqlite3.Error, ValueError, TypeError, KeyError, IndexError)  # what a damaged index raises when read
APPLICATION_ID = 0x4C4B4235  # "LKB5": a SQLite file that is not ours is rebuilt, never read
FULL_SCAN_FILES = 50  # more changed files than this: one paged scan of the store instead of a read per file
# Chunks tokenized and written per transaction on a cold build: their term counts are Python dicts,
# so a first build of 20k chunks peaked at 958 MB RSS in batches of 20,000 and 683 MB in 5,000 (no slower).
WRITE_BATCH_CHUNKS = 5_000
_SCHEMA = """
CREATE TABLE files (key TEXT PRIMARY KEY, version TEXT NOT NULL, seq INTEGER NOT NULL,
                    ids TEXT NOT NULL, texts TEXT NOT NULL, metas TEXT NOT NULL,
                    lengths BLOB NOT NULL, pair_lengths BLOB NOT NULL,
                    terms BLOB NOT NULL, pairs BLOB NOT NULL);
CREATE TABLE vocabulary (id INTEGER PRIMARY KEY, term TEXT NOT NULL UNIQUE);
CREATE TABLE chunks (id TEXT PRIMARY KEY, key TEXT NOT NULL, tokens INTEGER NOT NULL, sentences TEXT NOT NULL);
CREATE INDEX chunks_of_file ON chunks (key);
"""


def version_of(record: FileRecord) -> str:
    """What must match for a file's postings to be reused: its content hash and when it was ingested."""
    return f"{record.hash}@{record.ingested_at!r}"


def index_path(store: Store) -> Path:
    """Where a store's postings live: beside a local store, or one file per Chroma server URL."""
    if store.chroma_url:
        digest = hashlib.sha1(store.chroma_url.encode()).hexdigest()[:12]
        return store.kb_dir / "cache" / f"bm25-{digest}.sqlite"
    return store.kb_dir / "cache" / "bm25.sqlite"


@dataclass
class FileChunks:
    """One file version's visible chunks, as the store holds them."""

    key: str
    version: str
    ids: list[str]
    texts: list[str]
    metas: list[dict]


@dataclass
class Loaded:
    """Indexed files' chunks in file order, with postings as (chunk, term id, count) rows per field."""

    files: list[tuple[str, str, int]]  # (key, version, chunks)
    ids: list[str]
    texts: list[str]
    metas: list[dict]
    lengths: np.ndarray
    pair_lengths: np.ndarray
    terms: list[np.ndarray]  # int32 (n, 3) per file, chunks numbered across the files
    pairs: list[np.ndarray]


def _counted(chunks: FileChunks, numbered: dict[str, int]):
    """One file's term and pair counts as lengths and (chunk, term number, count) rows, terms numbered in
    ``numbered``: a batch of 5,000 chunks held as a Counter per chunk and field was most of a first build's peak."""
    lengths, pair_lengths, terms, pairs = [], [], [], []
    for doc, (text, meta) in enumerate(zip(chunks.texts, chunks.metas)):
        for tokens, field, field_lengths in zip(tokens_and_pairs(f"{meta.get('title', '')}\n{text}"),
                                                 (terms, pairs), (lengths, pair_lengths)):
            field.extend((doc, numbered.setdefault(term, len(numbered)), n) for term, n in Counter(tokens).items())
            field_lengths.append(len(tokens))
    return (np.array(lengths, dtype=np.int32), np.array(pair_lengths, dtype=np.int32),
            np.array(terms, dtype=np.int32).reshape(-1, 3), np.array(pairs, dtype=np.int32).reshape(-1, 3))


def _worked_out(chunks: FileChunks) -> list[tuple]:
    """One file's rows of the chunks table: each chunk's id, file, token count and sentence analysis."""
    return [(cid, chunks.key, count_tokens(text), stored_analysis(text)) for cid, text in zip(chunks.ids, chunks.texts)]


def _array(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.int32)


def _sharing_values(metas: list[dict]) -> list[dict]:
    """One file's chunk metadata with equal strings made one object: each chunk repeats its file's source,
    key, hash and often title, and a string apiece was about half the metadata's memory."""
    shared: dict[str, str] = {}
    for meta in metas:
        for key, value in meta.items():
            if type(value) is str:
                meta[key] = shared.setdefault(value, value)
    return metas


class Postings:
    """A store's BM25 postings in one SQLite file (or in memory where nothing can be written)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()  # the writing connection, shared by a server's threads
        self._read_lock = threading.Lock()
        self.db = self._open()
        self.reader = self._open_reader()

    def _open_reader(self) -> sqlite3.Connection | None:
        """A second, read-only connection for term lookups: in WAL mode it reads the last commit while a
        reload writes, so a search never waits for a reload (it waited 0.2-0.5 s at 100k chunks).
        None for an index in memory, which only its own connection can see."""
        if self.path is None:
            return None
        try:
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60,
                                   check_same_thread=False)
        except sqlite3.Error:
            return None

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            return self._create(sqlite3.connect(":memory:", check_same_thread=False))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            if self._usable(db):
                return db
            db.close()
            self._remove()
            return self._create(sqlite3.connect(self.path, timeout=60, check_same_thread=False))
        except (OSError, sqlite3.Error):
            self.path = None  # a read-only or broken cache directory: index in memory for this process
            return self._create(sqlite3.connect(":memory:", check_same_thread=False))

    def _remove(self) -> None:
        """Delete this index and what an older version cached beside it (pickles are never read)."""
        for path in [self.path, *(self.path.with_name(self.path.name + s) for s in ("-wal", "-shm"))]:
            path.unlink(missing_ok=True)
        for old in self.path.parent.glob("corpus-*.pkl"):
            old.unlink(missing_ok=True)

    @staticmethod
    def _usable(db: sqlite3.Connection) -> bool:
        """Ours and this format (made ours if new and empty); damage found later rebuilds it too."""
        try:
            app = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if app == 0 and version == 0 and not db.execute("SELECT 1 FROM sqlite_master").fetchone():
                Postings._create(db)
                return True
            return app == APPLICATION_ID and version == VERSION
        except sqlite3.Error:
            return False

    @staticmethod
    def _create(db: sqlite3.Connection) -> sqlite3.Connection:
        db.execute("PRAGMA journal_mode = WAL")  # readers (other replicas, the CLI) never wait for a writer
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {VERSION}")
        db.commit()
        return db

    def reset(self) -> None:
        """Start again from an empty index (it was found damaged)."""
        with self._lock, self._read_lock:
            self.db.close()
            if self.reader is not None:
                self.reader.close()
            if self.path is not None:
                self._remove()
            self.db = self._open()
            self.reader = self._open_reader()

    # -- keeping current ----------------------------------------------------

    def versions(self) -> dict[str, str]:
        with self._lock:
            return dict(self.db.execute("SELECT key, version FROM files"))

    def update(self, store: Store) -> int:
        """Bring the postings in line with the store's file records; how many files changed."""
        records = store.files()
        wanted = {key: version_of(record) for key, record in records.items()}
        have = self.versions()
        gone = [key for key in have if key not in wanted]
        changed = {key: version for key, version in wanted.items() if have.get(key) != version}
        if gone:
            with self._lock, self.db:
                self.db.executemany("DELETE FROM files WHERE key = ?", [(key,) for key in gone])
                self.db.executemany("DELETE FROM chunks WHERE key = ?", [(key,) for key in gone])
        if changed:
            self._add(self._read(store, {key: records[key] for key in changed}))
        return len(gone) + len(changed)

    @staticmethod
    def _read(store: Store, records: dict[str, FileRecord]):
        """The changed files' chunks: one read per file, or one paged scan when many changed."""
        if len(records) <= FULL_SCAN_FILES:
            for key, record in records.items():
                yield FileChunks(key, version_of(record), *store.file_chunks(key, record.hash))
            return
        # In the order the store holds them, as the old cache was. A file is handed on as soon as its
        # chunks (a record counts them) and those of the files before it are all seen: a first build
        # of 100k chunks held every text and metadata of the store until the scan ended.
        found: dict[str, FileChunks] = {}
        handed: set[str] = set()
        for cid, text, meta in store.scan_chunks():
            key = meta.get("file_key")
            record = records.get(key)
            if record is not None and meta.get("file_hash") == record.hash and key not in handed:
                chunks = found.setdefault(key, FileChunks(key, version_of(record), [], [], []))
                chunks.ids.append(cid)
                chunks.texts.append(text)
                chunks.metas.append(meta)
                while found and len((first := next(iter(found.values()))).ids) >= records[first.key].chunks:
                    handed.add(first.key)
                    yield found.pop(first.key)
        yield from found.values()
        for key, record in records.items():  # files with no visible chunks (cards, text-free) are indexed empty
            if key not in found and key not in handed:
                yield FileChunks(key, version_of(record), [], [], [])

    def _add(self, files) -> None:
        batch, size = [], 0
        for chunks in files:
            batch.append(chunks)
            size += len(chunks.ids)
            if size >= WRITE_BATCH_CHUNKS:
                self._write(batch)
                batch, size = [], 0
        if batch:
            self._write(batch)

    def _write(self, batch: list[FileChunks]) -> None:
        numbered: dict[str, int] = {}  # the batch's terms, numbered as first met: rows hold these until written
        tokenized = [(chunks, *_counted(chunks, numbered), _worked_out(chunks)) for chunks in batch]
        with self._lock, self.db:
            ids = self._term_ids(numbered)
            stable = np.array([ids[term] for term in numbered], dtype=np.int32)
            seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM files").fetchone()[0]
            for chunks, lengths, pair_lengths, terms, pairs, extras in tokenized:
                seq += 1
                terms[:, 1], pairs[:, 1] = stable[terms[:, 1]], stable[pairs[:, 1]]
                self.db.execute("DELETE FROM chunks WHERE key = ?", (chunks.key,))
                self.db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?)", extras)
                self.db.execute(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (chunks.key, chunks.version, seq, json.dumps(chunks.ids),
                     json.dumps(chunks.texts, ensure_ascii=False), json.dumps(chunks.metas, ensure_ascii=False),
                     lengths.tobytes(), pair_lengths.tobytes(), terms.tobytes(), pairs.tobytes()))

    def _term_ids(self, terms) -> dict[str, int]:
        """Stable ids for these terms, new ones added (call inside a write transaction)."""
        self.db.executemany("INSERT OR IGNORE INTO vocabulary (term) VALUES (?)", ((t,) for t in terms))
        return self.lookup(terms, locked=True)

    def lookup(self, terms, locked: bool = False) -> dict[str, int]:
        """The ids of those of ``terms`` the vocabulary holds (``locked``: inside a write, on its connection)."""
        if locked:
            return self._lookup(self.db, terms)
        if self.reader is None:
            with self._lock:
                return self._lookup(self.db, terms)
        with self._read_lock:
            return self._lookup(self.reader, terms)

    @staticmethod
    def _lookup(db: sqlite3.Connection, terms) -> dict[str, int]:
        terms = list(dict.fromkeys(terms))
        found = {}
        for start in range(0, len(terms), 500):
            part = terms[start:start + 500]
            found.update(db.execute(f"SELECT term, id FROM vocabulary WHERE term IN ({','.join('?' * len(part))})",
                                    part))
        return found

    def worked_out(self, ids: list[str]) -> dict[str, tuple[int, str]]:
        """What was worked out for these chunks when they were indexed, by id: their token count and their
        sentence analysis (kb.extract.stored_analysis); a chunk the index does not hold is left out."""
        rows = []
        try:
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                query = f"SELECT id, tokens, sentences FROM chunks WHERE id IN ({','.join('?' * len(part))})"
                if self.reader is None:
                    with self._lock:
                        rows += self.db.execute(query, part).fetchall()
                else:
                    with self._read_lock:
                        rows += self.reader.execute(query, part).fetchall()
        except sqlite3.Error:
            return {}  # a damaged index: the answer works them out again, and the next load rebuilds it
        return {cid: (tokens, sentences) for cid, tokens, sentences in rows}

    def vocabulary_size(self) -> int:
        with self._lock:
            return self.db.execute("SELECT coalesce(max(id), 0) + 1 FROM vocabulary").fetchone()[0]

    # -- reading ------------------------------------------------------------

    def listing(self) -> list[tuple[str, str]]:
        """Every indexed file's (key, version), in the order the files were indexed."""
        with self._lock:
            return self.db.execute("SELECT key, version FROM files ORDER BY seq").fetchall()

    def load(self, keys: set[str] | None = None) -> Loaded:
        """These files' (default: every file's) chunks and postings, in the order the files were indexed."""
        files, ids, texts, metas = [], [], [], []
        lengths, pair_lengths, terms, pairs = [], [], [], []
        columns = "seq, key, version, ids, texts, metas, lengths, pair_lengths, terms, pairs"
        with self._lock:
            if keys is None:  # read row by row: all rows at once were ~5 KB a chunk more at the peak
                rows = self.db.execute(f"SELECT {columns} FROM files ORDER BY seq")
            else:
                wanted, rows = list(keys), []
                for start in range(0, len(wanted), 500):
                    part = wanted[start:start + 500]
                    rows += self.db.execute(f"SELECT {columns} FROM files WHERE key IN ({','.join('?' * len(part))})",
                                            part).fetchall()
                rows.sort()
            for _, key, version, file_ids, file_texts, file_metas, file_lengths, file_pair_lengths, file_terms, \
                    file_pairs in rows:
                offset = len(ids)
                ids.extend(json.loads(file_ids))
                texts.extend(json.loads(file_texts))
                metas.extend(_sharing_values(json.loads(file_metas)))
                files.append((key, version, len(ids) - offset))
                lengths.append(_array(file_lengths))
                pair_lengths.append(_array(file_pair_lengths))
                for field, blob in ((terms, file_terms), (pairs, file_pairs)):
                    rows3 = _array(blob).reshape(-1, 3).copy()
                    rows3[:, 0] += offset
                    field.append(rows3)
                if not (len(lengths[-1]) == len(pair_lengths[-1]) == len(ids) - offset == len(texts) - offset
                        == len(metas) - offset):
                    raise ValueError(f"the indexed file {key} is damaged")
        return Loaded(files, ids, texts, metas,
                      np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32),
                      np.concatenate(pair_lengths) if pair_lengths else np.zeros(0, dtype=np.int32),
                      terms, pairs)
