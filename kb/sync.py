"""Bring the store in line with the files on disk: add, replace, keep, remove.

Incremental by content hash: unchanged files are not read past their hash, a
changed file's chunks are embedded first and staged, files gone from a folder
that was ingested before are removed. The whole ingest is one store run
(kb/store/store.py): readers see the canon as it was until the run publishes,
then every change at once. One bad file is reported and skipped; what it had
stored before stays. A file with no text to index
(a command-only script) is listed in `skipped` and holds no chunks.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

from ingest.cards import Card
from ingest.discover import discover, file_hash, file_key
from ingest.errors import IngestError, NothingToIndex
from ingest.load import load_card, load_chunks
from ingest.types import chunk_id
from kb.config import Settings
from kb.limits import limit_warnings, non_numbers
from kb.parse_worker import run_bounded, start_worker
from kb.store import FileRecord, Run, Store, write_lock
from kb.store.compact import compact_suggestion, replaced_vectors
from kb.store.embed_worker import ApartEmbedder

MAX_ORIGINS = 64  # runs of places an edited file's version keeps from versions before it, at most


@dataclass
class IngestReport:
    """What one ingest did, in the shape `kb ingest --json` prints."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    chunks: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def passage_text(text: str, meta: dict) -> str:
    """What gets embedded for a chunk: its heading path, then its text."""
    title = meta.get("title")
    return f"{title}\n{text}" if title else text


def _read(path: Path, limit_mb: int, source: str) -> bytes:
    """The file's bytes; gone since discovery or unreadable is an IngestError naming it."""
    try:
        size = path.stat().st_size
        if size > limit_mb * 1024 * 1024:
            raise IngestError(f"file is {size / 1048576:.1f} MB, over the {limit_mb} MB limit "
                              "(set KB_MAX_FILE_MB to raise it)", source)
        return path.read_bytes()
    except OSError as exc:
        raise IngestError(f"cannot read file: {exc.strerror}", source) from None


def _store_file(store: Store, run: Run, found, data: bytes, digest: str, settings: Settings,
                earlier: FileRecord | None, embed: ApartEmbedder) -> int:
    """Parse and chunk one file in the bounded worker (kb/parse_worker.py), embed it and stage it in the run
    (or restage the version an interrupted run staged whole); return its chunk count. ``earlier``: the
    version stored now, whose vectors the passages it shares keep."""
    key = file_key(found.path)
    record = FileRecord(key=key, path=str(found.path), source=found.source, root=str(found.root),
                        hash=digest, kind=found.kind, chunks=0, ingested_at=time.time())
    if found.kind == "card":
        card = run_bounded(load_card, (data, found.source), found.source,
                           settings.parse_timeout_s, settings.parse_memory_mb)
        _refuse_a_second_card_named(card, run, record.path)
        record.card = card.to_json()
        run.put(record, [], [], [], [])
        return 0
    reused = run.reuse(key, digest)
    if reused is not None:
        return reused.chunks
    chunks = run_bounded(load_chunks, (data, found.source, key, digest, settings.chunk_tokens,
                                       settings.chunk_overlap, settings.cjk_chunk_tokens, found.path,
                                       settings.max_file_chunks),
                         found.source, settings.parse_timeout_s, settings.parse_memory_mb)
    for chunk in chunks:
        chunk.meta["ingested_at"] = record.ingested_at
    record.non_numbers = non_numbers(c.meta for c in chunks)
    record.chunks = len(chunks)
    stored = list(store.file_vectors(earlier)) if earlier is not None and earlier.kind == "canon" else []
    written = _written(record, chunks, stored)
    embeddings = _vectors([passage_text(c.text, c.meta) for c in written], stored, embed)
    run.put(record, [c.id for c in written], [c.text for c in written], [c.meta for c in written], embeddings,
            behind=True)
    return record.chunks


def _written(record: FileRecord, chunks: list, stored: list) -> list:
    """The chunks to write for this new version: those the stored version does not hold, passage and metadata
    alike, in the same order among the others (the rest are kept, as ``record.origins`` says), or all of them
    when that would take more than MAX_ORIGINS runs.

    A loc table is one file: one row edited in 10,000 wrote every row again, 34-40 s at a million chunks, and left
    chromadb as many replaced vectors; a row inserted into a table sorted by key moved every row after it.
    """
    # a stored chunk's source: the version that wrote it and its place in that one (ids not of that form: none)
    sources = [(meta["file_hash"], meta["chunk_index"])
               if cid == chunk_id(record.key, meta.get("file_hash", ""), meta.get("chunk_index", -1)) else None
               for cid, _, meta, _ in stored]
    old = [_lasting(text, meta) if source else object() for (_, text, meta, _), source in zip(stored, sources)]
    new = [_lasting(chunk.text, chunk.meta) for chunk in chunks]
    kept = {}  # a new place -> the source of the stored chunk kept there
    for first_old, first_new, size in SequenceMatcher(None, old, new).get_matching_blocks():
        kept.update((first_new + k, sources[first_old + k]) for k in range(size))
    runs, written = [], []
    for place, chunk in enumerate(chunks):
        if place not in kept:
            written.append(chunk)
        digest, first = kept.get(place, (record.hash, place))
        if runs and runs[-1][0] == digest and runs[-1][2] + runs[-1][1] == first:
            runs[-1][1] += 1
        else:
            runs.append([digest, 1, first])
    if len(runs) > MAX_ORIGINS:
        return chunks
    # None when every place is this version's own: a file edited back to a version whose chunks it still holds
    # keeps them under the ids they had then. (Were that version chunked otherwise then, by other settings or
    # code, a place it wrote differently would be written again under an id the published version holds: seen
    # before the publish, and kept by a rollback. Not guarded against.)
    record.origins = None if runs == [[record.hash, len(chunks), 0]] else runs
    return written


