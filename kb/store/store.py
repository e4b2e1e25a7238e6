"""The store over chromadb: chunks, the ingest manifest, the model record.

Everything the knowledge base keeps lives in chromadb collections, so the same
code serves a local directory (PersistentClient) and a shared Chroma server
(HttpClient):

- ``canon``: one row per chunk: its vector, and as metadata its file's key
  and hash (what filters name) beside its text and metadata packed in one
  JSON string (``_packed``); the collection's metadata records the embedding
  model and its dimension.
- ``manifest``: one row per published file (``file:<key>``) with its hash and
  chunk count, one per NPC card, ``run:<id>`` and ``staged:<id>:<key>`` rows
  of an ingest run not yet cleaned up, ``state`` with a generation counter
  readers cache by, and ``change:<generation>`` rows logging the last moves of
  it and the files each made visible (``Store.changes``).

An ingest is one run (``Store.begin_run``): it stages each file's new chunks
under ids that embed the new content hash, with a ``staged`` row saying which
version of which file it wrote, while readers keep seeing the published files
only. A new version may keep chunks of the one before that it left as they
were (``FileRecord.origins``): their ids name the version that wrote them and
where, which readers of either version see alike. ``Run.publish`` then commits
the whole run with one write (its ``run``
row marked committed, from which point readers see the published files
overlaid with the run's staged rows), moves the generation, copies the staged
rows onto the ``file`` rows, deletes the chunks no published file uses any
more and moves the generation again (readers re-read what a delete shifted:
``Store.consistent``). A crash before the commit leaves invisible staged chunks that the next
writer deletes; a crash after it leaves a committed run the next writer
finishes. Readers never see half a run.

A local store has one writer at a time (kb/store/lock.py). A Chroma server
has no such lock, since any number of machines may write at once; there only
abandoned runs are cleaned up, and writers should not replace the same file
at the same time (run one ingest job per folder, e.g. from CI).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path

import chromadb
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import InternalError

from ingest.types import HASH_IN_ID, chunk_id, id_place
from kb.errors import KBError, ModelMismatch, Unavailable
from kb.store import written
from kb.store.embed import DEFAULT_MODEL, LoreEmbedding, model_dim

CANON = "canon"
SPACE = "cosine"  # the canon's distance (kb/store/compact.py builds its index alike)
MANIFEST = "manifest"
PACKED = "chunk"  # the canon metadata key holding a chunk's text and metadata (_packed)
_UNIT = [1.0]  # manifest rows need a vector; they are only ever fetched by id
STALE_RUN_SECONDS = 900  # on a shared server, a run started longer ago and never committed was abandoned
SNAPSHOT_TRIES = 20  # a reader reads again at most this often while publishes land under it
DROP_FILES = 500  # files whose stale chunks one read looks for (their keys are bound as SQL variables)
PAGE = 5_000  # rows per chromadb read: it binds a read's ids as SQL variables, at most 32,766
# Rows per read that may walk a whole collection (a scan, a publish's look for old versions), under that limit:
# each page's offset walks again the rows before it. A store of up to this many files has its manifest read in one
# go, seen whole without a check of the generation. At a million chunks: the scan of a first postings build
# 153.9 -> 47.6 s (1M loc rows); the 10,000 file records 0.8-1.1 -> 0.42-0.51 s (in pages of PAGE, the first read
# twice).
LARGE_PAGE = 30_000
ID_PAGE = 1_000_000  # ids per read of ids alone: no SQL variable is bound for them, and a page of them is ~70 MB
STAGE_BATCH_FILES = 100  # files an ingest stages per chromadb write at most (Run.put's ``behind``)
STAGE_BATCH_S = 0.25  # ... and for at most this long: what a killed ingest's rerun must parse and embed again
CHANGES_KEPT = 64  # generation moves the manifest logs (Store.changes); older ones are deleted
CHANGES_LISTED_MAX = 200  # files a logged move lists at most; a larger one is logged unlisted
LOAD_TRIES = 5  # a chromadb call that meets a state a write leaves for a moment is tried this often at most
TRANSIENT = ("hnsw segment reader", "database is locked")  # in the messages of the errors of such states
# Generation moves made by this process, per store location: every KnowledgeBase of the process sees
# its own process's write on its next call, not one poll later (kb/api.py), however fast it came.
_moved_here: Counter[str] = Counter()
# A store file written this recently may be written again within the same tick of the file system's
# clock, leaving its time and size as they were: its signature is not trusted until then.
RECENT_WRITE_S = 1.0


@dataclass
class FileRecord:
    """What the manifest remembers about one ingested file."""

    key: str
    path: str
    source: str
    root: str
    hash: str
    kind: str
    chunks: int
    ingested_at: float
    card: dict | None = None
    non_numbers: dict = field(default_factory=dict)  # per key, a value numeric limits cannot compare
    # Where its chunks come from, place by place, as runs [[file hash, places, first place], ...]: the next
    # ``places`` places hold the chunks that version wrote at places ``first`` on. An edited file keeps the
    # chunks its version before had for the passages it left as they were (kb/sync.py). None: all its own.
    origins: list | None = None

    def to_meta(self) -> dict:
        """Every field, those that may be empty too: chromadb's upsert keeps a key the new row leaves out, and a
        file's record would keep its version before's origins."""
        meta = {k: v for k, v in vars(self).items() if k not in ("card", "non_numbers", "origins")}
        for name in ("card", "non_numbers", "origins"):
            meta[name] = json.dumps(getattr(self, name), ensure_ascii=False) if getattr(self, name) else ""
        return meta

    @classmethod
    def from_meta(cls, meta: dict) -> "FileRecord":
        fields = {k: meta[k] for k in ("key", "path", "source", "root", "hash", "kind",
                                      "chunks", "ingested_at")}
        card = json.loads(meta["card"]) if meta.get("card") else None
        origins = json.loads(meta["origins"]) if meta.get("origins") else None
        return cls(**fields, card=card, non_numbers=json.loads(meta.get("non_numbers") or "{}"), origins=origins)

    def chunk_ids(self) -> list[str]:
        """Its chunks' ids, place by place (each names the version that wrote it, and where)."""
        return [chunk_id(self.key, digest, first + k) for digest, places, first in self._runs() for k in range(places)]

    def holds(self, version: str, index: int | None) -> bool:
        """Whether the chunk that ``version`` (its first HASH_IN_ID digits) wrote at place ``index`` is one of
        this file's now (a chunk of a file without origins by its version alone)."""
        if self.origins is None:
            return version == self.hash[:HASH_IN_ID]
        return index is not None and any(digest[:HASH_IN_ID] == version and first <= index < first + places
                                         for digest, places, first in self.origins)

    def places(self) -> dict[str, int]:
        """Its chunks' places, by id."""
        return {cid: place for place, cid in enumerate(self.chunk_ids())}

    def _runs(self) -> list:
        return self.origins or [[self.hash, self.chunks, 0]]


