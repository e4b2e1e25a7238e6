"""Walk the named paths: which files to read, which to skip and why."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

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


def discover(paths: list[str]) -> tuple[list[Found], list[tuple[str, str]], list[tuple[str, str]]]:
    """Return (files to ingest, skipped (path, why), missing (path, why)).

    Hidden files and folders are skipped silently from folder walks; unsupported
    files are skipped with a note; a path that does not exist is an error.
    """
    found: list[Found] = []
    skipped: list[tuple[str, str]] = []
    missing: list[tuple[str, str]] = []
    for name in paths:
        root = Path(name).resolve()
        if not root.exists():
            missing.append((name, "path does not exist"))
            continue
        if root.is_file():
            candidates = [root]
            base = root.parent
        else:
            candidates = sorted(
                p for p in root.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
            base = root
        for path in candidates:
            source = path.relative_to(base).as_posix()
            kind = kind_of(path)
            if kind is None:
                skipped.append((source, f"unsupported file type '{path.suffix or path.name}'"))
            else:
                found.append(Found(path, source, root, kind))
    return found, skipped, missing
