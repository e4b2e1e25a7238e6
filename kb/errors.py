"""One error tree: each class says what the user can do, which exit status the CLI gives and
which HTTP status the server answers with, so both adapters map errors in one place."""

from __future__ import annotations


class KBError(Exception):
    """Something the user can fix: the message says what and why."""

    exit_code = 1
    http_status = 400
    code: str | None = None  # the OpenAI-style error code the server reports

    def __init__(self, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.headers = headers


class ConfigError(KBError):
    """A setting (environment variable or option) has a value that cannot be used."""

    exit_code = 2
    code = "invalid_setting"


class InvalidRequest(KBError):
    """A request the server understood but cannot take (a question too long)."""

    http_status = 422
    code = "invalid_request"


class NotFound(KBError):
    """No knowledge base, NPC or model by that name."""

    http_status = 404
    code = "not_found"


class Unavailable(KBError):
    """The knowledge base cannot be opened or reached right now."""

    http_status = 503
    code = "kb_unavailable"


class StoreLocked(KBError):
    """Another process is writing to this knowledge base."""

    http_status = 409
    code = "store_locked"


class ModelMismatch(KBError):
    """The store was built with another embedding model."""

    http_status = 409
    code = "model_mismatch"


class Busy(KBError):
    """The server is already doing this (one ingest at a time)."""

    http_status = 409
    code = "ingest_running"


class Forbidden(KBError):
    """The request names something this server or token may not touch."""

    http_status = 403
    code = "forbidden"


class Unauthorized(KBError):
    """A missing or wrong bearer token."""

    http_status = 401
    code = "invalid_api_key"


class LLMError(KBError):
    """The configured chat model could not be reached or refused the request."""

    http_status = 502
    code = "upstream_error"