def _client(kb_dir: Path, chroma_url: str | None, fresh: bool = False):
    settings = ChromaSettings(anonymized_telemetry=False)
    if chroma_url:
        from urllib.parse import urlparse

        url = urlparse(chroma_url)
        try:
            return chromadb.HttpClient(host=url.hostname, port=url.port or 8000,
                                       ssl=url.scheme == "https", settings=settings)
        except Exception as exc:
            raise Unavailable(f"cannot reach the Chroma server at {chroma_url}: {exc}") from None
    if fresh:
        # chromadb keeps one system per directory and process, whose vector index never sees another
        # process's writes; a new one loads the index from disk and replays the log written after it.
        # Clients already open keep their own system (they hold its API, not the cache's entry).
        SharedSystemClient.clear_system_cache()
    try:
        kb_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(kb_dir / "chroma"), settings=settings)
    except Exception as exc:
        raise KBError(f"cannot open the knowledge base at {kb_dir}: {exc}") from None


def _packed(text: str, meta: dict) -> dict:
    """A chunk's chromadb metadata: the two keys filters name, and its text and whole metadata as one JSON
    string. chromadb indexes every metadata key and (full-text) every document, and writing a 10,000-row loc
    table's texts and 11 keys took 16-17 s into a million-chunk store, 11-12 s packed."""
    return {"file_key": meta["file_key"], "file_hash": meta["file_hash"],
            PACKED: json.dumps({"text": text, "meta": meta}, ensure_ascii=False)}


def _unpacked(document: str | None, meta: dict) -> tuple[str, dict]:
    """A chunk's text and metadata, packed or as stores before packing held them (a document, flat keys)."""
    if PACKED not in meta:
        return document, meta
    chunk = json.loads(meta[PACKED])
    return chunk["text"], chunk["meta"]


def _pages(collection, where: dict | None, include: list[str], page: int = PAGE):
    """A collection's rows (those ``where`` matches) ``page`` at a time, in the order they were added: chromadb
    binds a read's ids as SQL variables, and one read of a 35,000-row loc table's chunks failed with "too
    many SQL variables"."""
    for offset in itertools.count(0, page):
        rows = _tried_again(collection.get, where=where, limit=page, offset=offset, include=include)
        yield rows
        if len(rows["ids"]) < page:
            return


def _version(key: str, file_hash: str) -> dict:
    """The chromadb filter for one file version's chunks."""
    return {"$and": [{"file_key": key}, {"file_hash": file_hash}]}


