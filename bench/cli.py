"""How long `kb search` and `kb ask --json` take as fresh processes on a 10k-chunk store, in process and handed to a running `kb serve`.

The store is generated as bench/scale.py makes it (random vectors in place of
embeddings; queries embed with the real model) in --kb DIR, kept for reuse.
Each command runs --runs times as a new process; the medians of wall time and
of the process's CPU time (user + system, steadier on a shared machine) are
printed, first answering in process (imports, store open, postings read, model
load), with the model read from its cached copy (kb/store/model_cache.py, in a
cache folder of the run's own, filled by one untimed run) and built as before
(no cache: XDG_CACHE_HOME names a file), runs of the two alternating; then with
`kb serve` running on the same store (the CLI finds it through
<kb>/serve.json). Also printed: what the in-process path pays before its first
answer (imports of kb.cli and kb.api, model load), each the median of 3 fresh
processes.

    python bench/cli.py [--kb DIR] [--chunks 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def timed(commands: dict[str, tuple[list[str], dict]], runs: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds of each command (args, environment) as a fresh process, runs alternating."""
    walls: dict[str, list[float]] = {label: [] for label in commands}
    cpus: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, (args, env) in commands.items():
            before, began = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run(args, check=True, capture_output=True, env=env)
            walls[label].append(time.perf_counter() - began)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[label].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return {label: (median(walls[label]), median(cpus[label])) for label in commands}


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
        cached = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        no_cache = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "not-a-folder")}
        (Path(tmp) / "not-a-folder").touch()
        subprocess.run(search, check=True, capture_output=True, env=cached)  # writes the model's cached copy
        python, load = [sys.executable, "-c"], "from kb.store.embed import LoreEmbedding; LoreEmbedding().embed_query(['x'])"
        figures = {
            **timed({"python -c 'import kb.cli'": ([*python, "import kb.cli"], cached),
                     "python -c 'import kb.api'": ([*python, "import kb.api"], cached),
                     "python: import kb.api + load the model (cached)": ([*python, f"import kb.api; {load}"], cached),
                     "python: import kb.api + load the model (built)": ([*python, f"import kb.api; {load}"], no_cache)},
                    3),
            **timed({"kb search, in process": (search, cached),
                     "kb search, in process, model built (no cache)": (search, no_cache),
                     "kb ask --json --extractive, in process": (ask, cached),
                     "kb ask --json --extractive, in process, model built": (ask, no_cache)},
                    args.runs),
        }
        port = free_port()
        server = subprocess.Popen([KB, "serve", "--kb", str(kb_dir), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cached)
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
            figures.update(timed({"kb search, kb serve running": (search, cached),
                                  "kb ask --json --extractive, kb serve running": (ask, cached)}, args.runs))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        removed = not (kb_dir / SERVE_FILE).exists()

    print(f"fresh processes on a {chunks:,}-chunk store (median of {args.runs}; imports: of 3):")
    print(f"  {'':52s} {'wall':>8s} {'CPU':>8s}")
    for label, (seconds, cpu) in figures.items():
        print(f"  {label:52s} {seconds:6.2f} s {cpu:6.2f} s")
    print(f"serve.json removed when kb serve stopped: {removed}")
    # An installed package has its bytecode compiled; with PYTHONDONTWRITEBYTECODE set, an editable install's
    # kb and ingest are compiled again by every process (~0.05 s of CPU).
    bytecode = "compiled in every process" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "bytecode cached"
    print(f"kb's own modules: {bytecode}")
    print(f"machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
