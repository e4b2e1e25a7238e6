"""JSON files (.json): dialogue scenes when the document has their shape, else readable lines.

Supported dialogue shapes (a turn is `{"speaker": ..., "text": ...}`; a turn
without a speaker, or with a null one, is narration):
- a list of turns, at least one of them with a `speaker` key -> one section;
- a scene object `{"scene"?: ..., "turns": [...], ...}` -> one section whose
  metadata is every other key holding a scalar or a list of scalars
  (`scene`, `chapter`, `region`, ...);
- a list of scene objects -> one section each.
Keys of a turn other than speaker and text are ignored (a section's metadata
cannot vary line by line).
Any other JSON -> one plain section of `path.to.key: value` lines
(`items[0].name: Reed-whistle`), meta["title"] = the file name without its
extension.
Errors: invalid JSON (line from the decoder); a turn without `text`, or a
turn that is not an object, named by its JSON path (`turns[3]`, `[1].turns[0]`).
"""

from __future__ import annotations

import json
from pathlib import PurePath

from ingest.errors import ParseError
from ingest.parsers.dialogue import dialogue_section
from ingest.types import Section


def parse(text: str, path: str) -> list[Section]:
    """Read a JSON document as dialogue scenes or as flattened lines.

    Raises:
        ParseError: the JSON is invalid or a dialogue turn is malformed.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: {exc.msg}", path, exc.lineno) from None
    scenes = _scenes(document)
    if scenes is None:
        lines = list(_flattened(document, ""))
        if not lines:
            return []
        return [Section(text="\n".join(lines), meta={"title": PurePath(path).stem})]
    sections = [_scene_section(scene, where, path) for scene, where in scenes]
    return [section for section in sections if section]


def _scenes(document) -> list[tuple[dict, str]] | None:
    """The document's scenes with the JSON path of their turns, or None when it is not dialogue."""
    if _is_scene(document):
        return [(document, "turns")]
    if _is_turn_list(document):
        return [({"turns": document}, "")]
    if isinstance(document, list) and document and all(_is_scene(item) for item in document):
        return [(scene, f"[{index}].turns") for index, scene in enumerate(document)]
    return None


def _is_scene(value) -> bool:
    """An object with a list of turns."""
    return isinstance(value, dict) and isinstance(value.get("turns"), list)


def _is_turn_list(value) -> bool:
    """A list of objects, some of them with a speaker."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(item, dict) for item in value)
            and any("speaker" in item for item in value))


def _scene_section(scene: dict, where: str, path: str) -> Section | None:
    """One scene object as a dialogue Section."""
    turns = []
    for index, turn in enumerate(scene["turns"]):
        if not isinstance(turn, dict):
            raise ParseError(f"turn {where}[{index}] is not an object", path)
        if turn.get("text") is None:
            raise ParseError(f'turn {where}[{index}] has no "text"', path)
        speaker = turn.get("speaker")
        turns.append((str(speaker) if speaker else None, str(turn["text"])))
    meta = {key: value for key, value in scene.items()
            if key != "turns" and not isinstance(value, dict)}
    return dialogue_section(turns, meta)


def _flattened(value, prefix: str):
    """`path.to.key: value` lines for every scalar in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flattened(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flattened(item, f"{prefix}[{index}]")
    else:
        scalar = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
        yield f"{prefix}: {scalar}" if prefix else scalar