def _tried_again(call, *args, **kwargs):
    """What ``call(*args, **kwargs)``, a chromadb call, returns, tried again while it meets a state that a write
    leaves for a moment (TRANSIENT).

    - A collection's first read in a process loads its vector index, and chromadb 1.5.9 rewrites the index's id
      maps in place each time a writer saves it (after every write, on a local store): a process loading it then
      failed with "Error deserializing pickle file" (13 of 525 fresh loads beside a writer of 10-chunk runs).
    - Its SQLite waits for no other writer: a change to a collection's configuration right after an upsert in
      the same process failed with "database is locked" (1 in 17 to 1 in 40, opening for a write a store made
      before writers saved the vector index after every write).
    """
    for attempt in range(1, LOAD_TRIES + 1):
        try:
            return call(*args, **kwargs)
        except InternalError as exc:
            if not any(message in str(exc) for message in TRANSIENT) or attempt == LOAD_TRIES:
                raise
            time.sleep(0.1 * attempt)


class Store:
    """A knowledge base: chunks with embeddings, plus the manifest that makes ingest incremental."""

    def __init__(self, kb_dir: Path, chroma_url: str | None = None, model: str | None = None,
                 create: bool = False, ef_search: int = 100, fresh: bool = False):
        """Open (or, with ``create``, make) the store, ``create`` for a writer (a local store's vector index is
        then saved after every write); ``fresh``: a local store as it is on disk now,
        not through this process's open copy of it, which another process's vectors never reach.

        Raises:
            Unavailable: no store there and ``create`` is false, or it cannot be reached.
            KBError: it cannot be opened or written.
            ModelMismatch: the store was built with a different embedding model.
        """
        self.kb_dir = Path(kb_dir)
        self.chroma_url = chroma_url
        self._location = chroma_url or str(self.kb_dir.resolve())
        if not create and not chroma_url and not (self.kb_dir / "chroma" / "chroma.sqlite3").exists():
            # checked before chromadb runs, which would leave an empty store at a mistyped --kb
            raise Unavailable(f"no knowledge base at {self.kb_dir}; run `kb ingest PATH` first")
        self.client = _client(self.kb_dir, chroma_url, fresh)
        existing = {c.name if hasattr(c, "name") else c for c in self.client.list_collections()}
        if CANON not in existing and not create:
            where = chroma_url or str(self.kb_dir)
            raise Unavailable(f"no knowledge base at {where}; run `kb ingest PATH` first")
        if CANON in existing:
            meta = self.client.get_collection(CANON).metadata or {}
            recorded = meta.get("embedding_model")
            if model and recorded and model != recorded:
                raise ModelMismatch(
                    f"the store at {chroma_url or self.kb_dir} was built with embedding model "
                    f"'{recorded}', not '{model}'; use that model or another --kb directory")
            model = recorded or model
        self.model = model or DEFAULT_MODEL
        self.embedder = LoreEmbedding(self.model)
        try:
            self.canon = self.client.get_or_create_collection(
                CANON,
                embedding_function=self.embedder,
                metadata={"embedding_model": self.model, "dim": model_dim(self.model)},
                configuration={"hnsw": {"space": SPACE, "ef_search": ef_search}},
            )
            self.manifest = self.client.get_or_create_collection(
                MANIFEST, embedding_function=None, configuration={"hnsw": {"space": "l2"}})
            if create and not chroma_url:
                self._save_vectors_after_each_write()
        except KBError:
            raise
        except Exception as exc:
            raise KBError(f"cannot write to the knowledge base at {self.kb_dir}: {exc}") from None

    def _save_vectors_after_each_write(self) -> None:
        """Have chromadb save the canon's vector index after every write, not every 1,000 (its ``sync_threshold``).

        It keeps the writes since its last save only in its log, and every new process inserts them into the
        index again before its first dense search: a fresh `kb search` took 1.9 s on 10,000 chunks with 300
        writes left unsaved and 0.8 s saved, 6.2 s with 400 and 4.8 s saved at a million. A writer sets it before
        its first write, which reads it (a Chroma server replays its log once per start, not once per reader).
        """
        if (self.canon.configuration.get("hnsw") or {}).get("sync_threshold") != 1:
            _tried_again(self.canon.modify, configuration={"hnsw": {"sync_threshold": 1}})

    # -- manifest ---------------------------------------------------------

    def files(self) -> dict[str, FileRecord]:
        """Every published file and card, by key: the file rows, overlaid with the runs committed but
        not yet copied onto them, a publish seen whole or not at all (_manifest_rows)."""
        metas = self._manifest_rows(["canon", "card", "staged", "run"])
        view = {m["key"]: FileRecord.from_meta(m) for m in metas if m["kind"] in ("canon", "card")}
        committed = sorted((m["committed_at"], m["run"]) for m in metas
                           if m["kind"] == "run" and m["committed_at"])
        for _, run in committed:
            for meta in metas:
                if meta["kind"] == "staged" and meta["run"] == run:
                    if meta["removed"]:
                        view.pop(meta["key"], None)
                    else:
                        view[meta["key"]] = _staged_record(meta)
        return view

    def _manifest_rows(self, kinds: list[str]) -> list[dict]:
        """The manifest rows of these kinds: in one read while they fit a page, so a publish is seen whole
        or not at all; past that in pages (chromadb binds a read's ids as SQL variables, and fails past
        32,766) read again while publishes land under them. Pages follow the order rows were added in:
        a new row never shifts them, and every delete is followed by a move of the generation."""
        where = {"kind": {"$in": kinds}}
        first = _tried_again(self.manifest.get, where=where, limit=LARGE_PAGE, include=["metadatas"])["metadatas"]
        if len(first) < LARGE_PAGE:
            return first

        return self.consistent(lambda: [meta for rows in _pages(self.manifest, where, ["metadatas"], LARGE_PAGE)
                                        for meta in rows["metadatas"]])

    def generation(self) -> int:
        """A counter that changes whenever the visible canon changes."""
        rows = _tried_again(self.manifest.get, ids=["state"], include=["metadatas"])
        return int(rows["metadatas"][0]["generation"]) if rows["ids"] else 0

    def disk_signature(self) -> tuple | None:
        """What any write to a local store changes on disk (its SQLite files' identity, size and time),
        so a reader can tell nothing changed without asking chromadb; None: ask (a Chroma server, or a
        file written in the last RECENT_WRITE_S)."""
        if self.chroma_url:
            return None
        signature = []
        for name in ("chroma.sqlite3", "chroma.sqlite3-wal"):
            try:
                found = os.stat(self.kb_dir / "chroma" / name)
            except FileNotFoundError:
                signature.append(None)
                continue
            if time.time() - found.st_mtime < RECENT_WRITE_S:
                return None
            signature.append((found.st_ino, found.st_size, found.st_mtime_ns))
        return tuple(signature)

    def _bump_generation(self, changed: list[dict] | None = None) -> None:
        """Move the generation, logging the move with the staged rows it makes visible (``changed``; None: not
        known, and a reader behind it reads every file record again). The log goes first: a reader that sees
        the new generation finds the move that led to it (``changes``)."""
        # A random step, not +1: writers sharing a Chroma server hold no lock between them, and two
        # that read the same generation must not publish the same next one (readers would miss one).
        before = self.generation()
        after = before + random.randint(1, 1 << 20)
        listed = changed is not None and len(changed) <= CHANGES_LISTED_MAX
        move = {"kind": "change", "from": before, "to": after, "listed": listed,
                "files": json.dumps(changed if listed else [], ensure_ascii=False)}
        self.manifest.upsert(ids=[f"change:{after}"], embeddings=[_UNIT], metadatas=[move])
        meta = {"kind": "state", "generation": after, "updated_at": time.time()}
        self.manifest.upsert(ids=["state"], embeddings=[_UNIT], metadatas=[meta])
        _moved_here[self._location] += 1
        moves = _tried_again(self.manifest.get, where={"kind": "change"}, include=[])["ids"]
        if len(moves) > CHANGES_KEPT:  # the oldest by the generation each led to, named in its id
            self.manifest.delete(ids=sorted(moves, key=lambda cid: int(cid.removeprefix("change:")))[:-CHANGES_KEPT])

    def changes(self, since: int, until: int) -> dict[str, FileRecord | None] | None:
        """The files whose published version moved from generation ``since`` to ``until``, by key (None: removed),
        from the log of moves: a reader behind by a few files learns which without reading every file record
        (0.4-0.9 s at 10,000 files). None when the log cannot say: a move it no longer keeps or did not list,
        or two writers that moved on from the same generation."""
        moves: dict[int, list[dict]] = {}
        for meta in _tried_again(self.manifest.get, where={"kind": "change"}, include=["metadatas"])["metadatas"]:
            moves.setdefault(meta["from"], []).append(meta)
        changed: dict[str, FileRecord | None] = {}
        at = since
        while at != until:  # generations only grow, so the walk ends
            step = moves.get(at, [])
            if len(step) != 1 or not step[0]["listed"]:
                return None
            for meta in json.loads(step[0]["files"]):
                changed[meta["key"]] = None if meta["removed"] else _staged_record(meta)
            at = step[0]["to"]
        return changed

    def moves_here(self) -> int:
        """How often this process has moved the generation of this store (at this location)."""
        return _moved_here[self._location]

    def last_ingest(self) -> float | None:
        rows = _tried_again(self.manifest.get, ids=["state"], include=["metadatas"])
        return rows["metadatas"][0]["updated_at"] if rows["ids"] else None

    def status(self, records: dict[str, FileRecord] | None = None) -> dict:
        """Files, cards, chunks, model, size and last ingest, as `kb status --json` and GET /status show them;
        ``records``: the file records, when the caller has read them (10,000 of them took 0.67 s at a million
        chunks)."""
        records = (self.files() if records is None else records).values()
        last = self.last_ingest()
        return {
            "kb": self.chroma_url or str(self.kb_dir),
            "files": sum(1 for r in records if r.kind == "canon"),
            "cards": sum(1 for r in records if r.kind == "card"),
            "chunks": sum(r.chunks for r in records),  # published ones: a run's staged chunks are not yet canon
            "model": self.model,
            "store_bytes": self.size_bytes(),
            "last_ingest": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(last)) if last else None,
        }

    # -- writes -----------------------------------------------------------

    def begin_run(self) -> "Run":
        """A new ingest run: what it stages stays invisible to readers until ``Run.publish``."""
        return Run(self, uuid.uuid4().hex)

    def _upsert(self, collection, ids: list[str], embeddings: list, metadatas: list[dict]) -> None:
        """Upsert in chromadb's largest batches (5,461 rows here): a call with more fails, and a run that
        published more files than that failed its commit's copy onto the file rows at every retry."""
        batch = self.client.get_max_batch_size()
        for start in range(0, len(ids), batch):
            end = start + batch
            collection.upsert(ids=ids[start:end], embeddings=embeddings[start:end], metadatas=metadatas[start:end])

    def _delete_chunks(self, keys: Iterable[str], doomed: Callable[[str, str, int | None], bool]) -> None:
        """Delete the chunks of these files that ``doomed(file key, version, place)`` picks, a version being the
        first HASH_IN_ID digits of the hash of the file version that wrote the chunk (two versions sharing them
        share their chunk ids).

        They are found by one read per DROP_FILES files, of ids alone, and deleted by id: a chunk id names its
        file and version (ingest/types.py), and reading the chunks' metadata (their packed text) to learn them
        took 94.9 s at a million loc rows, by their ids 11.8 s. A filtered delete per file cost 13-27 ms at
        100,000 chunks and 80 ms at a million even when it found nothing (500 new files into 100,000 chunks:
        6.7 -> 0.44 s to publish)."""
        keys, batch = list(keys), self.client.get_max_batch_size()
        for start in range(0, len(keys), DROP_FILES):
            part = keys[start:start + DROP_FILES]
            found, unnamed, named_keys = [], [], set(part)  # unnamed: not named by ingest/types.py's chunk_id
            for rows in _pages(self.canon, {"file_key": {"$in": part}}, [], ID_PAGE):
                for cid in rows["ids"]:
                    place = id_place(cid)
                    if place is None or place[0] not in named_keys:
                        unnamed.append(cid)
                    elif doomed(*place):
                        found.append(cid)
            for first in range(0, len(unnamed), PAGE):
                rows = _tried_again(self.canon.get, ids=unnamed[first:first + PAGE], include=["metadatas"])
                found += [cid for cid, meta in zip(rows["ids"], rows["metadatas"])
                          if doomed(meta["file_key"], meta["file_hash"][:HASH_IN_ID], meta.get("chunk_index"))]
            for first in range(0, len(found), batch):
                self.canon.delete(ids=found[first:first + batch])

    def _finish(self, run: str, staged: list[dict]) -> None:
        """Copy a committed run's staged rows onto the file rows, then delete what nothing uses any more."""
        kept = [m for m in staged if not m["removed"]]
        self._upsert(self.manifest, [f"file:{m['key']}" for m in kept], [_UNIT] * len(kept),
                     [_staged_record(m).to_meta() for m in kept])
        gone = [f"file:{m['key']}" for m in staged if m["removed"]]
        if gone:
            self.manifest.delete(ids=gone)
        keep = {meta["key"]: None if meta["removed"] else _staged_record(meta) for meta in staged}
        self._delete_chunks(keep, lambda key, version, place: keep[key] is None or not keep[key].holds(version, place))
        self._forget_run(run, staged)

    def _abandon(self, run: str, staged: list[dict], published: dict[str, FileRecord]) -> None:
        """Delete the chunks and rows of a run that never committed (a crash, or a failed write)."""
        unpublished = {meta["key"]: meta["hash"][:HASH_IN_ID] for meta in staged if not meta["removed"] and (
            published.get(meta["key"]) is None or published[meta["key"]].hash != meta["hash"])}

        def doomed(key: str, version: str, place: int | None) -> bool:
            """A chunk the run wrote, unless the published version holds it (a file edited back shares its ids)."""
            live = published.get(key)
            return version == unpublished[key] and not (live is not None and live.holds(version, place))

        self._delete_chunks(unpublished, doomed)
        self._forget_run(run, staged)

    def _forget_run(self, run: str, staged: list[dict]) -> None:
        """Delete a finished or abandoned run's own manifest rows: its run row and what it staged."""
        self.manifest.delete(ids=[f"run:{run}"] + [f"staged:{run}:{m['key']}" for m in staged])

    def repair(self, stale_after: float | None = None, abandon: bool = True) -> int:
        """Finish runs that committed and (with ``abandon``) clean up runs that never did; return how many.

        An ingest finishes first and cleans up only once it has published, so what an
        interrupted run staged can be reused in between (``Run.reuse``). A local store's write
        lock guarantees no other writer is mid-run. A Chroma server has no such lock, so there
        an uncommitted run is only taken as abandoned once it is ``stale_after`` seconds old
        (default STALE_RUN_SECONDS): cleaning up another machine's run in progress would delete
        the chunks it is about to publish.
        """
        if stale_after is None:
            stale_after = STALE_RUN_SECONDS if self.chroma_url else 0.0
        rows = self._manifest_rows(["staged", "run"])
        runs = {m["run"]: m for m in rows if m["kind"] == "run"}
        staged: dict[str, list[dict]] = {}
        for meta in rows:
            if meta["kind"] == "staged":
                staged.setdefault(meta["run"], []).append(meta)
                runs.setdefault(meta["run"], {"run": meta["run"], "committed_at": 0.0,
                                              "started_at": meta["staged_at"]})
        published = self.files()
        repaired = 0
        for run, meta in sorted(runs.items(), key=lambda item: item[1]["committed_at"]):
            if meta["committed_at"]:
                self._finish(run, staged.get(run, []))
            elif abandon and time.time() - meta["started_at"] >= stale_after:
                self._abandon(run, staged.get(run, []), published)
            else:
                continue
            repaired += 1
        if repaired:  # a crash may have come before the generation moved; a reader mid-scan rereads
            self._bump_generation()
        return repaired

    # -- reads ------------------------------------------------------------

    def count(self) -> int:
        return _tried_again(self.canon.count)

    def all_chunks(self):
        """Every visible chunk as (ids, texts, metadatas): the published files' chunks, one whole generation."""

        def read():
            live = self.files()
            rows = [(cid, text, meta) for cid, text, meta in self.scan_chunks() if visible(live, meta)]
            return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

        return self.consistent(read)

    def consistent(self, read):
        """What ``read()`` returns, read again while publishes land during it, as a seqlock's reader does.

        A publish moves the generation after its commit and again after deleting the chunks
        it replaced, so a read that saw the generation unchanged saw one published state whole.
        """
        for _ in range(SNAPSHOT_TRIES):
            generation = self.generation()
            result = read()
            if self.generation() == generation:
                return result
            time.sleep(0.05)
        return result

    def scan_chunks(self):
        """Every chunk row, visible or not, as (id, text, metadata), a page at a time."""
        for rows in _pages(self.canon, None, ["documents", "metadatas"], LARGE_PAGE):
            for cid, document, meta in zip(rows["ids"], rows["documents"], rows["metadatas"]):
                yield cid, *_unpacked(document, meta)

    def file_chunks(self, record: FileRecord) -> tuple[list[str], list[str], list[dict]]:
        """One file version's chunks as (ids, texts, metadatas), for an index that follows the store."""
        ids, texts, metas = [], [], []
        for rows in self._file_rows(record, ["documents", "metadatas"]):
            ids += rows["ids"]
            for document, meta in zip(rows["documents"], rows["metadatas"]):
                text, meta = _unpacked(document, meta)
                texts.append(text)
                metas.append(meta)
        return ids, texts, metas

    def file_vectors(self, record: FileRecord):
        """One stored file version's chunks as (id, text, metadata, vector), a page at a time."""
        for rows in self._file_rows(record, ["documents", "metadatas", "embeddings"]):
            for cid, document, meta, vector in zip(rows["ids"], rows["documents"], rows["metadatas"],
                                                   rows["embeddings"]):
                yield cid, *_unpacked(document, meta), vector

    def _file_rows(self, record: FileRecord, include: list[str]):
        """One file version's chunk rows, a page at a time, in the order of their places: found by its key and
        hash, or (a version keeping chunks of versions before it) by their ids."""
        if record.origins is None:
            yield from _pages(self.canon, _version(record.key, record.hash), include)
            return
        ids = record.chunk_ids()
        for first in range(0, len(ids), PAGE):
            wanted = ids[first:first + PAGE]
            rows = _tried_again(self.canon.get, ids=wanted, include=include)
            row_of = {cid: row for row, cid in enumerate(rows["ids"])}
            order = [row_of[cid] for cid in wanted if cid in row_of]
            yield {"ids": [rows["ids"][row] for row in order],
                   **{name: [rows[name][row] for row in order] for name in include}}

    def dense_query(self, query: str, n: int, ids: list[str] | None = None):
        """Nearest chunks to a query by embedding: a list of (id, distance)."""
        if n <= 0:  # an empty collection answers with no rows; counting it first cost a round trip per query
            return []
        return self.nearest(self.embedder.embed_query([query]), n, ids)

    def nearest(self, vector: list, n: int, ids: list[str] | None = None) -> list[tuple[str, float]]:
        """The n chunks (among ``ids``) nearest an embedded query: a list of (id, cosine distance)."""
        rows = _tried_again(self.canon.query, query_embeddings=vector, n_results=n, ids=ids, include=["distances"])
        return list(zip(rows["ids"][0], rows["distances"][0]))

    def vectors(self, ids: list[str]) -> list[tuple[str, list[float]]]:
        """The stored chunks among ``ids`` with their embeddings (a chunk not stored is left out)."""
        rows = _tried_again(self.canon.get, ids=ids, include=["embeddings"])
        return list(zip(rows["ids"], rows["embeddings"]))

    def written_vectors(self, ids: list[str]) -> dict:
        """Those of these chunks' vectors (float32 arrays, by id) that this local store's last writes kept for a
        reader whose loaded vector index is behind them (kb/store/written.py)."""
        return {} if self.chroma_url else written.read(self.kb_dir, ids, model_dim(self.model))

    def embed_passages(self, texts: list[str]):
        """Embed chunk texts with the store's model (done before any write, so a failure writes nothing)."""
        return self.embedder(texts)

    def unsaved_vectors(self) -> int | None:
        """How many canon writes a local store's vector index has not saved yet, from chromadb's own tables
        (None: a Chroma server's): each new process inserts them again (_save_vectors_after_each_write)."""
        if self.chroma_url:
            return None
        db = sqlite3.connect(f"{(self.kb_dir / 'chroma' / 'chroma.sqlite3').resolve().as_uri()}?mode=ro", uri=True)
        try:
            return db.execute(
                "SELECT count(*) FROM embeddings_queue, segments WHERE segments.collection = ?"
                " AND segments.scope = 'VECTOR' AND embeddings_queue.topic LIKE '%/' || segments.collection"
                " AND embeddings_queue.seq_id > coalesce("
                "  (SELECT seq_id FROM max_seq_id WHERE segment_id = segments.id), 0)", (str(self.canon.id),)).fetchone()[0]
        finally:
            db.close()

    def size_bytes(self) -> int | None:
        if self.chroma_url:
            return None
        return sum(p.stat().st_size for p in self.kb_dir.rglob("*") if p.is_file())


