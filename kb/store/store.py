"""The store over chromadb: chunks, the ingest manifest, the model record.

Everything the knowledge base keeps lives in chromadb collections, so the same
code serves a local directory (PersistentClient) and a shared Chroma server
(HttpClient):

- ``canon``: one row per chunk; the collection's metadata records the
  embedding model and its dimension.
- ``manifest``: one row per ingested file (``file:<key>``) with its hash and
  chunk count, one per NPC card, ``pending:<key>`` journal rows for a file
  being replaced, and ``state`` with a generation counter readers cache by.

A file's chunk ids embed its content hash. Replacing a file writes the new
chunks, then flips its manifest row (the commit), then deletes the old ones; a
journal row makes an interrupted replace repairable, and readers only see
chunks whose hash matches the manifest.

A local store has one writer at a time (kb/store/lock.py). A Chroma server
has no such lock, since any number of machines may write at once; there only
abandoned journal rows are repaired, and writers should not replace the same
file at the same time (run one ingest job per folder, e.g. from CI).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import chromadb
from chromadb.config import Settings as ChromaSettings

from kb.errors import KBError, ModelMismatch, Unavailable
from kb.store.embed import DEFAULT_MODEL, LoreEmbedding, model_dim

CANON = "canon"
MANIFEST = "manifest"
_UNIT = [1.0]  # manifest rows need a vector; they are only ever fetched by id
STALE_JOURNAL_SECONDS = 900  # on a shared server, a replace journalled longer ago was abandoned


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

    def to_meta(self) -> dict:
        meta = {k: v for k, v in vars(self).items() if k not in ("card", "non_numbers")}
        if self.card is not None:
            meta["card"] = json.dumps(self.card, ensure_ascii=False)
        if self.non_numbers:
            meta["non_numbers"] = json.dumps(self.non_numbers, ensure_ascii=False)
        return meta

    @classmethod
    def from_meta(cls, meta: dict) -> "FileRecord":
        fields = {k: meta[k] for k in ("key", "path", "source", "root", "hash", "kind",
                                      "chunks", "ingested_at")}
        card = json.loads(meta["card"]) if meta.get("card") else None
        return cls(**fields, card=card, non_numbers=json.loads(meta.get("non_numbers") or "{}"))


def _client(kb_dir: Path, chroma_url: str | None):
    settings = ChromaSettings(anonymized_telemetry=False)
    if chroma_url:
        from urllib.parse import urlparse

        url = urlparse(chroma_url)
        try:
            return chromadb.HttpClient(host=url.hostname, port=url.port or 8000,
                                       ssl=url.scheme == "https", settings=settings)
        except Exception as exc:
            raise Unavailable(f"cannot reach the Chroma server at {chroma_url}: {exc}") from None
    try:
        kb_dir.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(kb_dir / "chroma"), settings=settings)
    except Exception as exc:
        raise KBError(f"cannot open the knowledge base at {kb_dir}: {exc}") from None


class Store:
    """A knowledge base: chunks with embeddings, plus the manifest that makes ingest incremental."""

    def __init__(self, kb_dir: Path, chroma_url: str | None = None, model: str | None = None,
                 create: bool = False, ef_search: int = 100):
        """Open (or, with ``create``, make) the store.

        Raises:
            Unavailable: no store there and ``create`` is false, or it cannot be reached.
            KBError: it cannot be opened or written.
            ModelMismatch: the store was built with a different embedding model.
        """
        self.kb_dir = Path(kb_dir)
        self.chroma_url = chroma_url
        if not create and not chroma_url and not (self.kb_dir / "chroma" / "chroma.sqlite3").exists():
            # checked before chromadb runs, which would leave an empty store at a mistyped --kb
            raise Unavailable(f"no knowledge base at {self.kb_dir}; run `kb ingest PATH` first")
        self.client = _client(self.kb_dir, chroma_url)
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
                configuration={"hnsw": {"space": "cosine", "ef_search": ef_search}},
            )
            self.manifest = self.client.get_or_create_collection(
                MANIFEST, embedding_function=None, configuration={"hnsw": {"space": "l2"}})
        except KBError:
            raise
        except Exception as exc:
            raise KBError(f"cannot write to the knowledge base at {self.kb_dir}: {exc}") from None

    # -- manifest ---------------------------------------------------------

    def files(self) -> dict[str, FileRecord]:
        """Every ingested file and card, by key."""
        rows = self.manifest.get(where={"kind": {"$in": ["canon", "card"]}}, include=["metadatas"])
        return {m["key"]: FileRecord.from_meta(m) for m in rows["metadatas"]}

    def generation(self) -> int:
        """A counter that changes whenever the visible canon changes."""
        rows = self.manifest.get(ids=["state"], include=["metadatas"])
        return int(rows["metadatas"][0]["generation"]) if rows["ids"] else 0

    def _bump_generation(self) -> None:
        # A random step, not +1: writers sharing a Chroma server hold no lock between them, and two
        # that read the same generation must not publish the same next one (readers would miss one).
        step = random.randint(1, 1 << 20)
        meta = {"kind": "state", "generation": self.generation() + step, "updated_at": time.time()}
        self.manifest.upsert(ids=["state"], embeddings=[_UNIT], metadatas=[meta])

    def last_ingest(self) -> float | None:
        rows = self.manifest.get(ids=["state"], include=["metadatas"])
        return rows["metadatas"][0]["updated_at"] if rows["ids"] else None

    def status(self) -> dict:
        """Files, cards, chunks, model, size and last ingest, as `kb status --json` and GET /status show them."""
        records = self.files().values()
        last = self.last_ingest()
        return {
            "kb": self.chroma_url or str(self.kb_dir),
            "files": sum(1 for r in records if r.kind == "canon"),
            "cards": sum(1 for r in records if r.kind == "card"),
            "chunks": self.count(),
            "model": self.model,
            "store_bytes": self.size_bytes(),
            "last_ingest": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(last)) if last else None,
        }

    # -- writes -----------------------------------------------------------

    def _journal(self, key: str) -> None:
        self.manifest.upsert(ids=[f"pending:{key}"], embeddings=[_UNIT],
                             metadatas=[{"kind": "pending", "key": key, "started_at": time.time()}])

    def _drop_stale_chunks(self, key: str, keep_hash: str | None) -> None:
        where = {"file_key": key} if keep_hash is None else {
            "$and": [{"file_key": key}, {"file_hash": {"$ne": keep_hash}}]}
        self.canon.delete(where=where)
        self.manifest.delete(ids=[f"pending:{key}"])

    def put_file(self, record: FileRecord, ids: list[str], texts: list[str], metas: list[dict],
                 embeddings: list) -> None:
        """Replace one file's chunks all at once: new rows, then the manifest flip, then cleanup."""
        self._journal(record.key)
        batch = self.client.get_max_batch_size()
        for start in range(0, len(ids), batch):
            end = start + batch
            self.canon.upsert(ids=ids[start:end], documents=texts[start:end],
                              metadatas=metas[start:end], embeddings=embeddings[start:end])
        self.manifest.upsert(ids=[f"file:{record.key}"], embeddings=[_UNIT],
                             metadatas=[record.to_meta()])
        self._bump_generation()  # before the cleanup: a cache of the old generation is stale from here
        self._drop_stale_chunks(record.key, record.hash)

    def remove_file(self, key: str) -> None:
        """Forget one file: the manifest row first (readers stop seeing it), then its chunks."""
        self._journal(key)
        self.manifest.delete(ids=[f"file:{key}"])
        self._bump_generation()
        self._drop_stale_chunks(key, None)

    def repair(self, stale_after: float | None = None) -> int:
        """Finish replacements an interrupted ingest left half done; return how many.

        A local store's write lock guarantees no other writer is mid-replace. A Chroma server has
        no such lock, so there a journal row is only taken as abandoned once it is
        ``stale_after`` seconds old (default STALE_JOURNAL_SECONDS): repairing another machine's
        replace in progress would delete its new chunks just before its manifest flip.
        """
        if stale_after is None:
            stale_after = STALE_JOURNAL_SECONDS if self.chroma_url else 0.0
        pending = self.manifest.get(where={"kind": "pending"}, include=["metadatas"])
        files = self.files()
        repaired = 0
        for meta in pending["metadatas"]:
            if time.time() - meta.get("started_at", 0.0) < stale_after:
                continue
            record = files.get(meta["key"])
            self._drop_stale_chunks(meta["key"], record.hash if record else None)
            repaired += 1
        if repaired:  # a crash between a manifest flip and its generation bump left caches stale
            self._bump_generation()
        return repaired

    # -- reads ------------------------------------------------------------

    def count(self) -> int:
        return self.canon.count()

    def all_chunks(self, batch: int = 5000):
        """Every visible chunk as (ids, texts, metadatas); stale rows of a half-done write are left out."""
        live = {key: rec.hash for key, rec in self.files().items()}
        ids, texts, metas = [], [], []
        for cid, text, meta in self.scan_chunks(batch):
            if live.get(meta.get("file_key")) == meta.get("file_hash"):
                ids.append(cid)
                texts.append(text)
                metas.append(meta)
        return ids, texts, metas

    def scan_chunks(self, batch: int = 5000):
        """Every chunk row, visible or not, as (id, text, metadata), a page at a time."""
        total = self.canon.count()
        for offset in range(0, total, batch):
            rows = self.canon.get(limit=batch, offset=offset, include=["documents", "metadatas"])
            yield from zip(rows["ids"], rows["documents"], rows["metadatas"])

    def file_chunks(self, key: str, file_hash: str) -> tuple[list[str], list[str], list[dict]]:
        """One file version's chunks as (ids, texts, metadatas), for an index that follows the store."""
        rows = self.canon.get(where={"$and": [{"file_key": key}, {"file_hash": file_hash}]},
                              include=["documents", "metadatas"])
        return rows["ids"], rows["documents"], rows["metadatas"]

    def dense_query(self, query: str, n: int, ids: list[str] | None = None):
        """Nearest chunks to a query by embedding: a list of (id, distance)."""
        if n <= 0:  # an empty collection answers with no rows; counting it first cost a round trip per query
            return []
        vector = self.embedder.embed_query([query])
        rows = self.canon.query(query_embeddings=vector, n_results=n, ids=ids, include=["distances"])
        return list(zip(rows["ids"][0], rows["distances"][0]))

    def embed_passages(self, texts: list[str]):
        """Embed chunk texts with the store's model (done before any write, so a failure writes nothing)."""
        return self.embedder(texts)

    def size_bytes(self) -> int | None:
        if self.chroma_url:
            return None
        return sum(p.stat().st_size for p in self.kb_dir.rglob("*") if p.is_file())
