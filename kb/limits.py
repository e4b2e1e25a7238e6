"""NPC knowledge limits and quest-flag conditions, in a module of their own so `kb check` can apply them without loading retrieval.

Limits fail closed: a chunk whose value for a limited key cannot be compared
with the card's limit (`chapter: four` against `chapter: 1`) is hidden, and
ingest and `kb status` warn about it (``limit_warnings``).
"""

from __future__ import annotations

import math
from typing import Iterable

from ingest.meta import NUMERIC_KEYS


def is_number(value) -> bool:
    """A value a numeric limit can compare: a finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def within_limits(meta: dict, limits: dict, strict: bool = False) -> bool:
    """An NPC may know this chunk: numeric limits are maxima, lists are allowed values.

    A chunk without the limited key is common knowledge, unless ``strict`` (a card's
    `unknown: hidden`); a value a numeric limit cannot compare ('four', 'ch4') hides the chunk.
    """
    for key, limit in limits.items():
        if key not in meta:
            if strict:
                return False
            continue
        values = meta[key] if isinstance(meta[key], list) else [meta[key]]
        if isinstance(limit, list):
            allowed = {str(v) for v in limit}
            if not any(str(v) in allowed for v in values):
                return False
        elif is_number(limit):
            if not all(is_number(v) and v <= limit for v in values):
                return False
        elif not any(str(v) == str(limit) for v in values):
            return False
    return True


def requirements_met(meta: dict, flags: frozenset[str] | None) -> bool:
    """Every quest flag the chunk `requires:` is set (``flags`` None: nothing is gated)."""
    return flags is None or all(flag in flags for flag in meta.get("requires_flags", ()))


def numeric_keys(card_limits: Iterable[dict]) -> set[str]:
    """Keys compared as numbers: chapter, and any key a card limits with a number."""
    return set(NUMERIC_KEYS) | {k for limits in card_limits for k, v in limits.items() if is_number(v)}


def non_numbers(metas: Iterable[dict]) -> dict:
    """Per metadata key, the first value that is not a number: what a numeric limit could not compare.

    Kept in the manifest at ingest, so the warnings follow the cards as they change.
    """
    found: dict = {}
    for meta in metas:
        for key, value in meta.items():
            if key not in found:
                odd = next((v for v in (value if isinstance(value, list) else [value]) if not is_number(v)), None)
                if odd is not None:
                    found[key] = odd if isinstance(odd, str) else str(odd)
    return found


def limit_warnings(files: Iterable[tuple[str, dict]], card_limits: Iterable[dict]) -> list[dict]:
    """``{path, warning}`` for each file (source, its ``non_numbers``) with a value numeric limits cannot compare."""
    numeric = numeric_keys(card_limits)
    return [{"path": source,
             "warning": f"{key} is {value!r}, which cannot be compared with a number: NPCs limited by "
                        f"{key} will not see it (write {key} as a number, e.g. `{key}: 4`)"}
            for source, odd in files for key, value in sorted(odd.items()) if key in numeric]
