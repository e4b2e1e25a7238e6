"""What every benchmark prints and finds the same way: the machine, ../shared/eval, percentiles, peak RSS."""

from __future__ import annotations

import functools
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"
SETS = ("fairytaleqa", "cmrc2018", "drcd")


def machine() -> str:
    """One line naming the machine a table came from (figures mean nothing without it)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        ram_text = f"{ram:.0f} GB RAM"
    except (ValueError, OSError):
        ram_text = "RAM unknown"
    try:
        load = "load %.1f/%.1f/%.1f" % os.getloadavg()
    except OSError:
        load = "load unknown"
    return (f"{platform.machine()}, {os.cpu_count()} cores, {ram_text}, "
            f"Python {platform.python_version()}, {load}")


@functools.cache
def revision() -> str:
    """The commit the measured code is at, and whether kb/ or ingest/ had uncommitted changes (as the run began)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "kb", "ingest")
    return f"{commit} (+ uncommitted changes in kb/ or ingest/)" if dirty else commit


revision()  # taken when a benchmark starts: others may commit while it runs


def eval_set(name: str) -> Path:
    """A question set under ../shared/eval, or exit with a message saying where it was looked for."""
    path = EVAL / name
    if not (path / "docs").is_dir():
        sys.exit(f"{path}/docs not found: the external question sets live in ../shared/eval "
                 "beside the repository; this benchmark needs them")
    return path


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of some timings."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def in_fresh_process(function, *args):
    """``function(*args)`` in a new spawned process: its own peak RSS, nothing loaded before it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_seconds(*whose: int) -> float:
    """CPU seconds of ``resource.RUSAGE_SELF`` and/or ``RUSAGE_CHILDREN`` (the children that ended)."""
    return sum(usage.ru_utime + usage.ru_stime for usage in map(resource.getrusage, whose))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB.

    Linux's VmHWM, not ru_maxrss where /proc has it: ru_maxrss survives fork and exec, so a process a
    benchmark spawned reported its parent's resident memory at the spawn (a fresh open of 10k chunks
    read 425 MB spawned from a process holding that much, 222 MB by VmHWM).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux's VmRSS; 0 where /proc has none)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0.0


def forget_recent_embeddings() -> None:
    """Empty the embedder's in-process cache of recent vectors, so a timed call pays for its embeddings.

    A new `kb` process starts with it empty; a benchmark that runs many calls in one process must
    empty it to measure what each call costs on its own.
    """
    from kb.store.embed import LoreEmbedding

    cache = getattr(LoreEmbedding, "_cache", None)
    if cache is not None:
        with LoreEmbedding._lock:
            cache.clear()


def cached_store_dir(cache: Path, name: str) -> Path:
    """Where a set's store is kept between runs: one per set, model and chunk settings.

    Ingest is incremental by file hash, so a changed chunker is not noticed: use a new cache then.
    """
    from kb.config import Settings

    settings = Settings()
    return cache / (f"{name}-{settings.embed_model or 'default'}-{settings.chunk_tokens}t"
                    f"{settings.cjk_chunk_tokens}zh{settings.chunk_overlap}o")


def ingested(kb_dir: Path, docs_dir: Path):
    """Our knowledge base of a set's documents with the current defaults (incremental if kb_dir holds one), or exit."""
    from kb.api import KnowledgeBase
    from kb.config import Settings

    kb = KnowledgeBase(Settings(kb_dir=kb_dir, chroma_url=None))
    report = kb.ingest([str(docs_dir)])
    if report.failed:
        sys.exit(f"our ingest failed: {report.failed[:3]}")
    return kb
