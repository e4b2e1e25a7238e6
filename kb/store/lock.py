"""The single-writer lock of a local store: chromadb is not safe for two processes writing one directory."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from kb.errors import KBError, StoreLocked


@contextlib.contextmanager
def write_lock(kb_dir: Path):
    """Hold the single-writer lock for a knowledge base, or fail at once with who holds it.

    Raises:
        StoreLocked: another process holds the lock.
        KBError: the directory cannot be written.
    """
    kb_dir = Path(kb_dir)
    try:
        kb_dir.mkdir(parents=True, exist_ok=True)
        handle = open(kb_dir / "write.lock", "a+")
    except OSError as exc:
        raise KBError(f"cannot write to the knowledge base at {kb_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StoreLocked(f"another process (pid {holder}) is writing to {kb_dir}; "
                          "wait for it to finish and run again") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
