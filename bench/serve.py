"""Requests/s and p50/p95 latency of `kb serve` for `kb` and `npc:<Name>` at 1, 8 and 32 clients.

Runs a real `kb serve --extractive` (a subprocess, as deployed) on a free
127.0.0.1 port over a store of the sample world (built in a temp dir unless
--kb names one), then sends bounded numbers of OpenAI chat requests from
client threads. Two workloads: "new", where every request is a question the
server has not seen (built from the world's headings, "Tell me about X."), and
"repeat", the 20 questions of corpora/eval/world-qa.jsonl over and over (what
players of one scene do; recent embeddings are cached). Prints a table (and
--json the figures). Loopback only; nothing downloads.

    python bench/serve.py [--kb DIR] [--npc Maren] [--requests 24]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import ROOT, machine, median, percentile, revision  # noqa: E402

CORPORA = ROOT / "corpora"
CLIENTS = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env() -> dict:
    """Extractive mode for sure: no chat model, no token, no shared store from this shell."""
    env = dict(os.environ)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "KB_API_TOKEN", "KB_CHROMA_URL"):
        env.pop(name, None)
    return env


def kb_command() -> list[str]:
    return [sys.executable, "-c", "from kb.cli import main; main()"]


def build_store(kb_dir: Path) -> None:
    paths = [str(CORPORA / d) for d in ("world", "scripts", "npcs")]
    subprocess.run([*kb_command(), "ingest", *paths, "--kb", str(kb_dir), "--json"], check=True,
                   env=clean_env(), stdout=subprocess.DEVNULL)


def start_server(kb_dir: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([*kb_command(), "serve", "--kb", str(kb_dir), "--host", "127.0.0.1",
                             "--port", str(port), "--extractive"], env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"kb serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("kb serve did not start within 120 s")


TEMPLATES = ("Tell me about {}.", "What is known of {}?", "Who has to do with {}?", "Why does {} matter?")


def repeated_questions() -> list[str]:
    with open(CORPORA / "eval" / "world-qa.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["question"] for line in fh if line.strip()]


def new_questions() -> list[str]:
    """Distinct questions (about 270), one per heading of the world and template, in a fixed shuffle."""
    headings = sorted({re.sub(r"^#+\s*", "", line).strip()
                       for md in sorted((CORPORA / "world").glob("*.md"))
                       for line in md.read_text(encoding="utf-8").splitlines() if line.startswith("#")})
    asked = [t.format(h) for t in TEMPLATES for h in headings]
    random.Random(7).shuffle(asked)
    return asked


def measure(url: str, model: str, clients: int, asked: list[str], workload: str = "") -> dict:
    """Send one chat request per question from ``clients`` threads; latency per request, throughput overall."""
    total = len(asked)
    local = threading.local()
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal errors
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=url, timeout=300)
        body = {"model": model, "messages": [{"role": "user", "content": asked[i]}]}
        start = time.perf_counter()
        response = local.http.post("/v1/chat/completions", json=body)
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)
            errors += response.status_code != 200 or not response.json()["choices"][0]["message"]["content"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(total)))
    wall = time.perf_counter() - started
    return {"model": model, "workload": workload, "clients": clients, "requests": total, "errors": errors,
            "rps": round(total / wall, 2),
            "p50_ms": round(median(latencies) * 1000),
            "p95_ms": round(percentile(latencies, 95) * 1000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, help="serve this store instead of building the sample world")
    parser.add_argument("--npc", default="Maren")
    parser.add_argument("--requests", type=int, default=24,
                        help="requests per cell, at least 2 per client; 'new' needs 2x(24+24+64) of ~270 [24]")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        kb_dir = args.kb
        if kb_dir is None:
            kb_dir = Path(tmp) / "kb"
            print("building the sample world's store ...", file=sys.stderr)
            build_store(kb_dir)
        port = free_port()
        server = start_server(kb_dir, port)
        url = f"http://127.0.0.1:{port}"
        try:
            fresh = iter(new_questions())
            repeat = repeated_questions()
            rows = []
            for model in ("kb", f"npc:{args.npc}"):
                measure(url, model, 1, repeat, "warm-up")  # the repeat set, once, unmeasured
                for workload in ("new", "repeat"):
                    for clients in CLIENTS:
                        count = max(args.requests, 2 * clients)
                        asked = ([next(fresh) for _ in range(count)] if workload == "new" else
                                 [repeat[i % len(repeat)] for i in range(count)])
                        rows.append(measure(url, model, clients, asked, workload))
                        print(f"  {model} {workload} x{clients}: {rows[-1]['rps']} req/s", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=30)

    if args.json:
        print(json.dumps({"machine": machine(), "revision": revision(), "rows": rows}, indent=2))
        return
    print(f"kb serve --extractive on the sample world; {machine()}; code at {revision()}")
    print(f"{'model':<14}{'questions':<10}{'clients':>8}{'requests':>9}{'req/s':>8}{'p50 ms':>8}"
          f"{'p95 ms':>8}{'errors':>7}")
    for r in rows:
        print(f"{r['model']:<14}{r['workload']:<10}{r['clients']:>8}{r['requests']:>9}{r['rps']:>8}"
              f"{r['p50_ms']:>8}{r['p95_ms']:>8}{r['errors']:>7}")


if __name__ == "__main__":
    main()
