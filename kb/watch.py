"""`kb ingest --watch`: keep the store in line with canon folders while writers edit them.

Each batch of file changes (grouped by watchfiles until the folders have been
quiet for the debounce) re-runs the ordinary incremental ingest of the watched
paths: only changed files are re-embedded, vanished ones are removed, and a
file's source stays relative to the folder that was named. The store's own
directory and hidden paths (which ingest skips anyway) never trigger a batch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import watchfiles

from kb.api import KnowledgeBase
from kb.errors import KBError
from kb.sync import IngestReport

RETRY_MS = 1000  # a quiet watcher wakes this often, to retry a failed ingest


@dataclass
class Batch:
    """One re-ingest: what it did (or the error that stopped it), when it ended and how long it took."""

    report: IngestReport | None
    seconds: float
    finished_at: float
    error: str | None = None

    def summary(self) -> str:
        """One line for the terminal: the time, then counts, or the error."""
        when = time.strftime("%H:%M:%S", time.localtime(self.finished_at))
        if self.report is None:
            return f"{when}  error: {self.error}"
        r = self.report
        return (f"{when}  added {len(r.added)}, updated {len(r.updated)}, removed {len(r.removed)}, "
                f"failed {len(r.failed)}  ({self.seconds:.2f} s, {r.chunks} chunks in store)")


class CanonFilter(watchfiles.DefaultFilter):
    """watchfiles' default ignores (.git, editor swap files) plus the store itself and hidden paths."""

    def __init__(self, roots: list[Path], kb_dir: Path | None):
        super().__init__()
        self.roots = roots
        self.kb_dir = kb_dir

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        changed = Path(path)
        if self.kb_dir and changed.is_relative_to(self.kb_dir):
            return False
        for root in self.roots:
            if changed.is_relative_to(root) and any(p.startswith(".") for p in changed.relative_to(root).parts):
                return False
        return super().__call__(change, path)


def ingest_batch(kb: KnowledgeBase, paths: list[str]) -> Batch:
    """Ingest the watched paths once, timed.

    Raises:
        KBError: the store cannot be opened or written, or another writer holds it.
    """
    started = time.perf_counter()
    report = kb.ingest(paths)
    return Batch(report, time.perf_counter() - started, time.time())


def watch(kb: KnowledgeBase, paths: list[str], stop: threading.Event, on_batch: Callable[[Batch], None],
          debounce_ms: int = 300) -> None:
    """Ingest ``paths``, then again after each batch of changes under them, until ``stop`` is set.

    The first ingest runs once the watcher is listening, so no change made
    meanwhile is missed. A later ingest that fails (another writer holds the
    store) is retried every second until it succeeds; ``on_batch`` hears about
    every ingest, and about each new error once.

    Raises:
        KBError: a watched path does not exist, or the first ingest cannot open or write the store.
    """
    for path in paths:
        if not Path(path).exists():
            raise KBError(f"cannot watch '{path}': no such file or folder")
    roots = [Path(p).resolve() for p in paths]
    kb_dir = None if kb.settings.chroma_url else Path(kb.settings.kb_dir).resolve()
    changes = watchfiles.watch(*roots, watch_filter=CanonFilter(roots, kb_dir), debounce=max(debounce_ms, 1600),
                               step=debounce_ms, stop_event=stop, rust_timeout=RETRY_MS, yield_on_timeout=True,
                               raise_interrupt=False)
    first, pending, last_error = True, True, None
    for changed in changes:  # the first yield (a change or a timeout) comes once the watcher is listening
        if not (changed or pending):
            continue
        try:
            batch = ingest_batch(kb, paths)
        except KBError as exc:
            if first:
                raise
            batch = Batch(None, 0.0, time.time(), f"{exc} (retrying)")
        first, pending = False, batch.report is None
        if batch.error is None or batch.error != last_error:
            on_batch(batch)
        last_error = batch.error


@contextlib.contextmanager
def stop_on_interrupt(stop: threading.Event, on_first: Callable[[], None]):
    """Ctrl-C sets ``stop`` (the batch under way finishes); a second Ctrl-C interrupts at once."""

    def first_interrupt(signum, frame):
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        on_first()

    previous = signal.signal(signal.SIGINT, first_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
