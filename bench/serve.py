"""Requests/s and p50/p95 latency of `kb serve` for `kb` and `npc:<Name>` at 1, 8 and 32 clients.

Runs a real `kb serve --extractive` (a subprocess, as deployed) on a free
127.0.0.1 port over a store of the sample world (built in a temp dir unless
--kb names one), then sends bounded numbers of OpenAI chat requests from
client threads. Two workloads: "new", where every request is a question the
server has not seen (built from the world's headings, "Tell me about X."), and
"repeat", the 20 questions of corpora/eval/world-qa.jsonl over and over (what
players of one scene do; recent embeddings are cached). Prints a table (and
--json the figures). Loopback only; nothing downloads.

--budget measures only the game-runtime budget (issue 14): an NPC's replies
at 8 clients, each request carrying a game state and a two-turn history, plain
and streamed; the streamed rows add the time to the first content token. The
clients ask back to back (what the server sustains) and then each every 0.5 s
(8 players, each asking twice a second). Budget: reply p50 <= 50 ms
extractive, first streamed token <= 100 ms.

    python bench/serve.py [--kb DIR] [--npc Maren] [--requests 24] [--workers 1] [--budget]
"""

from __future__ import annotations

import argparse
import http.client
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
from urllib.parse import urlsplit

import httpx
import psutil

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


def start_server(kb_dir: Path, port: int, workers: int = 1) -> subprocess.Popen:
    proc = subprocess.Popen([*kb_command(), "serve", "--kb", str(kb_dir), "--host", "127.0.0.1",
                             "--port", str(port), "--extractive", "--workers", str(workers)], env=clean_env(),
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


def server_cpu_s(pid: int) -> float:
    """CPU seconds used so far by the server and its worker processes."""
    server = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in (server, *server.children(recursive=True)))


CONTENT_TOKEN = re.compile(rb'^data: \{.*"content": "[^"]', re.MULTILINE)


def reply(conn: http.client.HTTPConnection, body: dict, stream: bool, start: float) -> tuple[float | None, bool]:
    """Send one chat request on a kept-alive connection and read the whole reply; the seconds to its first
    content token (streamed only, None if none came) and whether it was ok.

    The stdlib's client, not httpx: on these 2 shared cores the clients' CPU competes with the server's,
    and httpx cost 3-4 ms of it per request, a third of what the server spends on a new NPC question.
    """
    conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": stream}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    if not stream:
        data = response.read()
        return None, response.status == 200 and bool(json.loads(data)["choices"][0]["message"]["content"])
    first, text = None, b""
    while piece := response.read1(65536):
        text += piece
        if first is None and CONTENT_TOKEN.search(text):
            first = time.perf_counter() - start
    response.read()  # a reply with a length ends without closing itself: the connection is reused
    return first, response.status == 200 and first is not None


def measure(url: str, server_pid: int, model: str, clients: int, asked: list[str], workload: str = "",
            extra: dict | None = None, history: list[dict] | None = None, stream: bool = False,
            pace: float | None = None) -> dict:
    """Send one chat request per question from ``clients`` threads; latency per request, throughput overall.

    ``extra`` is added to every body (a game state); ``history`` goes before each question;
    ``stream`` reads SSE and also records the time to the first content token. Without ``pace``
    each client asks again as soon as it has its reply (the server's saturation); with it, each
    client asks every ``pace`` seconds, the clients staggered (players, who read the reply first).
    """
    total = len(asked)
    local = threading.local()
    latencies: list[float] = []
    first_tokens: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal errors
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
        body = {"model": model, "messages": [*(history or []), {"role": "user", "content": asked[i]}],
                **(extra or {})}
        if pace:
            time.sleep(max(0.0, started + (i // clients + i % clients / clients) * pace - time.perf_counter()))
        start = time.perf_counter()
        first, ok = reply(local.conn, body, stream, start)
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)
            if first is not None:
                first_tokens.append(first)
            errors += not ok

    address = urlsplit(url)
    cpu_before, client_cpu_before = server_cpu_s(server_pid), time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(total)))
    wall = time.perf_counter() - started
    row = {"model": model, "workload": workload, "clients": clients, "requests": total, "errors": errors,
           "rps": round(total / wall, 2),
           "server_cpu_ms": round((server_cpu_s(server_pid) - cpu_before) * 1000 / total, 1),
           "client_cpu_ms": round((time.process_time() - client_cpu_before) * 1000 / total, 1),
           "p50_ms": round(median(latencies) * 1000),
           "p95_ms": round(percentile(latencies, 95) * 1000)}
    if stream and first_tokens:
        row.update(ttft_p50_ms=round(median(first_tokens) * 1000), ttft_p95_ms=round(percentile(first_tokens, 95) * 1000))
    return row


