"""The plain values that flow out of ingestion."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Section:
    """A structural piece of a document (a heading's body, a page, a dialogue node).

    ``meta`` holds what the parser knows about it: ``title`` (heading path),
    ``page``, ``chapter``, ``region``, ``speaker`` (a list, for dialogue),
    ``scene``/``node``/``knot`` and any other keys the source declares.
    ``dialogue`` sections hold one ``Speaker: line`` per line and are never
    split inside a line; their ``line_ids`` (one per line, None where a line
    has none, or empty) name each line's recorded id for voice and loc pipelines.
    """

    text: str
    meta: dict = field(default_factory=dict)
    dialogue: bool = False
    line_ids: list = field(default_factory=list)


HASH_IN_ID = 12  # the digits of a file version's hash in its chunks' ids: a publish tells versions apart by id


def chunk_id(file_key: str, file_hash: str, index: int) -> str:
    """A chunk's id, naming its file, its file's version and its place in it."""
    return f"{file_key}-{file_hash[:HASH_IN_ID]}-{index}"


def id_place(cid: str) -> tuple[str, str, int] | None:
    """The file key, version (hash digits) and place a ``chunk_id`` names, or None for an id not in that form."""
    key, _, rest = cid.partition("-")
    version, _, index = rest.partition("-")
    return (key, version, int(index)) if len(version) == HASH_IN_ID and index.isdigit() else None


@dataclass
class Chunk:
    """A retrievable unit: text plus the metadata a citation needs."""

    id: str
    text: str
    meta: dict