def visible(files: dict[str, FileRecord], meta: dict) -> bool:
    """Whether the chunk with this metadata is one of these files' (a published state's) chunks."""
    record = files.get(meta.get("file_key"))
    return record is not None and record.holds(meta.get("file_hash", "")[:HASH_IN_ID], meta.get("chunk_index"))


def _staged_record(meta: dict) -> FileRecord:
    return FileRecord.from_meta({**meta, "kind": meta["file_kind"]})


class Run:
    """One ingest's writes, staged where readers cannot see them until ``publish``."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.id = store, run_id
        self.started_at = time.time()
        self.staged: dict[str, dict] = {}
        self._unwritten: list[tuple[dict, list, list, list, list]] = []  # staged rows and chunks put behind
        self._kept_since = 0.0  # when the first of them was put
        self._begun = False  # the run's row is written
        self._writer: ThreadPoolExecutor | None = None  # writes what was put behind, behind the caller
        self._writing: Future | None = None
        # the chunks' vectors by id, while there are no more than written.KEPT (a Chroma server's readers need none)
        self._vectors: dict | None = None if store.chroma_url else {}

    def _stage(self, meta: dict, ids=(), texts=(), metas=(), embeddings=(), behind: bool = False) -> None:
        """Stage a file's row and chunks: at once, or with ``behind`` kept until STAGE_BATCH_FILES files, a
        page of chunks or STAGE_BATCH_S are, then written in one go in the run's thread."""
        meta = {**meta, "kind": "staged", "run": self.id, "staged_at": time.time()}
        if not self._unwritten:
            self._kept_since = time.monotonic()
        self.staged[meta["key"]] = meta
        self._unwritten.append((meta, list(ids), list(texts), list(metas), list(embeddings)))
        if self._vectors is not None:
            self._vectors.update(zip(ids, embeddings))
            if len(self._vectors) > written.KEPT:
                self._vectors = None
        if not behind:
            self._write_unwritten(behind=False)
        elif (len(self._unwritten) >= STAGE_BATCH_FILES or sum(len(ids) for _, ids, *_ in self._unwritten) >= PAGE
              or time.monotonic() - self._kept_since >= STAGE_BATCH_S):
            self._write_unwritten(behind=True)

    def _write_unwritten(self, behind: bool) -> None:
        """Write what is kept, here or (``behind``) in the run's thread once its write before has landed."""
        self.wait()  # one write at a time, in the order staged
        batch, first = self._unwritten, not self._begun
        self._unwritten = []
        if not batch:
            return
        self._begun = True
        if not behind:
            self._write(batch, first)
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="kb-run-writer")
        self._writing = self._writer.submit(self._write, batch, first)

    def _write(self, batch: list[tuple[dict, list, list, list, list]], first: bool) -> None:
        """The files' staged rows, then their chunks: a crash leaves no chunk the next writer cannot find."""
        store = self.store
        if first:  # the run row goes first, so a crash leaves a run the next writer can find
            store.manifest.upsert(ids=[f"run:{self.id}"], embeddings=[_UNIT], metadatas=[
                {"kind": "run", "run": self.id, "started_at": self.started_at, "committed_at": 0.0}])
        rows = {meta["key"]: meta for meta, *_ in batch}  # a file staged again: its last row, as upserts left it
        store._upsert(store.manifest, [f"staged:{self.id}:{key}" for key in rows], [_UNIT] * len(rows),
                      list(rows.values()))
        chunks = {}  # a chunk staged again: its last version
        for _, ids, texts, metas, embeddings in batch:
            for cid, text, meta, vector in zip(ids, texts, metas, embeddings):
                chunks[cid] = (text, meta, vector)
        if chunks:
            texts, metas, vectors = zip(*chunks.values())
            self._write_chunks(list(chunks), list(texts), list(metas), list(vectors))

    def put(self, record: FileRecord, ids: list[str], texts: list[str], metas: list[dict],
            embeddings: list, behind: bool = False) -> None:
        """Stage one file's new version: its staged row, then all its chunks (invisible until published).

        ``behind``: kept with the next files' and written in one go (a staged row and a file's chunks each
        cost chromadb about 14 ms a write: 31 of the 41 s an ingest of 1,000 one-chunk files took), in a
        thread of the run's own while the caller goes on to parse and embed (at a million chunks, chromadb
        took 11-12 s to write a 10,000-row table packed, the model 5-6 s to embed one; chromadb holds the GIL
        while it writes, so a large ingest's model runs in a process of its own: kb/store/embed_worker.py);
        the run's next write, ``wait`` and ``publish`` write what is kept and wait for it, raising what the
        write raised.
        """
        self._stage({**record.to_meta(), "file_kind": record.kind, "removed": False},
                    ids, texts, metas, embeddings, behind)

    def _write_chunks(self, ids: list[str], texts: list[str], metas: list[dict], embeddings: list) -> None:
        self.store._upsert(self.store.canon, ids, embeddings, [_packed(text, meta) for text, meta in zip(texts, metas)])

    def wait(self) -> None:
        """Let what is written behind land, raising what its write raised."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, failed, *_) -> None:
        """Nothing is left writing behind when the run's block ends, even one that failed: a writer's lock is
        let go after it, and another writer would clean up this run's chunks while they were still written."""
        try:
            if failed is None:
                self._write_unwritten(behind=False)
            elif self._writing is not None:
                futures_wait([self._writing])  # the error that ended the block is the one to report
        finally:
            if self._writer is not None:
                self._writer.shutdown()

    def files(self) -> dict[str, FileRecord]:
        """The files as they will be once this run is published: the published ones and what it staged."""
        view = self.store.files()
        for key, meta in self.staged.items():
            if meta["removed"]:
                view.pop(key, None)
            else:
                view[key] = _staged_record(meta)
        return view

    def reuse(self, key: str, digest: str) -> FileRecord | None:
        """Stage a file version that an interrupted run staged whole, without parsing or embedding it
        again (a rerun after a crash picks up where it stopped); None when there is none."""
        store = self.store
        rows = store.manifest.get(where={"$and": [{"kind": "staged"}, {"key": key}, {"hash": digest}]},
                                  include=["metadatas"])
        for meta in (meta for meta in rows["metadatas"] if meta["run"] != self.id):
            record = _staged_record(meta)
            if sum(len(rows["ids"]) for rows in store._file_rows(record, [])) == record.chunks:
                self._stage({k: v for k, v in meta.items() if k not in ("kind", "run", "staged_at")}, behind=True)
                return record
        return None

    def remove(self, key: str) -> None:
        """Stage forgetting one file: it stays visible until the run is published."""
        self._stage({"key": key, "removed": True})

    def publish(self) -> None:
        """Make everything staged visible at once: commit, move the generation, then tidy up."""
        self._write_unwritten(behind=False)
        if not self.staged:
            return
        store = self.store
        if self._vectors:  # before the commit: a server behind it reads them at once
            written.record(store.kb_dir, self._vectors)
        store.manifest.upsert(ids=[f"run:{self.id}"], embeddings=[_UNIT], metadatas=[
            {"kind": "run", "run": self.id, "started_at": self.started_at, "committed_at": time.time()}])
        store._bump_generation(list(self.staged.values()))  # after the commit: a reader caching the old generation reloads
        store._finish(self.id, list(self.staged.values()))
        store._bump_generation([])  # after the cleanup: a reader whose pages it shifted reads again
