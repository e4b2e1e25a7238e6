"""NPC knowledge limits and quest-flag conditions, in a module of their own so `kb check` can apply them without loading retrieval."""

from __future__ import annotations


def within_limits(meta: dict, limits: dict) -> bool:
    """An NPC may know this chunk: numeric limits are maxima, lists are allowed values.

    A chunk without the limited key is common knowledge and always visible.
    """
    for key, limit in limits.items():
        if key not in meta:
            continue
        values = meta[key] if isinstance(meta[key], list) else [meta[key]]
        if isinstance(limit, list):
            allowed = {str(v) for v in limit}
            if not any(str(v) in allowed for v in values):
                return False
        elif isinstance(limit, (int, float)) and not isinstance(limit, bool):
            if any(isinstance(v, (int, float)) and v > limit for v in values):
                return False
        elif not any(str(v) == str(limit) for v in values):
            return False
    return True


def requirements_met(meta: dict, flags: frozenset[str] | None) -> bool:
    """Every quest flag the chunk `requires:` is set (``flags`` None: nothing is gated)."""
    return flags is None or all(flag in flags for flag in meta.get("requires_flags", ()))
