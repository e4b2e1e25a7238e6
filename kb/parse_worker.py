"""Parse each file in a worker process held to a memory limit and a timeout, so one hostile file fails alone.

The cheap checks inside the parsers (YAML alias limits, zip size caps, split
lines) stop the bombs we know of; this is the backstop for the ones we do
not. One long-lived worker per process parses file after file, a fresh
Python (kb/worker_process.py). It starts when an ingest starts, so its
imports overlap the store's opening. Before each file the worker lowers its
address-space limit (RLIMIT_AS) to KB_PARSE_MEMORY_MB; a file that needs more
fails with MemoryError, one that runs past KB_PARSE_TIMEOUT_S gets the worker
killed.
Either way that file is one failed entry naming the bound, and the next file
gets a fresh worker. Log records the parsers emit travel back to this process.
"""

from __future__ import annotations

import logging
import resource
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from ingest.errors import IngestError
from kb.errors import KBError
from kb.worker_process import WorkerProcess, connections

# Thread pools and malloc arenas reserve address space per core, which RLIMIT_AS counts: parsing needs neither.
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
_lock = threading.Lock()  # one file at a time goes to the worker
_worker: WorkerProcess | None = None


def _new_worker() -> WorkerProcess:
    return WorkerProcess("kb.parse_worker", "parse worker", _ONE_THREAD)


def start_worker() -> None:
    """Start the worker now if none runs, so its start overlaps other work (an ingest opening its store)."""
    global _worker
    with _lock:
        if _worker is None:
            _worker = _new_worker()


def run_bounded(function: Callable, args: tuple, source: str, timeout_s: int, memory_mb: int):
    """``function(*args)`` run in the worker within ``memory_mb`` of address space and ``timeout_s`` seconds.

    ``function`` must be importable by name and light to import (ingest/, kb/postings_batch.py).

    Raises:
        IngestError: what ``function`` raised, or a bound it broke (named with its variable).
    """
    global _worker
    with _lock:
        if _worker is None:
            _worker = _new_worker()
        worker = _worker
        try:
            worker.wait_until_ready()
        except KBError:
            _worker = None
            raise
        outcome, timed_out = None, False
        try:
            worker.jobs.send((function, args, source, memory_mb * 2**20))
            if worker.results.poll(timeout_s):
                outcome = worker.results.recv()
            else:
                timed_out = True
        except (EOFError, BrokenPipeError):  # the worker died: its exit status, once it has one, says how
            worker.exit_status()
        except BaseException:  # interrupted mid-file: its answer would reach the next caller
            _worker = None
            worker.stop()
            raise
        if outcome is None or outcome[0] == "memory":
            _worker = None  # the next file starts a fresh worker with a clean heap
            worker.stop()
            raise IngestError(_broken_bound(timed_out, outcome, worker.process.returncode, timeout_s, memory_mb),
                              source)
    status, value, records = outcome
    for record in records:
        logging.getLogger(record.name).handle(record)
    if status == "error":
        raise value
    return value


def _broken_bound(timed_out: bool, outcome, exitcode: int | None, timeout_s: int, memory_mb: int) -> str:
    """Which bound a file broke, in words naming the variable that sets it."""
    if timed_out:
        return f"parse took over {timeout_s} s (KB_PARSE_TIMEOUT_S)"
    if outcome is not None or exitcode == -signal.SIGKILL:  # MemoryError, or the kernel's OOM killer
        return f"parse needed over {memory_mb} MB of memory (KB_PARSE_MEMORY_MB)"
    cause = f"signal {signal.Signals(-exitcode).name}" if exitcode and exitcode < 0 else f"exit status {exitcode}"
    return f"parse process died ({cause})"


class _Records(logging.Handler):
    """Keeps the log records of one job, flattened so they pickle."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args, record.exc_info = record.getMessage(), None, None
        self.records.append(record)


def _out_of_memory(exc: BaseException | None) -> bool:
    """Whether a MemoryError is behind an exception (parsers wrap their crashes in IngestError)."""
    while exc is not None:
        if isinstance(exc, MemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _serve(jobs: Connection, results: Connection) -> None:
    """The worker's loop: a job in, ``(status, value, log records)`` out, until the pipe closes."""
    from ingest.load import load_chunks  # noqa: F401  imported now, while the caller opens its store
    from ingest.parse import unexpected
    from ingest.tokens import encoding

    encoding()
    results.send("ready")

    handler = _Records()
    logging.getLogger().addHandler(handler)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    while True:
        try:
            function, args, source, memory = jobs.recv()
        except EOFError:
            return
        handler.records = []
        resource.setrlimit(resource.RLIMIT_AS, (memory if hard == resource.RLIM_INFINITY else min(memory, hard),
                                                hard))
        try:
            outcome = ("ok", function(*args), handler.records)
        except Exception as exc:  # a parser's own crash names the file, as in the parent
            if _out_of_memory(exc):
                outcome = ("memory", None, [])
            else:
                error = exc if isinstance(exc, IngestError) else unexpected(exc, source)
                outcome = ("error", error, handler.records)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        results.send(outcome)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; the worker ends with its pipe
    try:
        _serve(*connections(sys.argv))
    except BrokenPipeError:  # the caller exited (say, it found the store locked) while the worker started
        pass
