"""A worker that starts, then dies at its first job: the embedding worker dying mid-ingest."""

import os
import sys

from kb.worker_process import connections

if __name__ == "__main__":
    jobs, results = connections(sys.argv)
    results.send("ready")
    jobs.recv()
    os._exit(1)
