"""Errors a user can act on, raised while reading one file."""

from __future__ import annotations


class IngestError(Exception):
    """One file could not be ingested; the message says which and why."""

    def __init__(self, reason: str, path: str | None = None, line: int | None = None):
        self.reason = reason
        self.path = path
        self.line = line
        super().__init__(str(self))

    def __reduce__(self):  # rebuilt from its parts when it crosses from the parse worker
        return self.__class__, (self.reason, self.path, self.line)

    def __str__(self) -> str:
        where = self.path or "<input>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.reason}"


class ParseError(IngestError):
    """The file's syntax is broken (an unclosed node, an unknown construct)."""


class NothingToIndex(IngestError):
    """The file is valid but holds no text to index (only commands, only headings): skipped, not failed."""
