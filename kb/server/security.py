"""Who may reach the server and what a request may touch: exposure, host names, scoped bearer tokens,
ingest roots, body size."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ingest.discover import discover
from kb.config import NPC_TOKEN_ENV, TOKEN_ENV
from kb.errors import ConfigError, Forbidden, KBError, Unauthorized
from kb.server.errors import error_response

MIN_TOKEN_CHARS = 16              # beyond loopback, a token shorter than this is refused at startup
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
MAX_BODY_BYTES = 1 << 20      # a chat history or a list of paths; canon arrives through /ingest paths
MAX_PATH_CHARS = 4096         # PATH_MAX on Linux: a longer /ingest path names nothing


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, npc_token: str | None = None) -> None:
    """Refuse to serve the canon beyond this machine without bearer tokens worth the name.

    A token is set when its variable is, even to nothing: ``KB_API_TOKEN=`` is a blank token.

    Raises:
        KBError: ``host`` is not a loopback address and no token is set.
        ConfigError: beyond loopback, a token is blank or shorter than MIN_TOKEN_CHARS.
    """
    if is_loopback(host):
        return
    if token is None and npc_token is None:
        raise KBError(f"refusing to listen on {host} without a token: set {TOKEN_ENV} to a long "
                      "random secret (clients send it as 'Authorization: Bearer ...'), "
                      "or bind to 127.0.0.1")
    for name, value in ((TOKEN_ENV, token), (NPC_TOKEN_ENV, npc_token)):
        if value is not None and len(value.strip()) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{name} is {len(value.strip())} characters; listening on {host} needs "
                              f"at least {MIN_TOKEN_CHARS}, e.g. from `python -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))'`")


def host_name(header: str) -> str:
    """The name a Host header asks for, without its port: ``[::1]:8000`` -> ``[::1]``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1] if "]" in header else header
    name, _, port = header.rpartition(":")
    return (name if name and port.isdigit() else header).rstrip(".")


def allowed_hosts(names: list[str] | None = None) -> frozenset[str]:
    """The Host names the server answers to: the loopback names and ``names`` (not a wildcard address)."""
    extra = {f"[{n}]" if n.count(":") > 1 else n for n in names or []} - {"0.0.0.0", "[::]", ""}
    return frozenset({*LOOPBACK_HOSTS, *(host_name(n) for n in extra)})


class HostAllowlist:
    """ASGI middleware: a request for a Host name the server does not answer to gets 421.

    A web page can make a browser reach a loopback server by pointing a name it
    controls at 127.0.0.1 (DNS rebinding); the browser then still sends that name
    as the Host, which is how the request is told apart. /healthz stays open to
    any name, so load balancers can probe by address.
    """

    def __init__(self, app, hosts: frozenset[str]):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/healthz":
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_name(header) in self.hosts:
            return await self.app(scope, receive, send)
        shown = header[:100] or "(none)"
        response = error_response(421, f"this server does not answer to the host name {shown}; start "
                                  "kb serve with --allowed-host NAME to allow a name", "host_not_allowed")
        await response(scope, receive, send)


bearer = HTTPBearer(auto_error=False,
                    description=f"The server's {TOKEN_ENV}, or {NPC_TOKEN_ENV} for the NPC routes only.")


async def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
    """A route dependency for the NPC routes: the request's scope, ``full`` or ``npc`` (async: it does no
    I/O, so it runs on the event loop instead of taking a thread from the pool per request).

    With no token set the server is open (``full``); with either set, a request
    must carry one of them.

    Raises:
        Unauthorized: the token is missing or wrong.
    """
    tokens = {"full": request.app.state.token, "npc": request.app.state.npc_token}
    if not any(tokens.values()):
        return "full"
    given = (credentials.credentials if credentials else "").encode()
    for scope, token in tokens.items():
        if token and hmac.compare_digest(given, token.encode()):
            return scope
    raise Unauthorized(f"missing or wrong bearer token; send 'Authorization: Bearer <{TOKEN_ENV}>'",
                       headers={"WWW-Authenticate": "Bearer"})


async def require_full(scope: str = Depends(authorize)) -> None:
    """A route dependency for every route but the NPC ones: the NPC token does not open them.

    Raises:
        Unauthorized: the token is missing or wrong.
        Forbidden: the request carries the NPC-only token.
    """
    if scope != "full":
        raise Forbidden(f"this token ({NPC_TOKEN_ENV}) opens only the NPC routes: POST /npc/{{name}}/ask "
                        "and the npc:<Name> models of /v1/chat/completions", "insufficient_scope")


def confine(path: str, roots: list[Path]) -> str:
    """The server-side path a request names, if it lies under one of the ingest roots.

    Relative paths are taken relative to the first root that holds them. Symlinks and
    ``..`` are resolved before the check, and every file a folder walk would ingest is
    checked too, so no link escapes a root.

    Raises:
        Forbidden: ingest is off (no roots) or the path is outside every root.
        KBError: the path cannot name a file (a NUL byte, too long): 400 ``invalid_path``.
    """
    if not roots:
        raise Forbidden("ingest over HTTP is off; start `kb serve --root DIR` to allow "
                        "ingesting folders under DIR", "ingest_disabled")
    if "\0" in path or len(path) > MAX_PATH_CHARS:
        raise KBError(f"not a usable path: it holds a NUL byte or is over {MAX_PATH_CHARS} characters",
                      "invalid_path")
    try:
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = next((r / path for r in roots if (r / path).exists()), roots[0] / path)
        resolved = candidate.resolve()
    except (OSError, ValueError) as exc:  # a name part over NAME_MAX, a loop of links
        raise KBError(f"not a usable path: {getattr(exc, 'strerror', None) or exc}", "invalid_path") from None
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
