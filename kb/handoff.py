"""Hand a `kb search` or `kb ask --json` to a `kb serve` already running on the same knowledge base.

A fresh process pays ~1 s of imports (chromadb, spaCy's stopword lists, numpy)
and ~1 s loading the embedding model before its first answer; a running server
has paid both. `kb serve` therefore leaves ``<kb>/serve.json`` (its URL, its
process id, the knowledge base it serves and how it answers) while it runs,
and the CLI sends its request there when that file names a live server on the
same knowledge base that answers the same way. Anything else (no file, a dead
or unreachable server, a refused token, an error) and the CLI answers in
process as before. This module imports nothing heavy: the fast path must stay fast.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlparse

from kb.config import TOKEN_ENV, Settings

SERVE_FILE = "serve.json"
TIMEOUT_S = 30.0  # a server that accepted the request but takes longer than this is not waited for


def _where(settings: Settings) -> str:
    return settings.chroma_url or str(Path(settings.kb_dir).resolve())


def answering(settings: Settings, extractive: bool) -> dict:
    """How a knowledge base with these settings answers: a CLI and a server must agree to share answers."""
    llm = settings.llm_configured and not extractive
    return {"llm": llm, "base_url": settings.base_url if llm else None, "model": settings.model if llm else None}


@contextlib.contextmanager
def announced(settings: Settings, host: str, port: int, extractive: bool):
    """While the block runs, ``<kb>/serve.json`` tells the CLI where this server listens."""
    path = Path(settings.kb_dir) / SERVE_FILE
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in reachable:
        reachable = f"[{reachable}]"
    record = {"url": f"http://{reachable}:{port}", "pid": os.getpid(), "kb": _where(settings),
              "answers": answering(settings, extractive)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SERVE_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        path = None  # a read-only folder: the CLI answers in process
    try:
        yield
    finally:
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                    path.unlink()


def running_server(settings: Settings) -> dict | None:
    """The record of a live `kb serve` on this knowledge base, or None."""
    try:
        record = json.loads((Path(settings.kb_dir) / SERVE_FILE).read_text(encoding="utf-8"))
        if record["kb"] != _where(settings) or urlparse(record["url"]).scheme != "http":
            return None
        os.kill(int(record["pid"]), 0)  # raises when no such process
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record


def post(record: dict, route: str, body: dict) -> dict | None:
    """The server's JSON reply to one request, or None when it cannot give one (the CLI then answers itself)."""
    url = urlparse(record["url"])
    headers = {"Content-Type": "application/json"}
    if os.environ.get(TOKEN_ENV):
        headers["Authorization"] = f"Bearer {os.environ[TOKEN_ENV]}"
    try:
        connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=TIMEOUT_S)
        try:
            connection.request("POST", route, json.dumps(body), headers)
            reply = connection.getresponse()
            data = reply.read()
        finally:
            connection.close()
        return json.loads(data) if reply.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
