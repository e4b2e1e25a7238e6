"""Errors a user can act on; the CLI prints the message as one line and exits 1."""

from __future__ import annotations


class KBError(Exception):
    """Something the user can fix: the message says what and why."""


class StoreLocked(KBError):
    """Another process is writing to this knowledge base."""


class ModelMismatch(KBError):
    """The store was built with another embedding model."""


class LLMError(KBError):
    """The configured chat model could not be reached or refused the request."""
