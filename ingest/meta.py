"""Metadata helpers shared by every parser: front matter, tags, value coercion."""

from __future__ import annotations

import math
import re

import yaml

from ingest.errors import ParseError

NUMERIC_KEYS = frozenset({"chapter"})  # compared as numbers, whatever the cards say
MAX_YAML_VALUES = 10_000  # values in one YAML document once its aliases are expanded
_INTEGER = re.compile(r"-?\d+")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def coerce(value):
    """Turn '2' into 2 so `chapter <= 2` compares numbers, and keep anything else.

    A NaN or an infinity becomes text ('nan'): chromadb drops a NaN value, which
    would turn `chapter: .nan` into canon without a chapter, common knowledge.
    """
    if isinstance(value, str):
        stripped = value.strip()
        if _INTEGER.fullmatch(stripped):
            return int(stripped)
        return stripped
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def required_flags(value) -> list[str]:
    """The quest flags a `requires:` condition names, as a list chromadb can store.

    `requires: met_sefa`, `requires: [a, b]`, `requires: {flag: met_sefa}` and
    `requires: {flags: [a, b]}` are understood. Any other shape becomes one flag
    that no game state can set, so a mistyped condition hides its canon rather
    than showing it to everyone.
    """
    if isinstance(value, dict) and set(value) <= {"flag", "flags"}:
        value = [*_as_list(value.get("flag")), *_as_list(value.get("flags"))]
    items = _as_list(value)
    if items and all(isinstance(v, str) and v.strip() for v in items):
        return [v.strip() for v in items]
    return [f"unreadable requires: {value!r}"]


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def meta_key(key) -> str:
    """A metadata key as stored: `Chapter` and `chapter` are one key, so NPC limits and filters see both."""
    return str(key).strip().casefold()


def clean_meta(meta: dict) -> dict:
    """Keep values chromadb can store: scalars and non-empty lists of scalars, under case-folded keys.

    A `requires:` condition is stored as the list `requires_flags`.
    """
    out = {}
    for key, value in meta.items():
        key = meta_key(key)
        if value is None:
            continue
        if key in ("requires", "requires_flags"):
            out["requires_flags"] = required_flags(value)
            continue
        if isinstance(value, (list, tuple)):
            items = [coerce(v) for v in value if isinstance(v, (str, int, float, bool))]
            if items:
                out[key] = items
        elif isinstance(value, (str, int, float, bool)):
            out[key] = coerce(value)
        else:
            out[key] = str(value)
    return out


class AliasBomb(yaml.YAMLError):
    """A YAML document whose aliases expand past MAX_YAML_VALUES values (nine aliases of nine of nine...)."""


class _BoundedLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a document whose aliases expand past MAX_YAML_VALUES values.

    PyYAML builds an alias as a shared object, so loading is cheap, but anything
    that walks or prints the values (metadata as text, a card's fields) pays
    for the expansion: 500 bytes of front matter became gigabytes.
    """

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values a node stands for with every alias expanded (each shared node counted once per use)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise AliasBomb("an alias refers to the collection it is in")
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, sizes, open_nodes)
        if size > MAX_YAML_VALUES:
            raise AliasBomb(f"its aliases expand to over {MAX_YAML_VALUES:,} values")
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def load_yaml(text: str):
    """``yaml.safe_load`` bounded against alias bombs: the one way ingest reads YAML.

    Raises:
        AliasBomb: aliases expand past MAX_YAML_VALUES values, or refer to their own collection.
        yaml.YAMLError: the text is not YAML.
    """
    return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass: no arbitrary objects


def split_front_matter(text: str, path: str) -> tuple[dict, str]:
    """Read a leading YAML block (--- ... ---) into metadata; return it and the body."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        data = load_yaml(match.group(1)) or {}
    except AliasBomb as exc:
        raise ParseError(f"YAML front matter refused: {exc}", path, 1) from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ParseError(f"invalid YAML front matter: {exc.__class__.__name__}", path,
                         None if line is None else line + 2) from None
    if not isinstance(data, dict):
        raise ParseError("front matter must be a YAML mapping", path, 1)
    return clean_meta(data), text[match.end():]


def tags_to_meta(tags: list[str]) -> dict:
    """Turn script tags like `chapter:1` or `Region: Saltreach` into metadata (keys case-folded);
    bare tags go to `tags`."""
    meta: dict = {}
    bare = []
    for tag in tags:
        tag = tag.strip()
        if not tag:
            continue
        key, sep, value = tag.partition(":")
        if sep and key.strip() and value.strip():
            meta[meta_key(key)] = coerce(value)
        else:
            bare.append(tag)
    if bare:
        meta["tags"] = bare
    return meta
