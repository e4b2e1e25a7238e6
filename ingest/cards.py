"""NPC cards: YAML files in an npcs/ folder, validated field by field into a `Card` once, at ingest."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import yaml

from ingest.errors import IngestError, ParseError
from ingest.meta import NUMERIC_KEYS, AliasBomb, coerce, load_yaml, meta_key

DEFAULT_UNKNOWN = "I don't know anything about that."
_REQUIRED = ("name", "role", "persona")
UNKNOWN_CANON = ("common", "hidden")  # canon without a limited key: common knowledge, or hidden (strict)


@dataclass(frozen=True)
class Card:
    """One NPC: who they are, the name their lines carry, and the metadata limits of what they know."""

    name: str
    role: str
    persona: str
    speaker: str
    knows: dict = field(default_factory=dict)
    unknown_answer: str = DEFAULT_UNKNOWN
    unknown: str = UNKNOWN_CANON[0]
    source: str = ""

    @property
    def strict(self) -> bool:
        """Canon without a limited key is hidden from this NPC too (`unknown: hidden`)."""
        return self.unknown == "hidden"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Card":
        """A card as stored in the manifest (fields added since it was stored take their defaults)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _limit_value(value, key: str, path: str):
    """One plain value of a `knows` limit: text or a finite number (a number for `chapter`)."""
    bad = isinstance(value, bool) or not isinstance(value, (str, int, float)) or (
        isinstance(value, float) and not math.isfinite(value))
    value = value if bad else coerce(value)
    if bad or (key in NUMERIC_KEYS and not isinstance(value, (int, float))):
        kind = "a number like 2" if key in NUMERIC_KEYS else "a finite number or a name"
        raise IngestError(f"NPC card field 'knows.{key}' must be {kind}, not {value!r}", path)
    return value


def _limits(knows, path: str) -> dict:
    if not isinstance(knows, dict):
        raise IngestError("NPC card field 'knows' must be a mapping like {chapter: 2}", path)
    limits = {}
    for key, value in knows.items():
        key = meta_key(key)
        if isinstance(value, list):
            if not value:
                raise IngestError(f"NPC card field 'knows.{key}' must list plain values", path)
            limits[key] = [_limit_value(v, key, path) for v in value]
        else:
            limits[key] = _limit_value(value, key, path)
    return limits


def parse_card(text: str, path: str) -> Card:
    """Read and check one card; the error names the field that is wrong.

    Raises:
        IngestError: invalid YAML, a missing or mistyped field.
    """
    try:
        card = load_yaml(text)
    except AliasBomb as exc:
        raise ParseError(f"NPC card refused: {exc}", path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ParseError("invalid YAML in NPC card", path, mark.line + 1 if mark else None) from None
    if not isinstance(card, dict):
        raise IngestError("NPC card must be a YAML mapping", path)
    for name in _REQUIRED:
        if not isinstance(card.get(name), str) or not card[name].strip():
            raise IngestError(f"NPC card field '{name}' is missing or not text", path)
    speaker = card.get("speaker") or card["name"]
    if not isinstance(speaker, str):
        raise IngestError(f"NPC card field 'speaker' must be one name, not {speaker!r}", path)
    unknown = card.get("unknown_answer", DEFAULT_UNKNOWN)
    if not isinstance(unknown, str):
        raise IngestError("NPC card field 'unknown_answer' must be text", path)
    unknown_canon = card.get("unknown", UNKNOWN_CANON[0])
    if unknown_canon not in UNKNOWN_CANON:
        raise IngestError("NPC card field 'unknown' must be 'common' (canon without a limited key is "
                          "common knowledge) or 'hidden'", path)
    return Card(name=card["name"].strip(), role=card["role"].strip(), persona=card["persona"].strip(),
                speaker=speaker.strip(), knows=_limits(card.get("knows") or {}, path),
                unknown_answer=unknown.strip(), unknown=unknown_canon, source=path)
