"""Two `kb serve` replicas on one Chroma server: how soon a file ingested through one is found by the other.

Starts chromadb's own server (`chroma run`, installed with chromadb) on
127.0.0.1, writes --chunks generated chunks into it (bench/scale.py's
generator, random vectors in place of embeddings), and starts two replicas,
each with its own --kb folder for its BM25 postings. Replica A may ingest
(--root); replica B only answers. Each round writes one new Markdown file with
a word found nowhere else, POSTs it to A's /ingest (real model, real ingest),
then polls B's /search (bm25) every 20 ms until the file is found. Prints the
median seconds from A's reply to B's first hit, and from the POST to it.

    python bench/replicas.py [--chunks 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
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
from kb.store import Store  # noqa: E402
from kb.store.embed import model_dim  # noqa: E402

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{what} did not start (exit {proc.poll()})")
            time.sleep(0.2)


def post(url: str, body: dict, timeout: float = 600) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000, help="generated chunks in the shared store [10000]")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    procs = []
    with tempfile.TemporaryDirectory(prefix="kb-bench-replicas-") as tmp:
        tmp = Path(tmp)
        try:
            chroma_port = free_port()
            chroma_url = f"http://127.0.0.1:{chroma_port}"
            procs.append(subprocess.Popen([str(BIN / "chroma"), "run", "--path", str(tmp / "db"), "--host",
                                           "127.0.0.1", "--port", str(chroma_port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for(f"{chroma_url}/api/v2/heartbeat", procs[-1], "chroma run")
            print(f"writing {args.chunks} chunks to {chroma_url} ...", file=sys.stderr)
            store = Store(tmp / "writer", chroma_url=chroma_url, create=True)
            canon, vectors = Canon(7), np.random.default_rng(7)
            run = store.begin_run()
            for index, start in enumerate(range(0, args.chunks, 100)):
                run.put(*synthetic_file(canon, vectors, index, min(100, args.chunks - start), 150,
                                        model_dim(store.model)))
            run.publish()
            canon_dir = tmp / "canon"
            canon_dir.mkdir()
            replicas = {}
            for name, extra in (("A", ["--root", str(canon_dir)]), ("B", [])):
                port = free_port()
                procs.append(subprocess.Popen([str(BIN / "kb"), "serve", "--chroma-url", chroma_url, "--kb",
                                               str(tmp / f"replica-{name}"), "--port", str(port), *extra],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                replicas[name] = f"http://127.0.0.1:{port}"
                wait_for(f"{replicas[name]}/healthz", procs[-1], f"replica {name}")
            print("warming both replicas (postings built, model loaded) ...", file=sys.stderr)
            for url in replicas.values():
                post(f"{url}/search", {"query": "warm up", "k": 1})
            after_reply, after_post = [], []
            for round_ in range(args.rounds):
                word = f"zzreplica{round_}"
                path = canon_dir / f"drop-{round_}.md"
                path.write_text(f"# Drop {round_}\n\nThe {word} was found in the harbour.\n", encoding="utf-8")
                posted = time.perf_counter()
                post(f"{replicas['A']}/ingest", {"paths": [str(path)]})
                replied = time.perf_counter()
                while True:
                    hits = post(f"{replicas['B']}/search", {"query": word, "k": 1, "mode": "bm25"})["results"]
                    if hits and hits[0]["source"].endswith(path.name):
                        break
                    if time.perf_counter() - replied > 120:
                        sys.exit(f"replica B did not see {path.name} within 120 s")
                    time.sleep(0.02)
                seen = time.perf_counter()
                after_reply.append(seen - replied)
                after_post.append(seen - posted)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"two kb serve replicas on one `chroma run` (127.0.0.1), {args.chunks:,} generated chunks, "
          f"{args.rounds} one-file ingests through replica A:")
    print(f"  seen by replica B after A's /ingest replied: median {median(after_reply):.2f} s "
          f"(max {max(after_reply):.2f})")
    print(f"  seen by replica B after the /ingest was sent: median {median(after_post):.2f} s "
          f"(max {max(after_post):.2f})")
    print(f"machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
