"""Every error leaves the server in OpenAI's shape, mapped in one place from the error tree's HTTP status,
and without the server's own paths."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kb.errors import KBError

log = logging.getLogger("kb.server")


def error_response(status: int, message: str, code: str | None = None, headers: dict | None = None,
                   param: str | None = None) -> JSONResponse:
    """The OpenAI error shape, for both APIs: ``{"error": {"message", "type", "code", "param"}}``."""
    kind = ("authentication_error" if status == 401 else
            "invalid_request_error" if status < 500 else "server_error")
    body = {"message": message, "type": kind, "code": code, "param": param}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def redact(text: str, private: list[Path]) -> str:
    """``text`` without the server's own absolute paths: a file under an ingest root by its path
    relative to that root, the knowledge base folder by its name."""
    for path in sorted({str(p) for p in private}, key=len, reverse=True):
        text = text.replace(path + "/", "").replace(path, Path(path).name or ".")
    return text


def install_error_handlers(app: FastAPI) -> None:
    """KBErrors by their own status and code; validation as 422; anything else a 500 that hides its details."""

    @app.exception_handler(KBError)
    async def kb_error(request: Request, exc: KBError):
        message = redact(str(exc), getattr(request.app.state, "private", []))
        return error_response(exc.http_status, message, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        response = error_response(422, f"{where}: {first['msg']}" if where else first["msg"],
                                  "invalid_request", param=where or None)
        body = json.loads(response.body)
        body["error"]["details"] = problems
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server log has the details", "internal_error")
