"""The BM25 postings on disk (SQLite, data only), kept current from the store's file records and read per query.

Layout. One ``postings`` row per (term, write group): the group's chunks that
hold the term (numbered within the group) and their counts, packed int32; the
word pairs of the second index are terms of their own (``old_woman``: no word
has an underscore), so both fields share the table and the vocabulary. A
``files`` row per file version gives its order (``seq``) and its chunks'
lengths in both fields; a ``chunks`` row per chunk its id, text, metadata and
what an answer would otherwise work out for it (token count, sentences).
A write group is a run of files written together, up to GROUP_CHUNKS chunks,
its rows keyed by its first file's ``seq`` and its chunks numbered as written
(``grouped`` names the members and where each one's chunks start; a file alone
is a group of one, keyed by its own): a term in every file was a row per file,
10,000 at a million 150-word chunks, and SQLite's cost per row was most of
reading it.
A small update after the first build writes its groups' rows to ``recent``,
a table of the same shape read beside the main one (a change's rows landing
all over a large term-ordered table were most of what a server took to see
it); the next large update moves them into the main table.

Keeping current. Opening diffs the store's file records against the rows: only
a new, changed or removed file is read from the store, tokenized, and has its
own rows replaced (a member of a group departs it: its chunks stay in the
group's rows, and a snapshot passes over them; the others keep their numbers), so a
script drop touches its own postings and a reopened store builds nothing; rows
found in line at the store's current generation (``synced``) spare the next
open even the diff. Several `kb serve` replicas on
one Chroma server each keep such a file current from the store they share.

Reading. A `Snapshot` is a read transaction held open (WAL mode: writers go on,
a snapshot keeps seeing the commit it began at), so a loaded corpus is one
whole state even while a reload writes the next. Opening one reads only the
files rows (4 bytes a chunk and field); a query reads the postings of its own
terms, and a hit its text and metadata. Memory therefore no longer grows with
the postings (a fresh open of 100k chunks held every posting, text and
metadata: about 1 GB and 11-15 s), and chunk positions (files by ``seq``,
chunks in file order) and the arithmetic are those of the in-memory index
this replaced, so scores and ranks are the same to the bit.

Why SQLite rows: the file-by-file update and the snapshot come with its
transactions. FTS5 scores with its own BM25 and tokenizer and gives no cheap
access to raw postings; bm25s segments memory-mapped would need a merge step
and their own way to keep an old snapshot readable. The cost (docs/scale.md):
about 12,800 rows per 100-chunk file alone, 1.0 GB at 100k chunks, and a term
in every file is a row per write group for SQLite to read per query (it joins
them, so Python gets one per term).

Nothing here is code: a file that is not our format, is corrupt, or comes from
an older format is deleted and rebuilt from the store (11.7: the pickle it
replaces ran whatever a writer of the cache directory put there). Opening
checks the files rows; a damaged postings row is found only by the query that
reads it, which fails (ValueError or sqlite3.Error) until the file is deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ingest.errors import IngestError
from kb.errors import KBError
from kb.extract import ANALYSIS_VERSION
from kb.parse_worker import run_bounded
from kb.postings_batch import FileChunks, prepared
from kb.sqlite_files import parts, placeholders, remove_database
from kb.store import FileRecord, Store, visible

log = logging.getLogger(__name__)

FORMAT = 7  # bump when the schema or the tokenizer changes
VERSION = FORMAT * 100 + ANALYSIS_VERSION  # PRAGMA user_version: a new sentence analysis rebuilds the index too
DAMAGE = (sqlite3.Error, ValueError, TypeError, KeyError, IndexError)  # what a damaged index raises when read
APPLICATION_ID = 0x4C4B4235  # "LKB5": a SQLite file that is not ours is rebuilt, never read
FULL_SCAN_FILES = 50  # more changed files than this: one paged scan of the store instead of a read per file
# Chunks tokenized and written per transaction on a cold build: their term counts are Python dicts,
# so a first build of 20k chunks peaked at 958 MB RSS in batches of 20,000 and 683 MB in 5,000 (no slower).
WRITE_BATCH_CHUNKS = 5_000
APART_CHUNKS = 20_000  # a change of this many chunks or more is worked out in the parse worker (Postings._add)
APART_TIMEOUT_S, APART_MEMORY_MB = 600, 2048  # the parse worker's bounds for one batch
WRITE_CACHE_KB = 65_536  # the writing connection's page cache
# A new index's page size. A row over about a quarter of a page (1 KB at SQLite's default 4 KB) runs on into overflow
# pages, and a common term's row in a write group is up to 8 KB. With 64 KB pages, 100,000 prose chunks' postings
# read a common term in half the time (0.63 -> 0.32 ms) and a question's five terms in 1.12 -> 0.66 ms; at a million
# the first 100 new questions after a change went from 19.0-20.3 ms (2.22-2.31x dense) to 14.8-16.2 (1.66-1.78x),
# and the build took 2,240 s against 2,318 (docs/scale.md). An index built before keeps its 4 KB pages.
PAGE_SIZE = 65_536
# Chunks of files written together that share their postings rows: larger groups are fewer rows for a query to
# read, and more for a change of one member to read through (docs/scale.md).
GROUP_CHUNKS = 1_000
_STATE = "key, version, seq, chunks"  # a files row's columns that say which state a snapshot sees
_SCHEMA = """
CREATE TABLE files (key TEXT PRIMARY KEY, version TEXT NOT NULL, seq INTEGER NOT NULL UNIQUE,
                    chunks INTEGER NOT NULL, lengths BLOB NOT NULL, pair_lengths BLOB NOT NULL);
