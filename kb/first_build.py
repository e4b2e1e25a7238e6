"""A local store's BM25 postings built while the ingest that needs them writes its chunks, not after it.

With no index on disk, the first reader builds one from the whole store: it
reads every chunk back from chromadb and tokenizes it. For a studio's first
ingest of its localization that came after the ingest: at a million loc rows
the publish and that build were 203 of 1,951 s, while the ingest's rows were
paced by chromadb's own write and a core was spare. So while an ingest stages
each file, this builds the file's postings from the chunks in hand, in an index
file of its own beside the store's (kb/postings.py's build: the parse worker
tokenizes, a thread writes). Once the run is published the file becomes the
store's index, unless a reader has made one meanwhile; either way the usual
update then brings the index in line with the store, so a file this build did
not see (one an interrupted run staged, an edit that kept chunks of its version
before) is read from the store as before, and nothing here decides what the
index holds.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path

from kb.postings import Postings, version_of
from kb.postings_batch import FileChunks
from kb.sqlite_files import remove_database
from kb.store import FileRecord

log = logging.getLogger(__name__)


class FirstBuild:
    """The postings of the files an ingest stages, built in a thread beside it into ``<index>.building``."""

    def __init__(self, index: Path):
        self.index = index
        self.path = index.with_name(index.name + ".building")
        remove_database(self.path)  # what an interrupted ingest left
        self._postings = Postings(self.path)
        self._files: queue.SimpleQueue[FileChunks | None] = queue.SimpleQueue()
        self._failure: Exception | None = None
        self._closed = False
        self._ended = False  # the ingest has handed on its last file
        self._thread = threading.Thread(target=self._build, name="kb-first-build", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        try:
            self._postings.add(self._staged())
        except Exception as exc:  # the index is then built after the ingest, as without this
            self._failure = exc
            while not self._ended and self._files.get() is not None:  # let go of what the ingest hands on
                pass

    def _staged(self):
        while (chunks := self._files.get()) is not None:
            yield chunks
        self._ended = True

    def __enter__(self) -> "FirstBuild":
        return self

    def __exit__(self, failed, *_) -> None:
        """Finished once the ingest's run is published; discarded if the ingest failed."""
        if failed is None:
            self.finish()
        else:
            self.discard()

    def add(self, record: FileRecord, ids: list[str], texts: list[str], metas: list[dict]) -> None:
        """One staged file version with all its chunks, in their places."""
        self._files.put(FileChunks(record.key, version_of(record), ids, texts, metas))

    def finish(self) -> None:
        """Wait for the build, then make it the store's index, unless there is one by now."""
        self._files.put(None)
        self._thread.join()
        try:
            if self._failure is not None:
                log.warning("building the BM25 index after the ingest: building it beside failed (%s: %s)",
                            type(self._failure).__name__, self._failure)
            elif self._postings.path == self.path and not self.index.exists():
                self._close()
                os.link(self.path, self.index)  # fails if a reader has just made one
        except OSError as exc:
            log.warning("building the BM25 index after the ingest: %s", exc)
        finally:
            self.discard()

    def discard(self) -> None:
        """Stop and delete the build (the ingest failed, or it is in place)."""
        if self._thread.is_alive():
            self._files.put(None)
            self._thread.join()
        self._close()
        remove_database(self.path)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._postings.close()
