"""Training data from the ingested dialogue: one example per spoken line, chat or legacy completion format."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.cards import Card
from ingest.parsers.dialogue import CHOICE_MARK
from kb.errors import KBError
from kb.npc import card_named, persona_prompt
from kb.retrieve import Corpus

if TYPE_CHECKING:
    from kb.api import KnowledgeBase

FORMATS = ("chat", "completion")
SEPARATOR = "\n\n###\n\n"        # ends every completion-format prompt, and appears nowhere else
STOP = " END"                     # ends every completion; inference passes stop=[" END"]
SCENE_KEYS = ("scene", "node", "knot")
CONTEXT_TURNS = 6
OPENING = "(The scene opens.)"


@dataclass
class Turn:
    """One line of a scene: a speaker's line, or narration (speaker None)."""

    speaker: str | None
    text: str

    def render(self) -> str:
        return f"{self.speaker}: {self.text}" if self.speaker else self.text

    @property
    def spoken(self) -> bool:
        """A character says it (narration and the player's menu choices are context only)."""
        return bool(self.speaker) and not self.text.startswith(CHOICE_MARK)


@dataclass
class Scene:
    """One scene, node or knot of a script, its chunks rejoined in order."""

    source: str
    name: str
    info: str
    turns: list[Turn]


@dataclass
class BuildReport:
    """What `kb finetune build --json` prints."""

    format: str
    out: str
    examples: int
    validation_out: str | None
    validation: int
    scenes: int
    duplicates: int
    skipped: int
    speakers: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _turn(line: str, speakers: list[str]) -> Turn:
    """Read a chunk line back into a turn, trusting only the speakers the chunk's metadata lists."""
    for name in sorted(speakers, key=len, reverse=True):
        if line.startswith(f"{name}: "):
            return Turn(name, line[len(name) + 2:].strip())
    return Turn(None, line.strip())


def _plain(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def scene_info(meta: dict, name: str) -> str:
    """The scene's specific information: title, scene, chapter and region, as the notes' prompts carry it."""
    title = meta.get("title") or meta.get("story")
    parts = [f"title: {_plain(title)}"] if title else []
    if name and name != title:
        parts.append(f"scene: {name}")
    parts += [f"{key}: {_plain(meta[key])}" for key in ("chapter", "region")
              if meta.get(key) not in (None, "", [])]
    return "; ".join(parts) or "(none)"


def scenes(corpus: Corpus) -> list[Scene]:
    """Every dialogue scene in the store, by source then position, with its lines in order."""
    groups: dict[tuple[str, str, str], list[tuple[str, dict]]] = {}
    for _, text, meta in corpus.chunks():
        name = next((str(meta[k]) for k in SCENE_KEYS if meta.get(k) not in (None, "")), None)
        if name is None and not meta.get("speaker"):
            continue
        key = (meta.get("source", ""), meta.get("file_key", ""), name or "")
        groups.setdefault(key, []).append((text, meta))
    for chunks in groups.values():
        chunks.sort(key=lambda chunk: chunk[1].get("chunk_index", 0))
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[0][1], item[1][0][1].get("chunk_index", 0)))
    result = []
    for (source, _, name), chunks in ordered:
        turns = [_turn(line, meta.get("speaker", []))
                 for text, meta in chunks for line in text.split("\n") if line.strip()]
        result.append(Scene(source, name, scene_info(chunks[0][1], name), turns))
    return result


def system_for(speaker: str, card: Card | None) -> str:
    """The chat system message: the NPC card's persona when the speaker has one."""
    if card:
        return persona_prompt(card)
    return f"You are {speaker}, a character in a game. Stay in character."


def example(fmt: str, scene: Scene, index: int, context_turns: int, system: str) -> dict:
    """The training example whose target is the scene's line ``index``."""
    turn = scene.turns[index]
    context = [t.render() for t in scene.turns[max(0, index - context_turns):index]] if context_turns else []
    if fmt == "chat":
        transcript = "\n".join(context) or OPENING
        return {"messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Specific information: {scene.info}\n\n{transcript}"},
            {"role": "assistant", "content": turn.text},
        ]}
    prompt = f"Specific information: {scene.info}\n\n" + "".join(f"{line}\n" for line in context)
    return {"prompt": f"{prompt}{turn.speaker}:{SEPARATOR}", "completion": f" {turn.text}{STOP}"}


