"""A small OpenAI-compatible HTTP server on 127.0.0.1 standing in for the paid API.

It records every request (method, path, headers, JSON body or raw bytes) so
tests can check what we send, and answers chat completions (plain or
streamed as SSE) with a reply the test sets.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    """Start with ``with FakeOpenAI() as api:``; point clients at ``api.base_url``."""

    def __init__(self, reply: str = "The canon says so [1]."):
        self.reply = reply
        self.requests: list[dict] = []
        self.routes: dict[tuple[str, str], callable] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self, method):
                raw = self._body()
                try:
                    body = json.loads(raw) if raw else None
                except (ValueError, UnicodeDecodeError):
                    body = None
                record = {"method": method, "path": self.path, "headers": dict(self.headers),
                          "json": body, "raw": raw}
                fake.requests.append(record)
                route = fake.route_for(method, self.path)
                if route is None:
                    self._send(404, {"error": {"message": f"no route {method} {self.path}"}})
                    return
                route(self, record)

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        self.handler = Handler
        self.add_route("POST", "/v1/chat/completions", self._chat)
        self.add_route("GET", "/v1/models", lambda h, r: h._send(200, {
            "object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0,
                                        "owned_by": "tests"}]}))

    def add_route(self, method: str, prefix: str, handler) -> None:
        """Answer requests whose path starts with ``prefix`` with ``handler(http, record)``."""
        self.routes[(method, prefix)] = handler

    def route_for(self, method, path):
        matches = [(len(p), h) for (m, p), h in self.routes.items() if m == method and path.startswith(p)]
        return max(matches, key=lambda item: item[0])[1] if matches else None

    def chat_requests(self) -> list[dict]:
        return [r["json"] for r in self.requests if r["path"].startswith("/v1/chat/completions")]

    def _chat(self, http, record):
        body = record["json"] or {}
        created = int(time.time())
        if body.get("stream"):
            http.send_response(200)
            http.send_header("Content-Type", "text/event-stream")
            http.end_headers()
            for i, piece in enumerate(self.reply.split(" ")):
                delta = {"content": (" " if i else "") + piece}
                if i == 0:
                    delta["role"] = "assistant"
                event = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                         "model": body.get("model", ""),
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                http.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                http.wfile.flush()
            done = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                    "model": body.get("model", ""),
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            http.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
            http.wfile.flush()
            return
        http._send(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": created,
            "model": body.get("model", ""),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": self.reply}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    def __enter__(self) -> "FakeOpenAI":
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"
