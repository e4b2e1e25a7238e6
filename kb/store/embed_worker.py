"""A large ingest's passages embedded in a process of their own, so the model runs while this one writes.

chromadb holds the GIL while it writes (a thread counting ran 8.0 million times a
second alone, 20,000 during an upsert: docs/scale.md), so in one process the
model's work and the run's writes take turns. Once an ingest has APART_PASSAGES
passages to embed, it starts this worker (a fresh Python: kb/worker_process.py)
and sends it each file's passages while the run's thread writes the files
before. If the worker cannot start or dies, the passages are embedded here, as
a small ingest's are: the same model and code, so the same vectors.
"""

from __future__ import annotations

import logging
import signal
import sys

import numpy as np

from kb.errors import KBError
from kb.worker_process import WorkerProcess, connections

# An ingest embeds here until it has this many passages: a worker's start (its imports and the model,
# 1.1 to 1.6 s to its first vectors) is paid back by a table of a few thousand rows.
APART_PASSAGES = 5_000

logger = logging.getLogger(__name__)


class ApartEmbedder:
    """One ingest's passages: embedded here until there are APART_PASSAGES of them, then in the worker."""

    def __init__(self, store):
        self.store = store
        self.passages = 0  # asked for so far
        self._worker: WorkerProcess | None = None
        self._broken = False  # the worker failed once: the rest are embedded here

    def __call__(self, texts: list[str]) -> list:
        """The passages' vectors, in order."""
        self.passages += len(texts)
        if self.passages >= APART_PASSAGES and not self._broken:
            try:
                return self._apart(texts)
            except KBError as exc:
                logger.warning("%s; embedding here instead", exc)
                self._broken = True
                self.close()
        return self.store.embed_passages(texts)

    def _apart(self, texts: list[str]) -> list:
        """Raises KBError: the worker did not start, died, or failed."""
        if self._worker is None:
            self._worker = WorkerProcess("kb.store.embed_worker", "embedding worker")
        worker = self._worker
        worker.wait_until_ready()
        try:
            worker.jobs.send((self.store.model, texts))
            status, value = worker.results.recv()
        except (EOFError, BrokenPipeError):
            raise KBError(f"the embedding worker died (exit status {worker.exit_status()})") from None
        except BaseException:  # interrupted mid-call: its answer would reach the next call
            self.close()
            raise
        if status == "error":
            raise KBError(f"the embedding worker failed: {value}")
        return list(value)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def __enter__(self) -> ApartEmbedder:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def _serve(jobs, results) -> None:
    """The worker's loop: ``(model, passages)`` in, ``("ok", vectors)`` or ``("error", why)`` out."""
    from kb.store.embed import LoreEmbedding

    results.send("ready")
    while True:
        try:
            model, texts = jobs.recv()
        except EOFError:
            return
        try:
            outcome = ("ok", np.asarray(LoreEmbedding(model)(texts), dtype=np.float32))
        except Exception as exc:  # an unknown model, unreadable weights: told to the caller, who embeds itself
            outcome = ("error", f"{type(exc).__name__}: {exc}")
        results.send(outcome)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; the worker ends with its pipe
    try:
        _serve(*connections(sys.argv))
    except BrokenPipeError:  # the caller stopped while this worker started or embedded
        pass
