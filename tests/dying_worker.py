"""Workers that die: run as a module, one that starts, then dies at its first job (the embedding worker dying
mid-ingest); ``closes_its_pipe_then_exits``, a parse worker's job that dies as a killed worker does."""

import os
import sys
import time

from kb.worker_process import connections


def closes_its_pipe_then_exits(status: int) -> None:
    """Its pipe closes a moment before its exit status is known, as with a worker the OOM killer ends."""
    os.close(int(sys.argv[2]))  # the results pipe (kb/worker_process.py's command line)
    time.sleep(0.5)
    os._exit(status)


if __name__ == "__main__":
    jobs, results = connections(sys.argv)
    results.send("ready")
    jobs.recv()
    os._exit(1)
