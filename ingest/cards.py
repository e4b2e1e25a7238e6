"""NPC cards: YAML files in an npcs/ folder, validated field by field."""

from __future__ import annotations

import yaml

from ingest.errors import IngestError, ParseError
from ingest.meta import coerce, meta_key

DEFAULT_UNKNOWN = "I don't know anything about that."
_REQUIRED = ("name", "role", "persona")
UNKNOWN_CANON = ("common", "hidden")  # canon without a limited key: common knowledge, or hidden (strict)


def parse_card(text: str, path: str) -> dict:
    """Read and check one card; the error names the field that is wrong.

    Raises:
        IngestError: invalid YAML, a missing or mistyped field.
    """
    try:
        card = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ParseError("invalid YAML in NPC card", path, mark.line + 1 if mark else None) from None
    if not isinstance(card, dict):
        raise IngestError("NPC card must be a YAML mapping", path)
    for field in _REQUIRED:
        if not isinstance(card.get(field), str) or not card[field].strip():
            raise IngestError(f"NPC card field '{field}' is missing or not text", path)
    knows = card.get("knows") or {}
    if not isinstance(knows, dict):
        raise IngestError("NPC card field 'knows' must be a mapping like {chapter: 2}", path)
    limits = {}
    for key, value in knows.items():
        key = meta_key(key)
        if isinstance(value, list):
            if not value or not all(isinstance(v, (str, int, float)) for v in value):
                raise IngestError(f"NPC card field 'knows.{key}' must list plain values", path)
            limits[key] = [coerce(v) for v in value]
        elif isinstance(value, (str, int, float)):
            limits[key] = coerce(value)
        else:
            raise IngestError(f"NPC card field 'knows.{key}' must be a value or a list", path)
    unknown = card.get("unknown_answer", DEFAULT_UNKNOWN)
    if not isinstance(unknown, str):
        raise IngestError("NPC card field 'unknown_answer' must be text", path)
    unknown_canon = card.get("unknown", UNKNOWN_CANON[0])
    if unknown_canon not in UNKNOWN_CANON:
        raise IngestError("NPC card field 'unknown' must be 'common' (canon without a limited key is "
                          "common knowledge) or 'hidden'", path)
    return {
        "name": card["name"].strip(),
        "role": card["role"].strip(),
        "persona": card["persona"].strip(),
        "speaker": str(card.get("speaker") or card["name"]).strip(),
        "knows": limits,
        "unknown_answer": unknown.strip(),
        "unknown": unknown_canon,
    }