def _wanted_speakers(names: tuple[str, ...] | list[str], known_cards: dict, spoken: set[str]) -> set[str] | None:
    """The script speaker names a --speaker filter means (a card's name stands for its speaker).

    Raises:
        KBError: a name has no lines in the ingested dialogue.
    """
    if not names:
        return None
    wanted = set()
    for name in names:
        card = card_named(known_cards, name)
        target = (card.speaker if card else name).casefold()
        found = {s for s in spoken if s.casefold() == target}
        if not found:
            listing = ", ".join(sorted(spoken)) or "none"
            raise KBError(f"no lines by '{name}' in the ingested dialogue; speakers there: {listing}")
        wanted |= found
    return wanted


def split_validation(lines: list[str], share: float) -> tuple[list[str], list[str]]:
    """Hold out a share of the examples, chosen by content hash (the same file always splits the same)."""
    if share <= 0 or len(lines) < 2:
        return lines, []
    count = min(len(lines) - 1, max(1, round(len(lines) * share)))
    held = set(sorted(range(len(lines)), key=lambda i: hashlib.sha1(lines[i].encode()).hexdigest())[:count])
    return ([line for i, line in enumerate(lines) if i not in held],
            [line for i, line in enumerate(lines) if i in held])


def validation_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.validation{out.suffix or '.jsonl'}")


def build_lines(kb: "KnowledgeBase", fmt: str = "chat", speakers=(),
                context_turns: int = CONTEXT_TURNS) -> tuple[list[str], dict]:
    """The examples as JSONL lines, in script order, deduplicated; and the counts behind them.

    Raises:
        KBError: an unknown format, a speaker with no lines, or no dialogue at all.
    """
    if fmt not in FORMATS:
        raise KBError(f"unknown format '{fmt}'; use one of: {', '.join(FORMATS)}")
    found = scenes(kb.corpus)
    known = kb.npcs()
    by_speaker = {c.speaker.casefold(): c for c in known.values()}
    spoken = {t.speaker for s in found for t in s.turns if t.spoken}
    wanted = _wanted_speakers(speakers, known, spoken)
    lines: list[str] = []
    seen: set[str] = set()
    counts = {"scenes": len(found), "duplicates": 0, "skipped": 0, "speakers": {}}
    for scene in found:
        for index, turn in enumerate(scene.turns):
            if not turn.spoken or (wanted is not None and turn.speaker not in wanted):
                continue
            if fmt == "completion" and (STOP in turn.text or SEPARATOR in turn.text):
                counts["skipped"] += 1  # the stop sequence inside a line would cut it short
                continue
            system = system_for(turn.speaker, by_speaker.get(turn.speaker.casefold()))
            line = json.dumps(example(fmt, scene, index, context_turns, system), ensure_ascii=False)
            if line in seen:
                counts["duplicates"] += 1
                continue
            seen.add(line)
            lines.append(line)
            counts["speakers"][turn.speaker] = counts["speakers"].get(turn.speaker, 0) + 1
    if not lines:
        raise KBError(f"no dialogue lines in the knowledge base at {kb.location}; "
                      "ingest your scripts first (kb ingest scripts/)")
    counts["speakers"] = dict(sorted(counts["speakers"].items(), key=lambda item: (-item[1], item[0])))
    return lines, counts


def _write(path: Path, lines: list[str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    except OSError as exc:
        raise KBError(f"{path}: cannot write: {exc.strerror}") from None


def build(kb: "KnowledgeBase", out: Path, fmt: str = "chat", speakers=(),
          context_turns: int = CONTEXT_TURNS, validation_split: float = 0.0) -> BuildReport:
    """Write the training file (and, with a split, its validation file) from the ingested dialogue.

    Raises:
        KBError: nothing to build from, or the files cannot be written.
    """
    out = Path(out)
    lines, counts = build_lines(kb, fmt, speakers, context_turns)
    train, held = split_validation(lines, validation_split)
    _write(out, train)
    held_path = validation_path(out) if held else None
    if held_path:
        _write(held_path, held)
    return BuildReport(format=fmt, out=str(out), examples=len(train),
                       validation_out=str(held_path) if held_path else None, validation=len(held),
                       scenes=counts["scenes"], duplicates=counts["duplicates"],
                       skipped=counts["skipped"], speakers=counts["speakers"])