def _lasting(text: str, meta: dict) -> str:
    """A chunk's text and metadata but for what a new version of its file may change in a chunk it keeps: the
    file's hash, the time, the chunk's place."""
    return json.dumps([text, {k: v for k, v in meta.items() if k not in ("file_hash", "ingested_at", "chunk_index")}],
                      ensure_ascii=False, sort_keys=True)


def _vectors(passages: list[str], stored: list, embed: ApartEmbedder) -> list:
    """Each passage's vector: the one the file's stored version holds for the same passage, else embedded now.

    A loc table is one file: one row edited in 200,000 would otherwise embed them all again.
    """
    wanted, vectors = set(passages), {}
    for _, text, meta, vector in stored:
        passage = passage_text(text, meta)
        if passage in wanted:
            vectors[passage] = vector
    missing = [passage for passage in passages if passage not in vectors]
    if missing:
        vectors.update(zip(missing, embed(missing)))
    return [vectors[passage] for passage in passages]


def ingest(paths: list[str], settings: Settings, on_file=None) -> IngestReport:
    """Ingest files and folders incrementally, published as one run; ``on_file(source)`` is told as
    each file is staged (before any of the run is visible).

    Raises:
        KBError: the store cannot be opened or written, or another writer holds it.
    """
    report = IngestReport()
    found, skipped, missing = discover(paths)
    report.skipped = [{"path": p, "reason": why} for p, why in skipped]
    report.failed = [{"path": p, "error": why} for p, why in missing]
    lock = contextlib.nullcontext() if settings.chroma_url else write_lock(settings.kb_dir)
    with lock:
        if found:
            start_worker()  # its imports overlap the store's opening
        # fresh: the vector index this run writes back must hold every earlier writer's vectors
        store = Store(settings.kb_dir, settings.chroma_url, settings.embed_model, create=True, fresh=True)
        store.repair(abandon=False)  # what an interrupted run staged is reused, then cleaned up
        records = store.files()
        with store.begin_run() as run, ApartEmbedder(store) as embed:
            for item in found:
                try:
                    data = _read(item.path, settings.max_file_mb, item.source)
                    digest = file_hash(data)
                    old = records.get(file_key(item.path))
                    if old and old.hash == digest:
                        report.unchanged.append(item.source)
                    else:
                        _store_file(store, run, item, data, digest, settings, old, embed)
                        (report.updated if old else report.added).append(item.source)
                except NothingToIndex as exc:  # a text-free file is a note, not a failure
                    if old:
                        run.remove(old.key)
                    report.skipped.append({"path": item.source, "reason": exc.reason})
                except IngestError as exc:
                    report.failed.append({"path": item.source, "error": exc.reason})
                if on_file:
                    on_file(item.source)
            report.removed = _remove_vanished(run, records, paths, {str(f.path) for f in found})
            run.publish()
        report.warnings = stored_limit_warnings(store.files().values(), {str(f.path) for f in found})
        store.repair()
        report.chunks = store.count()
        report.warnings += compact_suggestion(store.kb_dir, replaced_vectors(store, report.chunks), report.chunks)
    return report


def stored_limit_warnings(records, paths: set[str] | None = None) -> list[dict]:
    """Warnings for the stored files (those at ``paths``, else all) with values the cards' numeric
    limits cannot compare, checked against the cards stored now."""
    records = list(records)
    cards = [r.card["knows"] for r in records if r.kind == "card" and r.card]
    return limit_warnings(((r.source, r.non_numbers) for r in records
                           if r.kind == "canon" and (paths is None or r.path in paths)), cards)


def _refuse_a_second_card_named(card: Card, run: Run, path: str) -> None:
    """Raises IngestError when another card still on disk (or staged in this run) already has this card's name."""
    for other in run.files().values():
        if (other.kind == "card" and other.card and other.path != path and not _gone(Path(other.path))
                and other.card["name"].casefold() == card.name.casefold()):
            raise IngestError(f"NPC card field 'name': '{card.name}' is already the name of the card "
                              f"in {other.source}; give each NPC its own name", card.source)


def _remove_vanished(run: Run, records: dict[str, FileRecord], paths: list[str],
                     seen: set[str]) -> list[str]:
    """Drop files under one of these folders (however they were ingested) that are no longer there."""
    roots = [Path(p).resolve() for p in paths if Path(p).is_dir()]
    removed = []
    for record in records.values():
        path = Path(record.path)
        if (any(path.is_relative_to(root) for root in roots) and record.path not in seen
                and _gone(path)):
            run.remove(record.key)
            removed.append(record.source)
    return removed


def _gone(path: Path) -> bool:
    """The file is certainly not there; one under a folder that cannot be read is kept."""
    try:
        path.stat()
        return False
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:  # e.g. its folder cannot be read
        return False


def forget(paths: list[str], settings: Settings) -> list[str]:
    """Remove files (or everything under folders) from the store on request."""
    targets = [str(Path(p).resolve()) for p in paths]
    Store(settings.kb_dir, settings.chroma_url)  # before the lock, which would create a mistyped --kb
    lock = contextlib.nullcontext() if settings.chroma_url else write_lock(settings.kb_dir)
    with lock:
        store = Store(settings.kb_dir, settings.chroma_url, create=True, fresh=True)  # a writer (it exists)
        run = store.begin_run()
        removed = []
        for record in store.files().values():
            if any(record.path == t or record.path.startswith(t.rstrip("/") + "/") for t in targets):
                run.remove(record.key)
                removed.append(record.source)
        run.publish()
    return removed
