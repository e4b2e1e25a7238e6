"""Walk the named paths: which files to read, which to skip and why."""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import IngestError
from ingest.parsers import parser_for

CARD_SUFFIXES = (".yaml", ".yml")


@dataclass
class Found:
    """A file to ingest: where it is, how it is cited, and what it is."""

    path: Path          # absolute
    source: str         # path relative to the folder that was named
    root: Path          # the folder that was named (or the file itself)
    kind: str           # "canon" or "card"


def file_key(path: Path) -> str:
    """A short stable id for a file, used as the prefix of its chunk ids."""
    return hashlib.sha1(str(path).encode()).hexdigest()[:16]


def file_hash(data: bytes) -> str:
    """The content hash that decides whether a file changed."""
    return hashlib.sha256(data).hexdigest()


def kind_of(path: Path) -> str | None:
    """'card' for NPC cards (YAML in an npcs/ folder), 'canon' for parseable files, else None."""
    if path.suffix.lower() in CARD_SUFFIXES and "npcs" in path.parent.parts:
        return "card"
    return "canon" if parser_for(path.suffix) is not None else None


def ignore_patterns(root: Path) -> list[str]:
    """Glob patterns from a folder's `.kbignore` (one per line, `#` comments), like .gitignore.

    Raises:
        IngestError: the file cannot be read or is not UTF-8.
    """
    path = root / ".kbignore"
    try:
        if not path.is_file():
            return []
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise IngestError(f"cannot read .kbignore: {exc.strerror}", str(path)) from None
    except UnicodeDecodeError as exc:
        raise IngestError(f".kbignore is not UTF-8 (bad byte at offset {exc.start})", str(path)) from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def is_ignored(source: str, patterns: list[str]) -> bool:
    """A path matches a pattern, or sits under a folder pattern (`eval/`)."""
    return any(fnmatch.fnmatch(source, p.rstrip("/")) or source.startswith(p.rstrip("/") + "/")
               for p in patterns)


def walk(root: Path) -> tuple[list[Path], list[OSError]]:
    """The files under a folder, hidden files and folders left out, and the errors of the folders
    that could not be listed (an unreadable subfolder is reported, not silently skipped)."""
    files: list[Path] = []
    errors: list[OSError] = []
    for folder, dirs, names in os.walk(root, onerror=errors.append):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(Path(folder, name) for name in names if not name.startswith("."))
    return files, errors


def discover(paths: list[str]) -> tuple[list[Found], list[tuple[str, str]], list[tuple[str, str]]]:
    """Return (files to ingest, skipped (path, why), failed (path, why)).

    Hidden files and folders, and paths matched by the folder's `.kbignore`, are
    skipped silently from folder walks; unsupported files are skipped with a
    note; a named path that does not exist or is neither a regular file nor a
    folder, a folder that cannot be listed, or a file name that is not UTF-8 (it
    could be neither stored nor printed as JSON), is an error.
    """
    found: list[Found] = []
    skipped: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    seen: set[Path] = set()  # a file named twice (`kb ingest docs docs/a.md`) is read once
    for name in paths:
        root = Path(name).resolve()
        if not root.exists():
            missing.append((_printable(name), "path does not exist"))
            continue
        if not root.is_file() and not root.is_dir():  # a FIFO would block the read; a device is no canon
            missing.append((_printable(name), "not a regular file or a folder"))
            continue
        if root.is_file():
            candidates = [root]
            base = root.parent
        else:
            try:
                ignored = ignore_patterns(root)
            except IngestError as exc:  # without its patterns the folder would ingest what it excludes
                missing.append((_printable(str(Path(name) / ".kbignore")), exc.reason))
                continue
            files, unreadable = walk(root)
            for exc in unreadable:
                folder = Path(exc.filename).relative_to(root).as_posix()
                if not is_ignored(folder, ignored):
                    missing.append((_printable(name if folder == "." else folder),
                                    f"cannot read folder: {exc.strerror}"))
            candidates = sorted(p for p in files
                                if p.is_file() and not is_ignored(p.relative_to(root).as_posix(), ignored))
            base = root
        for path in candidates:
            if path in seen:
                continue
            seen.add(path)
            source = path.relative_to(base).as_posix()
            if not _is_utf8(str(path)):
                missing.append((_printable(source), "file name is not valid UTF-8; rename the file"))
                continue
            kind = kind_of(path)
            if kind is None:
                skipped.append((source, f"unsupported file type '{path.suffix or path.name}'"))
            else:
                found.append(Found(path, source, root, kind))
    return found, skipped, missing


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of a file name arrive as lone surrogates
        return False
    return True


def _printable(name: str) -> str:
    """A file name as text that can be printed and put in JSON: undecodable bytes as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