CREATE TABLE vocabulary (id INTEGER PRIMARY KEY, term TEXT NOT NULL UNIQUE);
CREATE TABLE postings (term INTEGER NOT NULL, seq INTEGER NOT NULL, n INTEGER NOT NULL, rows BLOB NOT NULL,
                       PRIMARY KEY (term, seq)) WITHOUT ROWID;
CREATE INDEX postings_of_file ON postings (seq);
CREATE TABLE chunks (id TEXT PRIMARY KEY, key TEXT NOT NULL, pos INTEGER NOT NULL, text TEXT NOT NULL,
                     meta TEXT NOT NULL, tokens INTEGER NOT NULL, sentences TEXT NOT NULL);
CREATE UNIQUE INDEX chunks_of_file ON chunks (key, pos);
"""
# The members of write groups of more than one file (seq): the seq the group's rows are keyed by (its first
# file's when written, kept after that file goes) and the number of the member's first chunk in them. Added without
# a new FORMAT: an index from before has a row per file, each a group of one.
_GROUPED = """
CREATE TABLE IF NOT EXISTS grouped (seq INTEGER PRIMARY KEY, first INTEGER NOT NULL, start INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS grouped_by_first ON grouped (first);
"""
# Postings rows written by small updates (a change under APART_CHUNKS chunks), kept apart from the term-ordered
# main table, whose rows a change's terms land all over: at a million prose chunks, a 100-chunk file's 13,000 rows
# took 0.13-0.72 s to insert into its 9.4 GB, 0.03-0.05 s into a table of their own, before the commit wrote the
# pages they touched. A large update (APART_CHUNKS or more, tens of seconds anyway) moves them into the main table
# first. Added without a new FORMAT: an index from before has none yet.
_RECENT = """
CREATE TABLE IF NOT EXISTS recent (term INTEGER NOT NULL, seq INTEGER NOT NULL, n INTEGER NOT NULL, rows BLOB NOT NULL,
                                   PRIMARY KEY (term, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recent_of_file ON recent (seq);
"""
# Members that left their write group while others stayed, their chunks still in its rows (Postings._leave): a
# snapshot maps those numbers to no chunk and drops them, so scores and document frequencies are as if they had
# never been written; a row's ``n`` still counts them. A group's key is never reused while it has rows (a new
# file's seq is past every file's held), and its rows and departed members go with its last member. Added without
# a new FORMAT: an index from before took a leaving member's chunks out of the rows, and has no departed members.
_DEPARTED = """
CREATE TABLE IF NOT EXISTS departed (first INTEGER NOT NULL, start INTEGER NOT NULL, chunks INTEGER NOT NULL,
                                     PRIMARY KEY (first, start)) WITHOUT ROWID;
"""
_TABLES = ("postings", "recent")  # where postings rows live
# The store (its collection's id) and generation the files rows were last found in line with: an update that
# finds both unchanged reads no file records. Any write clears the generation, and an update records it only if
# the rows are still the records it read (a slower update may have written an older state over them meanwhile).
# Added without a new FORMAT: an index from before has no generation yet, and reads the records once.
_SYNCED = """
CREATE TABLE IF NOT EXISTS synced (store TEXT, generation INTEGER);
INSERT INTO synced SELECT NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM synced);
"""


def version_of(record: FileRecord) -> str:
    """What must match for a file's postings to be reused: its content hash and when it was ingested."""
    return f"{record.hash}@{record.ingested_at!r}"


def _in_place_order(chunks: FileChunks, record: FileRecord) -> FileChunks:
    """A file's chunks in the order of their places (a scan finds them in the order they were written), each
    saying its place in this version: a chunk kept from a version before holds its place in that one."""
    if record.origins is not None and chunks.ids:
        places = record.places()
        rows = sorted(zip(chunks.ids, chunks.texts, chunks.metas), key=lambda row: places[row[0]])
        chunks.ids, chunks.texts, chunks.metas = (list(column) for column in zip(*rows))
        for cid, meta in zip(chunks.ids, chunks.metas):
            meta["chunk_index"] = places[cid]
    return chunks


def index_path(store: Store) -> Path:
    """Where a store's postings live: beside a local store, or one file per Chroma server URL."""
    if store.chroma_url:
        digest = hashlib.sha1(store.chroma_url.encode()).hexdigest()[:12]
        return store.kb_dir / "cache" / f"bm25-{digest}.sqlite"
    return store.kb_dir / "cache" / "bm25.sqlite"


def _postings_rows(seq: int, rows: np.ndarray) -> list[tuple]:
    """One file's (chunk, term id, count) rows, in chunk order, as its postings table rows: per term, the
    chunks holding it (in order) and their counts, packed int32 pairs."""
    rows = rows[np.argsort(rows[:, 1], kind="stable")]
    first = np.flatnonzero(np.concatenate([[True], rows[1:, 1] != rows[:-1, 1]])) if len(rows) else rows[:0, 0]
    ends = np.append(first[1:], len(rows))
    packed = np.ascontiguousarray(rows[:, [0, 2]]).tobytes()
    return [(int(term), seq, int(end - start), packed[8 * start:8 * end])
            for term, start, end in zip(rows[first, 1].tolist(), first.tolist(), ends.tolist())]


def _groups(tokenized: list[tuple]):
    """Runs of consecutive files with GROUP_CHUNKS chunks at most between them (a larger file alone)."""
    group, size = [], 0
    for file in tokenized:
        if group and size + len(file[0].ids) > GROUP_CHUNKS:
            yield group
            group, size = [], 0
        group.append(file)
        size += len(file[0].ids)
    if group:
        yield group


def _batches(files):
    """The files in runs of WRITE_BATCH_CHUNKS chunks or just over."""
    batch, size = [], 0
    for chunks in files:
        batch.append(chunks)
        size += len(chunks.ids)
        if size >= WRITE_BATCH_CHUNKS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _prepared_apart(batch: list[FileChunks], worked_out: dict[str, dict], source: str):
    """``prepared`` in the parse worker, or here if the worker fails (its bounds are set for hostile files)."""
    try:
        return run_bounded(prepared, (batch, worked_out), source, APART_TIMEOUT_S, APART_MEMORY_MB)
    except (IngestError, KBError) as exc:
        log.warning("worked out a batch of postings in this process: %s", exc)
        return prepared(batch, worked_out)


def _read_ahead(batches):
    """The batches, each one read from the store in a thread of its own while the caller writes the one before:
    chromadb's reads hold the GIL, SQLite's writes let it go (a first build of a million loc rows, three runs
    each: 202-236 s read in turn, 167-181 s read ahead)."""
    batches = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="kb-postings-read") as reader:
        upcoming = reader.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = reader.submit(next, batches, None)
            yield batch


def _vocabulary_ids(run, terms) -> dict[str, int]:
    """The ids of those of ``terms`` the vocabulary holds, each ``IN`` list run by ``run(sql, values)``."""
    found = {}
    for part in parts(list(dict.fromkeys(terms))):
        found.update(run(f"SELECT term, id FROM vocabulary WHERE term IN {placeholders(part)}", part))
    return found


def _array(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.int32)


class Postings:
    """A store's BM25 postings in one SQLite file (a temporary one where the cache cannot be written)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()  # the writing connection, shared by a server's threads
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = self._connect()
                if self._usable(db):
                    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    if "synced" not in tables:
                        db.executescript(_SYNCED)  # not on every open: its insert waits for another writer
                    if "grouped" not in tables:
                        db.executescript(_GROUPED)
                    if "recent" not in tables:
                        db.executescript(_RECENT)
                    if "departed" not in tables:
                        db.executescript(_DEPARTED)
                    return _tuned(db)
                db.close()
                self._remove()
                return self._create(self._connect())
            except (OSError, sqlite3.Error):
                pass  # a read-only or broken cache directory: a temporary index for this process
        handle, name = tempfile.mkstemp(prefix="kb-bm25-", suffix=".sqlite")
        os.close(handle)
        self.path = Path(name)
        weakref.finalize(self, remove_database, self.path)
        return self._create(self._connect())

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60, check_same_thread=False)

    def _remove(self) -> None:
        """Delete this index and what an older version cached beside it (pickles are never read)."""
        remove_database(self.path)
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
        db.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before the first write, which fixes it
        db.execute("PRAGMA journal_mode = WAL")  # readers (snapshots, other replicas, the CLI) never wait for a writer
        _tuned(db)
        db.executescript(_SCHEMA + _SYNCED + _GROUPED + _RECENT + _DEPARTED)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {VERSION}")
        db.commit()
        return db

    def reset(self) -> None:
        """Start again from an empty index (it was found damaged)."""
        with self._lock:
            self.db.close()
            self._remove()
            self.db = self._open()

    # -- keeping current ----------------------------------------------------

    def _versions(self) -> dict[str, str]:
        """Each indexed file's version, by key (call holding the lock)."""
        return dict(self.db.execute("SELECT key, version FROM files"))

    def update(self, store: Store) -> int:
        """Bring the postings in line with the store's file records; how many files changed.

        The records are not read when the postings were last found in line at the store's current
        generation: at a million chunks in 10,000 files, reading them was 0.67 s of a fresh process's open.
        Nor, when they were in line at an earlier generation, past the files the store's log of moves
        since then lists (Store.changes).
        """
        synced = (str(store.canon.id), store.generation())  # read before the records: they are at least this new
        before = self._synced()
        if before == synced:
            return 0
        with self._lock:
            have = self._versions()
        moved = (store.changes(before[1], synced[1])
                 if before is not None and before[0] == synced[0] and before[1] is not None else None)
        if moved is None:
            records = store.files()
            wanted = {key: version_of(record) for key, record in records.items()}
        else:
            records = {key: record for key, record in moved.items() if record is not None}
            wanted = {key: version for key, version in have.items() if key not in moved}
            wanted.update((key, version_of(record)) for key, record in records.items())
        gone = [key for key in have if key not in wanted]
        changed = {key: version for key, version in wanted.items() if have.get(key) != version}
        if gone:
            with self._lock, self.db:
                self._unsynced()
                for key in gone:
                    self._drop(key)
        if changed:
            large = sum(records[key].chunks for key in changed) >= APART_CHUNKS
            if large:
                self._merge_recent()
            self._add(self._read(store, {key: records[key] for key in changed}), apart=large,
                      into="postings" if large or not have else "recent")
        self._record(synced, wanted)
        if gone or changed:
            with self._lock:  # the writing connection's page cache (WRITE_CACHE_KB): a server held 75 MB of it for good
                self.db.execute("PRAGMA shrink_memory")
        return len(gone) + len(changed)

    def _synced(self) -> tuple[str, int] | None:
        with self._lock:
            return self.db.execute("SELECT store, generation FROM synced").fetchone()

    def _unsynced(self) -> None:
        """Call inside each write transaction: the rows are no longer known to be in line with a generation."""
        self.db.execute("UPDATE synced SET generation = NULL")

    def _record(self, synced: tuple[str, int], wanted: dict[str, str]) -> None:
        """Record the store and generation the rows are in line with, if they are still the ``wanted``
        versions (compared under the write lock, so no other update writes in between)."""
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if self._versions() == wanted:
                self.db.execute("UPDATE synced SET store = ?, generation = ?", synced)

    def _drop(self, key: str) -> None:
        """Delete one file's rows, or take it out of its write group (call inside a write transaction)."""
        found = self.db.execute("SELECT seq, chunks FROM files WHERE key = ?", (key,)).fetchone()
        if found:
            group = self.db.execute("SELECT first, start FROM grouped WHERE seq = ?", (found[0],)).fetchone()
            if group:
                self._leave(found[0], *group, found[1])
            else:  # a file alone is a group of one, keyed by its own seq
                self._delete_group(found[0])
        self.db.execute("DELETE FROM files WHERE key = ?", (key,))
        self.db.execute("DELETE FROM chunks WHERE key = ?", (key,))

    def _leave(self, seq: int, first: int, start: int, chunks: int) -> None:
        """Take a member out of its write group, its chunks (numbered ``start`` on) left in the group's rows for
        snapshots to pass over (``departed``); the group's rows go with its last member (call inside a write
        transaction). Taking them out of the rows that held them took 0.55-0.66 s of a one-file edit at a million
        prose chunks, and working out which rows those were 0.15-0.19 s more."""
        self.db.execute("DELETE FROM grouped WHERE seq = ?", (seq,))
        if self.db.execute("SELECT 1 FROM grouped WHERE first = ? LIMIT 1", (first,)).fetchone() is None:
            self._delete_group(first)
        elif chunks:
            self.db.execute("INSERT INTO departed VALUES (?, ?, ?)", (first, start, chunks))

    def _delete_group(self, first: int) -> None:
        """Delete a write group's postings rows and departed members (call inside a write transaction)."""
        for table in _TABLES:
            self.db.execute(f"DELETE FROM {table} WHERE seq = ?", (first,))
        self.db.execute("DELETE FROM departed WHERE first = ?", (first,))

    def _merge_recent(self) -> None:
        """Move the rows small updates wrote apart into the main postings table."""
        with self._lock, self.db:
            self.db.execute("INSERT INTO postings SELECT * FROM recent")
            self.db.execute("DELETE FROM recent")

    @staticmethod
    def _read(store: Store, records: dict[str, FileRecord]):
        """The changed files' chunks: one read per file, or one paged scan when many changed."""
        if len(records) <= FULL_SCAN_FILES:
            for key, record in records.items():
                yield _in_place_order(FileChunks(key, version_of(record), *store.file_chunks(record)), record)
            return
        # In the order the store holds them, as the old cache was. A file is handed on as soon as its
        # chunks (a record counts them) are all seen: a first build of 100k chunks held every text and
        # metadata of the store until the scan ended. A file that keeps chunks of a version before it
        # (FileRecord.origins) is put in the order of its places.
        found: dict[str, FileChunks] = {}
        handed: set[str] = set()
        for cid, text, meta in store.scan_chunks():
            key = meta.get("file_key")
            if key not in handed and visible(records, meta):
                chunks = found.setdefault(key, FileChunks(key, version_of(records[key]), [], [], []))
                chunks.ids.append(cid)
                chunks.texts.append(text)
                chunks.metas.append(meta)
                if len(chunks.ids) >= records[key].chunks:
                    handed.add(key)
                    yield _in_place_order(found.pop(key), records[key])
        for chunks in found.values():
            yield _in_place_order(chunks, records[chunks.key])
        for key, record in records.items():  # files with no visible chunks (cards, text-free) are indexed empty
            if key not in found and key not in handed:
                yield FileChunks(key, version_of(record), [], [], [])

    def _add(self, files, apart: bool = False, into: str = "postings") -> None:
        """Write the files' postings ``into`` a table a batch at a time; ``apart``: each batch worked out
        (kb/postings_batch.py) in the parse worker, a process of its own, while a thread here reads the next
        batch from the store (``_read_ahead``) and this one writes the one before. A first build of a million
        loc rows spent 160 of 332 profiled seconds tokenizing and analysing; the same in a thread here took
        longer (284 against 256 s), its GIL shared with the reads."""
        if not apart:
            for batch in _batches(files):
                self._write(batch, *prepared(batch, self._worked_out(batch)), into)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="kb-postings-apart") as waiting:  # waits for the worker
            pending: deque[tuple[list[FileChunks], Future]] = deque()
            for batch in _read_ahead(_batches(files)):
                pending.append((batch, waiting.submit(_prepared_apart, batch, self._worked_out(batch), str(self.path))))
                if len(pending) > 1:
                    batch, done = pending.popleft()
                    self._write(batch, *done.result(), into)
            while pending:
                batch, done = pending.popleft()
                self._write(batch, *done.result(), into)

    def _worked_out(self, batch: list[FileChunks]) -> dict[str, dict[str, tuple[int, str]]]:
        """Per file, the token counts and sentence analyses its indexed version holds, by chunk text."""
        found: dict[str, dict[str, tuple[int, str]]] = {}
        with self._lock:
            for chunks in batch:
                found[chunks.key] = {text: (tokens, sentences) for text, tokens, sentences in self.db.execute(
                    "SELECT text, tokens, sentences FROM chunks WHERE key = ?", (chunks.key,))}
        return found

    def _write(self, batch: list[FileChunks], numbered: dict[str, int], prepared: list[tuple],
               into: str = "postings") -> None:
        """One batch's rows in one transaction: its files' old rows out, then their chunks, files and postings
        (``into`` the main table, or ``recent``)."""
        with self._lock, self.db:
            self._unsynced()
            ids = self._term_ids(numbered)
            stable = np.array([ids[term] for term in numbered], dtype=np.int32)
            seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM files").fetchone()[0]
            for group in _groups([(chunks, *rest) for chunks, rest in zip(batch, prepared)]):
                first, in_group, starts = seq + 1, [], [0]
                for chunks, lengths, pair_lengths, rows, chunk_rows in group:
                    seq += 1
                    rows[:, 0] += starts[-1]  # chunks numbered within the group
                    rows[:, 1] = stable[rows[:, 1]]
                    in_group.append(rows)
                    starts.append(starts[-1] + len(chunks.ids))
                    self._drop(chunks.key)
                    self.db.executemany("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)", chunk_rows)
                    self.db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                                    (chunks.key, chunks.version, seq, len(chunks.ids), lengths.tobytes(),
                                     pair_lengths.tobytes()))
                if len(group) > 1:
                    self.db.executemany("INSERT INTO grouped VALUES (?, ?, ?)",
                                        ((first + i, first, start) for i, start in enumerate(starts[:-1])))
                self.db.executemany(f"INSERT INTO {into} VALUES (?, ?, ?, ?)",
                                    _postings_rows(first, np.concatenate(in_group)))

    def _term_ids(self, terms) -> dict[str, int]:
        """Stable ids for these terms, new ones added (call inside a write transaction)."""
        self.db.executemany("INSERT OR IGNORE INTO vocabulary (term) VALUES (?)", ((t,) for t in terms))
        return _vocabulary_ids(self.db.execute, terms)

    # -- reading ------------------------------------------------------------

    def snapshot(self) -> "Snapshot":
        """The postings as last committed, held for as long as the snapshot lives."""
        return Snapshot(self)

    def checkpoint(self, wait: bool = True) -> bool:
        """Copy the write-ahead log into the file; whether all of it was (an older snapshot may still read
        pages the log replaced, which keeps them there). Without ``wait``, False at once while another thread
        writes or copies."""
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            busy, logged, copied = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            self._lock.release()
        return busy == 0 and logged == copied


