"""A fresh Python running one of our modules as a worker, and the two pipes to it.

A fresh Python (`python -m <module> <job fd> <result fd>`), not a fork: forking
a process that runs chromadb's, the embedding model's or a server's threads is
unsafe, and multiprocessing's spawn and forkserver would re-run the caller's
main script in the worker. The worker sends "ready" once it has imported what
it works with, then answers each job it reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from kb.errors import KBError

STARTUP_TIMEOUT_S = 120  # a new worker's imports
EXIT_WAIT_S = 10  # a worker whose pipe has closed has this long to finish exiting before stop() kills it
_SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)  # where the worker finds kb/ and ingest/


class WorkerProcess:
    """A worker process (``python -m module``) and the two pipes to it."""

    def __init__(self, module: str, name: str, env: dict[str, str] | None = None):
        self.module, self.name = module, name
        job_read, job_write = os.pipe()
        result_read, result_write = os.pipe()
        path = os.pathsep.join(p for p in (_SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, str(job_read), str(result_write)],
            pass_fds=(job_read, result_write), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), "PYTHONPATH": path})
        os.close(job_read)
        os.close(result_write)
        self.jobs = Connection(job_write, readable=False)
        self.results = Connection(result_read, writable=False)
        self.ready = False

    def wait_until_ready(self) -> None:
        """Block until the worker has imported what it works with.

        Raises:
            KBError: it exited or hung while starting (a broken install, not a bad job).
        """
        if self.ready:
            return
        try:
            if self.results.poll(STARTUP_TIMEOUT_S):
                self.ready = self.results.recv() == "ready"
        except EOFError:  # it died: its own exit status is the one to report
            self.exit_status()
        if not self.ready:
            self.stop()
            raise KBError(f"the {self.name} did not start (exit status {self.process.returncode}); "
                          f"run `python -m {self.module}` to see why")

    def exit_status(self) -> int | None:
        """The exit status of a worker whose pipe has closed: its pipe closes a moment before it is gone."""
        try:
            return self.process.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.jobs.close()
        self.results.close()


def connections(argv: list[str]) -> tuple[Connection, Connection]:
    """The worker's end of the two pipes, from the file descriptors its command line names."""
    return Connection(int(argv[1]), writable=False), Connection(int(argv[2]), readable=False)