BUDGET_STATE = {"state": {"chapter": 1, "region": "Saltreach", "flags": {"paid_fare": True}}}
BUDGET_HISTORY = [{"role": "user", "content": "Is this the ferry to Greyhithe?"},
                  {"role": "assistant", "content": "Only ferry there is, tidewalker. Three copper bits."}]


WARM_NEW = 48  # new questions asked before the budget's cells (4 cells of 48 follow, of ~280)
PACE_S = 0.5  # a player asking an NPC twice a second: far faster than anyone reads a reply


def budget_rows(url: str, server_pid: int, model: str, requests: int, fresh, repeat: list[str]) -> list[dict]:
    """The game-runtime budget cells: 8 clients, state and history on every request, plain and streamed,
    back to back and paced."""
    # unmeasured: the workers meet the scene's questions and some new ones first, as a server in a game
    # session has; after the scene's questions alone, the first cell of new questions was the slowest
    # (p50 89-111 ms against 37-57 for the next ones, load 5)
    warm = [*repeat * 2, *(next(fresh) for _ in range(WARM_NEW))]
    measure(url, server_pid, model, 8, warm, "warm-up", BUDGET_STATE, BUDGET_HISTORY)
    rows = []
    count = max(requests, 16)
    for pace in (None, PACE_S):
        for stream in (False, True):
            for workload in ("new", "repeat"):
                asked = ([next(fresh) for _ in range(count)] if workload == "new" else
                         [repeat[i % len(repeat)] for i in range(count)])
                name = f"{workload}+state{'+sse' if stream else ''}{f' every {pace} s' if pace else ''}"
                rows.append(measure(url, server_pid, model, 8, asked, name, BUDGET_STATE, BUDGET_HISTORY,
                                    stream, pace))
                print(f"  {model} {name} x8: p50 {rows[-1]['p50_ms']} ms", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, help="serve this store instead of building the sample world")
    parser.add_argument("--npc", default="Maren")
    parser.add_argument("--requests", type=int, default=24,
                        help="requests per cell, at least 2 per client; 'new' needs 2x(24+24+64) of ~270 [24]")
    parser.add_argument("--workers", type=int, default=1, help="kb serve --workers: server processes [1]")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--budget", action="store_true",
                        help="only the NPC game-runtime budget: 8 clients with state and history, plain and streamed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        kb_dir = args.kb
        if kb_dir is None:
            kb_dir = Path(tmp) / "kb"
            print("building the sample world's store ...", file=sys.stderr)
            build_store(kb_dir)
        port = free_port()
        server = start_server(kb_dir, port, args.workers)
        url = f"http://127.0.0.1:{port}"
        try:
            fresh = iter(new_questions())
            repeat = repeated_questions()
            rows = []
            if args.budget:
                rows = budget_rows(url, server.pid, f"npc:{args.npc}", args.requests, fresh, repeat)
            for model in () if args.budget else ("kb", f"npc:{args.npc}"):
                measure(url, server.pid, model, 1, repeat, "warm-up")  # the repeat set, once, unmeasured
                for workload in ("new", "repeat"):
                    for clients in CLIENTS:
                        count = max(args.requests, 2 * clients)
                        asked = ([next(fresh) for _ in range(count)] if workload == "new" else
                                 [repeat[i % len(repeat)] for i in range(count)])
                        rows.append(measure(url, server.pid, model, clients, asked, workload))
                        print(f"  {model} {workload} x{clients}: {rows[-1]['rps']} req/s", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=30)

    if args.json:
        print(json.dumps({"machine": machine(), "revision": revision(), "workers": args.workers, "rows": rows},
                         indent=2))
        return
    print(f"kb serve --extractive --workers {args.workers} on the sample world; {machine()}; code at {revision()}")
    print(f"{'model':<14}{'questions':<18}{'clients':>8}{'requests':>9}{'req/s':>8}{'p50 ms':>8}"
          f"{'p95 ms':>8}{'errors':>7}{'1st token p50':>14}{'p95':>6}{'CPU ms/req server':>18}{'client':>7}")
    for r in rows:
        print(f"{r['model']:<14}{r['workload']:<18}{r['clients']:>8}{r['requests']:>9}{r['rps']:>8}"
              f"{r['p50_ms']:>8}{r['p95_ms']:>8}{r['errors']:>7}{r.get('ttft_p50_ms', '-'):>14}"
              f"{r.get('ttft_p95_ms', '-'):>6}{r['server_cpu_ms']:>18}{r['client_cpu_ms']:>7}")


if __name__ == "__main__":
    main()
