"""Rebuild a local store's vector index without the vectors its writes replaced (`kb compact`).

chromadb's HNSW index only marks a deleted vector as deleted (chroma-core/chroma#2594): every edit of a file
leaves the vectors of the chunks it replaced in the index, and every process that loads the index holds them in memory,
2.2 KB each with the 512-float default model. The million-chunk bench store, edited by a week of runs, held
185,100 of them beside its 1,011,402 live vectors: 405 MB more in every server.

Compacting reads the live vectors straight from the index's saved file (its header says where each element's
vector and label lie), builds a new index of them with chromadb's own hnswlib (the chroma-hnswlib package) under
the same labels, so chromadb's id maps (index_metadata.pickle) stay valid as they are, and swaps the new
directory for the old in one atomic rename (Linux's renameat2 with RENAME_EXCHANGE): a reader always finds a
whole index, the old one or the new. It holds the store's write lock throughout. A compaction killed part way
leaves the store as it was, or already swapped; either way the next one clears what is left over.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import shutil
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kb.errors import KBError
from kb.store.lock import write_lock
from kb.store.store import CANON, SPACE

# hnswlib's saved header as chroma's fork writes it: a format version, then the index's sizes and parameters
HEADER = struct.Struct("<i 6Q i I 3Q d Q")
HEADER_VERSION = 1
BATCH = 20_000  # elements read from the saved index per step (44 MB with 512 floats)
# `kb ingest` suggests `kb compact` once the index holds at least this many replaced vectors, and this share of
# the live ones: below, the memory they cost (2.2 KB each with the default model) is not worth a rebuild, which
# takes minutes at a million chunks: there 5% is 110 MB in every server. A server's peak crossed 4 GB from 2.7% to 5%
# replaced, which moved this share from 10% to 4% and then 2%; most of that was heap glibc kept (kb/memory.py), and
# since, the peaks were 3,641-3,720 MB at 5.7-7.9% (docs/scale.md).
SUGGEST_AT_LEAST = 20_000
SUGGEST_AT_SHARE = 0.05
STAGING = ".compacting"  # the new index is built beside the old, in <segment>.compacting
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class SavedIndex:
    """Where a saved HNSW index keeps each element, and the parameters to build its like."""

    path: Path
    count: int  # elements, deleted ones included
    element_bytes: int
    label_offset: int
    data_offset: int
    m: int
    ef_construction: int

    @property
    def dim(self) -> int:
        return (self.label_offset - self.data_offset) // 4

    @classmethod
    def read(cls, path: Path) -> "SavedIndex":
        """The header of the index saved in ``path``.

        Raises:
            KBError: the header is not one this code knows how to read.
        """
        header = (path / "header.bin").read_bytes()
        if len(header) != HEADER.size or HEADER.unpack_from(header)[0] != HEADER_VERSION:
            raise KBError(f"{path / 'header.bin'}: not a vector index this version of kb can compact")
        (_, _, _, count, element_bytes, label_offset, data_offset, _, _, _, _, m, _,
         ef_construction) = HEADER.unpack_from(header)
        return cls(path, count, element_bytes, label_offset, data_offset, m, ef_construction)


@dataclass(frozen=True)
class Compaction:
    """Vectors in the index before and after compacting it."""

    before: int
    after: int

    def to_json(self) -> dict:
        return {"vectors_before": self.before, "vectors_after": self.after, "dropped": self.before - self.after}


def vector_index_dir(kb_dir: Path) -> Path | None:
    """The directory of the canon's saved vector index, or None before anything was written."""
    database = Path(kb_dir) / "chroma" / "chroma.sqlite3"
    if not database.exists():
        return None
    db = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT segments.id FROM segments JOIN collections ON segments.collection = collections.id"
                         " WHERE collections.name = ? AND segments.scope = 'VECTOR'", (CANON,)).fetchone()
    finally:
        db.close()
    path = database.parent / row[0] if row else None
    return path if path is not None and (path / "header.bin").exists() else None


def saved_vectors(kb_dir: Path) -> int | None:
    """How many vectors the canon's saved index holds, replaced ones included (None: none saved yet)."""
    path = vector_index_dir(kb_dir)
    return SavedIndex.read(path).count if path is not None else None


