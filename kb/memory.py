"""Hand the heap a process freed back to the OS: glibc keeps it for reuse, and a server's resident memory stayed at
the peak of whatever it freed last."""

from __future__ import annotations

import ctypes
import threading

# Bytes that come and go (churned) between two hand-backs: a server's kept postings (kb/retrieve.py's HOT_POSTINGS,
# up to 504 MB at a million prose chunks) and what weighing them takes come and go as its players ask new questions,
# and the heap glibc kept of them reached 500 MB there, a server's peak over 4 GB. A hand-back took 6-15 ms.
RETURN_EVERY_BYTES = 128 * 2**20


def _libc_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator returns memory its own way
        return None


_malloc_trim = _libc_malloc_trim()


def return_freed_memory() -> None:
    """Give the OS back the heap freed so far (glibc's malloc_trim; nothing elsewhere)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class _Churn:
    def __init__(self):
        self.bytes = 0
        self.lock = threading.Lock()


_churn = _Churn()


def churned(nbytes: int) -> None:
    """Count ``nbytes`` of heap taken by data that comes and goes; hand the heap back once RETURN_EVERY_BYTES add
    up."""
    with _churn.lock:
        _churn.bytes += nbytes
        if _churn.bytes < RETURN_EVERY_BYTES:
            return
        _churn.bytes = 0
    return_freed_memory()