def _tuned(db: sqlite3.Connection) -> sqlite3.Connection:
    """The writing connection's settings: a file's postings rows land all over the term-ordered table, so
    its page cache is larger than SQLite's 2 MB (not measured apart: a 40-file build took the same CPU with 2 MB;
    the README's 100k figures ran with 64 MB)."""
    db.execute("PRAGMA synchronous = NORMAL")  # a cache: a crash at worst rebuilds what it lost
    db.execute(f"PRAGMA cache_size = -{WRITE_CACHE_KB}")
    return db


class Snapshot:
    """One committed state of the postings, read per query through its own read-only connection.

    Its read transaction stays open while it lives, so every read sees the commit the snapshot began
    at; opening it reads the files rows only: their order and their chunks' lengths.
    """

    def __init__(self, postings: Postings):
        self._postings = postings  # kept alive (a temporary index is deleted with it)
        self._lock = threading.Lock()  # one connection, shared by a server's threads
        self.db = self._begin()
        self._settled = False
        self.files: list[tuple[str, str, int]] = []  # (key, version, chunks) in position order
        self.starts: dict[str, int] = {}  # a file's key -> the same
        self._state: list[tuple] = []  # its files rows' _STATE columns, to tell whether the file moved on
        lengths, pair_lengths, size = [], [], 0
        for key, version, seq, count, file_lengths, file_pair_lengths in self.db.execute(
                f"SELECT {_STATE}, lengths, pair_lengths FROM files ORDER BY seq"):
            self._state.append((key, version, seq, count))
            lengths.append(_array(file_lengths))
            pair_lengths.append(_array(file_pair_lengths))
            if not len(lengths[-1]) == len(pair_lengths[-1]) == count:
                raise ValueError(f"the indexed file {key} is damaged")
            self.files.append((key, version, count))
            self.starts[key] = size
            size += count
        self.size = size
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)
        self.pair_lengths = np.concatenate(pair_lengths) if pair_lengths else np.zeros(0, dtype=np.int32)
        self._firsts = np.array([self.starts[key] for key, _, _ in self.files], dtype=np.int64)
        self._group_rows()

    def _group_rows(self) -> None:
        """Where each write group's chunks are. Postings rows are keyed by their group, whose files still held are
        consecutive in position order: its chunk numbered n is at ``_bases[g] + n`` while no member has departed,
        and otherwise at ``_gapped[_offsets[g] + n]``, -1 for a departed member's chunks."""
        members = {seq: (first, start) for seq, first, start in self.db.execute("SELECT seq, first, start FROM grouped")}
        departed: dict[int, list[tuple[int, int]]] = {}  # a group's key -> (start, chunks) per departed member
        for first, start, count in self.db.execute("SELECT first, start, chunks FROM departed"):
            departed.setdefault(first, []).append((start, count))
        groups: list[tuple[int, list[tuple[int, int, int]]]] = []  # key, and (start, chunks, position) per file
        for (_, _, seq, count), position in zip(self._state, self._firsts.tolist()):
            first, start = members.get(seq, (seq, 0))
            if not groups or groups[-1][0] != first:
                groups.append((first, []))
            groups[-1][1].append((start, count, position))
        keys, bases, offsets, gapped, mapped = [], [], [], [], 0
        # the chunks the groups' rows were written for (a row's n counts a departed member's)
        self._group_chunks = np.array([sum(count for _, count, _ in held) + sum(count for _, count in departed.get(first, ()))
                                       for first, held in groups], dtype=np.int64)
        for first, held in groups:
            base = held[0][2] - held[0][0]
            keys.append(first)
            bases.append(base)
            gone = departed.get(first, [])
            if not gone and all(position - start == base for start, _, position in held):
                offsets.append(-1)
                continue
            where = np.full(max(start + count for start, count, *_ in held + gone), -1, dtype=np.int32)
            for start, count, position in held:
                where[start:start + count] = np.arange(position, position + count)
            offsets.append(mapped)
            gapped.append(where)
            mapped += len(where)
        self._keys = np.array(keys, dtype=np.int64)  # ascending
        # positions int32, as the postings' numbers are: a kept posting is 8 bytes, not 12 (Corpus._weights)
        self._bases, self._offsets = np.array(bases, dtype=np.int32), np.array(offsets, dtype=np.int64)
        self._gapped = np.concatenate(gapped) if gapped else np.zeros(0, dtype=np.int32)

    def _begin(self) -> sqlite3.Connection:
        """A read-only connection in a read transaction, which its first read will pin to the last commit."""
        db = sqlite3.connect(f"{self._postings.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60,
                             isolation_level=None, check_same_thread=False)
        weakref.finalize(self, db.close)
        db.execute("BEGIN")
        return db

    def settle(self) -> None:
        """Begin this snapshot's read again once the write-ahead log is all in the file, when nothing was
        written since: a read that begins on a fully copied log lets the next writer start the log over.
        Held from the commit it began at, a server's snapshot kept every later write in the log, which
        grew by each change for as long as the server ran (about 1.1 MB per changed file of 400 words).
        While an older snapshot still reads, or another thread writes or copies the log, a later call tries
        again (a search's poll calls it, and does not wait: a reload copies the log in its own thread)."""
        if self._settled or not self._postings.checkpoint(wait=False):
            return
        db = self._begin()
        if db.execute(f"SELECT {_STATE} FROM files ORDER BY seq").fetchall() == self._state:
            with self._lock:
                self.db, old = db, self.db
            old.close()
        else:  # written since: this snapshot's state is gone from the file, and the next reload settles
            db.close()
        self._settled = True

    def _query(self, sql: str, values=()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, values).fetchall()

    def term_ids(self, terms: list[str]) -> dict[str, int]:
        """The vocabulary ids of those of ``terms`` the vocabulary holds (a term no file holds any more may be
        one: its postings say)."""
        return _vocabulary_ids(self._query, terms)

    def terms_of(self, term_ids: list[int]) -> dict[int, str]:
        """The terms these vocabulary ids stand for."""
        found = {}
        for part in parts(list(term_ids)):
            found.update(self._query(f"SELECT id, term FROM vocabulary WHERE id IN {placeholders(part)}", part))
        return found

    def postings(self, term_ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Each term's postings: the positions of the chunks holding it and its counts there (in the order
        SQLite joined its rows: a BM25 sum adds a term once per chunk, in any order).

        A common term is a row per write group (1,000 at a million 150-word chunks), and SQLite joins a term's
        rows into one: a question's postings there, a row per file, were read in 82-85 ms a row at a time, in
        45 ms joined.
        """
        found: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for part in parts(list(dict.fromkeys(term_ids))):
            for table in _TABLES:  # the recent rows of a term are few: its main rows are read as they were
                for term, seqs, sizes, blob in self._query(
                        "SELECT term, group_concat(seq), group_concat(n), CAST(group_concat(rows, '') AS BLOB)"
                        f" FROM {table} WHERE term IN {placeholders(part)} GROUP BY term", part):
                    found.setdefault(term, []).append(self._positions(seqs, sizes, blob))
        return {term: held[0] if len(held) == 1 else tuple(np.concatenate(column) for column in zip(*held))
                for term, held in found.items()}

    def _positions(self, seqs: str, sizes: str, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
        """One term's joined rows of one table as the positions of the chunks holding it and its counts there."""
        keys, sizes = (np.fromstring(column, dtype=np.int64, sep=",") for column in (seqs, sizes))
        groups = np.searchsorted(self._keys, keys)  # where each row's group is, in position order
        if groups.max() >= len(self._keys) or (self._keys[groups] != keys).any():
            raise ValueError("the indexed postings name a file the index does not hold")
        pairs = _array(blob).reshape(-1, 2)
        if len(pairs) != sizes.sum():
            raise ValueError("the indexed postings are damaged")
        numbers, counts, offsets = pairs[:, 0], pairs[:, 1], self._offsets[groups]
        positions = numbers + np.repeat(self._bases[groups], sizes)
        departed = False
        ends = np.cumsum(sizes)
        # Only the rows of a group with a gap (4 of 1,188 groups in the million prose chunks) have their chunks
        # looked up, and a departed member's are dropped column by column (pairs[held, 1] copied 7 ms a term there):
        # 30 of its common terms took 66 ms in all, then 21.
        for row in np.flatnonzero(offsets >= 0).tolist():
            rows = slice(ends[row] - sizes[row], ends[row])
            positions[rows] = self._gapped[offsets[row] + numbers[rows]]
            departed = departed or bool((positions[rows] < 0).any())
        if departed:
            held = positions >= 0
            return positions[held], counts[held]
        return positions, counts

    def sampled_frequencies(self, groups: int, min_share: float) -> tuple[list[tuple[int, str, int]], int]:
        """How many chunks of ``groups`` write groups spread evenly over the index hold each of their terms held by
        at least ``min_share`` of them, as (vocabulary id, term, chunks) rows, and how many chunks those groups hold:
        a sample of the commonest terms' document frequencies, which counting every term's rows over the whole
        index gives in 55.6 s at a million chunks."""
        if not len(self._keys):
            return [], 0
        picked = np.unique(np.linspace(0, len(self._keys) - 1, groups).round().astype(np.int64))
        keys, chunks = self._keys[picked].tolist(), int(self._group_chunks[picked].sum())
        held = " UNION ALL ".join(f"SELECT term, n FROM {table} WHERE seq IN {placeholders(keys)}" for table in _TABLES)
        rows = self._query("SELECT held.term, vocabulary.term, held.chunks FROM (SELECT term, sum(n) AS chunks"
                           f" FROM ({held}) GROUP BY term HAVING chunks >= ?) AS held"
                           " JOIN vocabulary ON vocabulary.id = held.term", [*keys * len(_TABLES), min_share * chunks])
        return rows, chunks

    def at(self, positions: list[int], columns: str) -> dict[int, tuple]:
        """``columns`` of the chunks at these positions (chunks table columns), by position."""
        files = np.searchsorted(self._firsts, positions, side="right") - 1
        wanted = [(self.files[f][0], pos - int(self._firsts[f])) for f, pos in zip(files.tolist(), positions)]
        found = {}
        for part in parts(wanted):
            values = [value for pair in part for value in pair]
            for key, pos, *row in self._query(
                    f"SELECT key, pos, {columns} FROM (VALUES {','.join(['(?, ?)'] * len(part))}) AS wanted "
                    "CROSS JOIN chunks ON key = wanted.column1 AND pos = wanted.column2", values):
                found[self.starts[key] + pos] = tuple(row)
        return found

    def positions_of(self, ids: list[str]) -> dict[str, int]:
        """The positions of those of these chunks this snapshot holds."""
        found = {}
        for part in parts(list(ids)):
            found.update((cid, self.starts[key] + pos) for cid, key, pos in self._query(
                f"SELECT id, key, pos FROM chunks WHERE id IN {placeholders(part)}", part) if key in self.starts)
        return found

    def rows(self, columns: str):
        """``columns`` of every chunk, in position order, read one file at a time."""
        for key, _, _ in self.files:
            yield from self.file_rows(key, columns)

    def file_rows(self, key: str, columns: str) -> list[tuple]:
        """``columns`` of one file's chunks, in position order."""
        return self._query(f"SELECT {columns} FROM chunks WHERE key = ? ORDER BY pos", (key,))

    def worked_out(self, ids: list[str]) -> dict[str, tuple[int, str]]:
        """What was worked out for these chunks when they were indexed, by id: their token count and their
        sentence analysis (kb.extract.stored_analysis); a chunk the index does not hold is left out."""
        rows = []
        try:
            for part in parts(list(ids)):
                rows += self._query(f"SELECT id, tokens, sentences FROM chunks WHERE id IN {placeholders(part)}", part)
        except sqlite3.Error:
            return {}  # a damaged index: the answer works them out again, and the next load rebuilds it
        return {cid: (tokens, sentences) for cid, tokens, sentences in rows}