def replaced_vectors(store, live: int) -> int | None:
    """Vectors the canon's saved index still holds for chunks gone, beside its ``live`` ones (its count): None for
    a Chroma server's, or before any was saved."""
    saved = None if store.chroma_url else saved_vectors(store.kb_dir)
    return None if saved is None else max(0, saved - live)


def compact_suggestion(kb_dir: Path, replaced: int | None, live: int) -> list[dict]:
    """A warning suggesting `kb compact` when the ``replaced`` vectors (`replaced_vectors`) beside the ``live`` ones
    cost a process loading the index much memory."""
    if not replaced or replaced < max(SUGGEST_AT_LEAST, SUGGEST_AT_SHARE * live):
        return []
    return [{"path": str(kb_dir), "warning": f"the vector index holds {replaced:,} vectors of replaced chunks "
             f"beside {live:,} live ones, kept in memory by every process that loads it; `kb compact` drops them"}]


def compact(kb_dir: Path, on_progress: Callable[[int, int], None] | None = None) -> Compaction:
    """Rebuild the canon's vector index with only its live vectors; ``on_progress(read, total)`` as it reads.

    Raises:
        StoreLocked: another process is writing to the store.
        KBError: the store has no index this code can compact, or it cannot be written.
    """
    with write_lock(kb_dir):
        path = vector_index_dir(kb_dir)
        if path is None:
            return Compaction(0, 0)
        staging = path.with_name(path.name + STAGING)
        shutil.rmtree(staging, ignore_errors=True)  # a half-built index, or the old one a swap left behind
        saved = SavedIndex.read(path)
        try:
            with open(path / "index_metadata.pickle", "rb") as ids:
                live = np.sort(np.fromiter(pickle.load(ids)["id_to_label"].values(), dtype=np.uint64))
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as exc:
            raise KBError(f"{path / 'index_metadata.pickle'}: cannot read chromadb's id maps "
                          f"({type(exc).__name__}: {exc}); the store is unchanged") from None
        if saved.count == len(live):
            return Compaction(saved.count, saved.count)
        staging.mkdir()
        try:
            _rebuild(saved, live, staging, on_progress)
            shutil.copy2(path / "index_metadata.pickle", staging)
            _sync(staging)
            _exchange(staging, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Compaction(saved.count, len(live))


def _rebuild(saved: SavedIndex, live: np.ndarray, staging: Path, on_progress) -> None:
    """Save in ``staging`` an index of the elements of ``saved`` whose labels are ``live``, built alike."""
    import hnswlib

    index = hnswlib.Index(space=SPACE, dim=saved.dim)
    # room for the live vectors alone: this hnswlib writes its file at full size, and chromadb grows it when it adds
    index.init_index(max_elements=max(len(live), 1), ef_construction=saved.ef_construction, M=saved.m,
                     is_persistent_index=True, persistence_location=str(staging))
    index.set_num_threads(os.cpu_count() or 1)
    added = 0
    with open(saved.path / "data_level0.bin", "rb") as data:
        for start in range(0, saved.count, BATCH):
            rows = np.frombuffer(data.read(min(BATCH, saved.count - start) * saved.element_bytes), dtype=np.uint8)
            rows = rows.reshape(-1, saved.element_bytes)
            labels = rows[:, saved.label_offset:saved.label_offset + 8].copy().view(np.uint64).ravel()
            kept = np.isin(labels, live, assume_unique=True)
            if kept.any():
                vectors = rows[kept, saved.data_offset:saved.label_offset].view(np.float32)
                index.add_items(vectors, labels[kept])
                added += int(kept.sum())
            if on_progress:
                on_progress(start + len(rows), saved.count)
    if added != len(live):
        raise KBError(f"{saved.path}: the saved index holds {added:,} of the {len(live):,} live vectors; "
                      "left as it was")
    index.persist_dirty()
    index.close_file_handles()


def _sync(directory: Path) -> None:
    """Flush the new index's files to disk before the swap makes it the store's."""
    for file in directory.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step, so a reader finds one whole index or the other, never none.

    Raises:
        KBError: the system cannot swap them (renameat2 is Linux's); nothing was changed.
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise KBError(f"{b}: kb compact swaps the index with Linux's renameat2, which this system lacks; "
                      "the store is unchanged")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise KBError(f"{b}: cannot swap in the compacted index ({os.strerror(code)}); the store is unchanged"
                      + ("; kb compact needs Linux's renameat2" if code in (errno.ENOSYS, errno.EINVAL) else ""))
