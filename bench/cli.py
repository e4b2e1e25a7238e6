"""How long `kb search` and `kb ask --json` take as fresh processes on a 10k-chunk store, in process and handed to a running `kb serve`.

The store is generated as bench/scale.py makes it (random vectors in place of
embeddings; queries embed with the real model) in --kb DIR, kept for reuse.
Each command runs --runs times as a new process; the medians of wall time are
printed, first answering in process (imports, store open, postings read, model
load), then with `kb serve` running on the same store (the CLI finds it through
<kb>/serve.json). Also printed: what the in-process path pays before its
first answer (imports of kb.cli and kb.api, model load), each the median of 3
fresh processes.

    python bench/cli.py [--kb DIR] [--chunks 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import machine, median, revision  # noqa: E402
from bench.scale import Canon, synthetic_file  # noqa: E402
from kb.api import KnowledgeBase  # noqa: E402
from kb.errors import KBError  # noqa: E402
from kb.handoff import SERVE_FILE  # noqa: E402
from kb.store import Store  # noqa: E402
from kb.store.embed import model_dim  # noqa: E402

KB = str(Path(sys.executable).with_name("kb"))


def build(kb_dir: Path, chunks: int, seed: int = 7) -> int:
    """A store of generated chunks at kb_dir (reused when it holds one), its postings built; its size."""
    try:
        return KnowledgeBase.open(kb_dir).store.count()
    except KBError:
        pass
    print(f"building {chunks} chunks in {kb_dir} ...", file=sys.stderr)
    canon, vectors = Canon(seed), np.random.default_rng(seed)
    store = Store(kb_dir, create=True)
    run = store.begin_run()
    for index, start in enumerate(range(0, chunks, 100)):
        run.put(*synthetic_file(canon, vectors, index, min(100, chunks - start), 150, model_dim(store.model)))
    run.publish()
    KnowledgeBase.open(kb_dir).corpus  # noqa: B018 - builds the postings
    return store.count()


def wall(args: list[str], runs: int) -> float:
    """Median wall seconds of ``args`` as a fresh process, which must succeed."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return median(times)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, help="use (or build and keep) the store here")
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kb-bench-cli-") as tmp:
        kb_dir = args.kb or Path(tmp) / "kb"
        chunks = build(kb_dir, args.chunks)
        query = Canon(7).phrase(5)
        search = [KB, "search", query, "--kb", str(kb_dir), "--json"]
        ask = [KB, "ask", query, "--kb", str(kb_dir), "--json", "--extractive"]
        python = [sys.executable, "-c"]
        figures = {
            "python -c 'import kb.cli'": wall([*python, "import kb.cli"], 3),
            "python -c 'import kb.api'": wall([*python, "import kb.api"], 3),
            "python: import kb.api + load the model": wall(
                [*python, "import kb.api; from kb.store.embed import LoreEmbedding; "
                          "LoreEmbedding().embed_query(['x'])"], 3),
            "kb search, in process": wall(search, args.runs),
            "kb ask --json --extractive, in process": wall(ask, args.runs),
        }
        port = free_port()
        server = subprocess.Popen([KB, "serve", "--kb", str(kb_dir), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    assert server.poll() is None and time.monotonic() < deadline, "kb serve did not start"
                    time.sleep(0.2)
            assert json.loads((kb_dir / SERVE_FILE).read_text())["pid"] == server.pid
            subprocess.run(search, check=True, capture_output=True)  # the server loads its model once
            figures["kb search, kb serve running"] = wall(search, args.runs)
            figures["kb ask --json --extractive, kb serve running"] = wall(ask, args.runs)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        removed = not (kb_dir / SERVE_FILE).exists()

    print(f"fresh processes on a {chunks:,}-chunk store (median of {args.runs}; imports: of 3):")
    for label, seconds in figures.items():
        print(f"  {label:48s} {seconds:6.2f} s")
    print(f"serve.json removed when kb serve stopped: {removed}")
    print(f"machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
