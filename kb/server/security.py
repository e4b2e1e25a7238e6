"""Who may reach the server and what a request may touch: exposure, bearer tokens, ingest roots, body size."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ingest.discover import discover
from kb.errors import Forbidden, KBError, Unauthorized
from kb.server.errors import error_response

TOKEN_ENV = "KB_API_TOKEN"
MAX_BODY_BYTES = 1 << 20      # a chat history or a list of paths; canon arrives through /ingest paths


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve the canon beyond this machine without a bearer token.

    Raises:
        KBError: ``host`` is not a loopback address and no token is set.
    """
    if not token and not is_loopback(host):
        raise KBError(f"refusing to listen on {host} without a token: set {TOKEN_ENV} to a long "
                      "random secret (clients send it as 'Authorization: Bearer ...'), "
                      "or bind to 127.0.0.1")


bearer = HTTPBearer(auto_error=False, description=f"The server's {TOKEN_ENV}.")


def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """A route dependency: the request carries the server's bearer token, when it has one.

    Raises:
        Unauthorized: the token is missing or wrong.
    """
    token = request.app.state.token
    if not token:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized(f"missing or wrong bearer token; send 'Authorization: Bearer <{TOKEN_ENV}>'",
                           headers={"WWW-Authenticate": "Bearer"})


def confine(path: str, roots: list[Path]) -> str:
    """The server-side path a request names, if it lies under one of the ingest roots.

    Relative paths are taken relative to the first root that holds them. Symlinks and
    ``..`` are resolved before the check, and every file a folder walk would ingest is
    checked too, so no link escapes a root.

    Raises:
        Forbidden: ingest is off (no roots) or the path is outside every root.
    """
    if not roots:
        raise Forbidden("ingest over HTTP is off; start `kb serve --root DIR` to allow "
                        "ingesting folders under DIR", "ingest_disabled")
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = next((r / path for r in roots if (r / path).exists()), roots[0] / path)
    resolved = candidate.resolve()
    if not _under(resolved, roots):
        raise Forbidden(f"'{path}' is outside the ingest roots of this server", "path_not_allowed")
    found, _, _ = discover([str(resolved)])
    for item in found:  # a symlinked file inside a walked folder may lead out
        if not _under(item.path.resolve(), roots):
            raise Forbidden(f"'{item.source}' in '{path}' links outside the ingest roots of this server",
                            "path_not_allowed")
    return str(resolved)


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before any route reads it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        response = error_response(413, f"request body over {self.max_bytes} bytes", "request_too_large")
        await response(scope, receive, send)
