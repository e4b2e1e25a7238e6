"""The fine-tune path beside retrieval: training data from the ingested dialogue, a checker, cost, jobs.

Retrieval puts the canon's facts in front of a model; fine-tuning teaches a
model a voice. The studio's notes found the second costly and unreliable for
facts, so this module exists to make the comparison cheap to run, not to
replace retrieval:

- ``build`` turns every spoken line of the ingested scripts into one example
  (the line is the target; the scene's specific information and the turns
  before it are the input), in the chat format or the legacy
  prompt/completion format with its fixed separator and stop sequence;
- ``check_file`` validates a training file the way OpenAI's data preparation
  tool did, line by line, then counts tokens and estimates the cost from the
  editable price table ``kb/prices.toml``;
- ``submit``, ``status``, ``follow``, ``jobs``, ``cancel`` drive the job
  through ``kb.llm``, the only module that talks to the openai client.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ingest.parsers.dialogue import CHOICE_MARK
from ingest.tokens import OFFLINE_ENCODINGS, count_tokens
from kb import llm
from kb.config import Settings
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
MIN_EXAMPLES = 10                 # the fine-tuning API refuses smaller training files
RECOMMENDED_EXAMPLES = {"chat": 50, "completion": 500}
SUFFIX_MAX = 40
CHAT_ROLES = ("system", "user", "assistant")
TOKENS_PER_MESSAGE = 3            # OpenAI's chat overhead per message ...
REPLY_PRIMING = 3                 # ... and per example
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
OPENING = "(The scene opens.)"


# -- build ----------------------------------------------------------------


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
    groups: dict[tuple[str, str, str], list[int]] = {}
    for pos, meta in enumerate(corpus.metas):
        name = next((str(meta[k]) for k in SCENE_KEYS if meta.get(k) not in (None, "")), None)
        if name is None and not meta.get("speaker"):
            continue
        key = (meta.get("source", ""), meta.get("file_key", ""), name or "")
        groups.setdefault(key, []).append(pos)
    for positions in groups.values():
        positions.sort(key=lambda p: corpus.metas[p].get("chunk_index", 0))
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[0][1],
                                                       corpus.metas[item[1][0]].get("chunk_index", 0)))
    result = []
    for (source, _, name), positions in ordered:
        turns = [_turn(line, corpus.metas[p].get("speaker", []))
                 for p in positions for line in corpus.texts[p].split("\n") if line.strip()]
        result.append(Scene(source, name, scene_info(corpus.metas[positions[0]], name), turns))
    return result


def system_for(speaker: str, card: dict | None) -> str:
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
        target = (card["speaker"] if card else name).casefold()
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
    by_speaker = {c["speaker"].casefold(): c for c in known.values()}
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


# -- prices and cost ------------------------------------------------------


def load_prices(path: Path | str | None = None) -> dict:
    """The price table: the shipped kb/prices.toml, or an edited copy.

    Raises:
        KBError: the file cannot be read, has no [models.*] entries, or an entry has a wrong field.
    """
    where = str(path) if path else "kb/prices.toml"
    try:
        text = Path(path).read_text(encoding="utf-8") if path else \
            resources.files("kb").joinpath("prices.toml").read_text(encoding="utf-8")
        table = tomllib.loads(text)
    except OSError as exc:
        raise KBError(f"{where}: cannot read the price table: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise KBError(f"{where}: the price table is not UTF-8 text (bad byte at offset {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise KBError(f"{where}: invalid TOML: {exc}") from None
    models = table.get("models")
    if not isinstance(models, dict) or not models:
        raise KBError(f"{where}: the price table has no [models.NAME] entries")
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise KBError(f"{where}: models.{name} must be a table with format, training_per_1k, max_tokens")
        missing = [k for k in ("format", "training_per_1k", "max_tokens") if k not in entry]
        if missing:
            raise KBError(f"{where}: model '{name}' lacks {', '.join(missing)}")
        if entry["format"] not in FORMATS:
            raise KBError(f"{where}: model '{name}': format must be one of {', '.join(FORMATS)}")
        for key in ("training_per_1k", "max_tokens"):
            if isinstance(entry[key], bool) or not isinstance(entry[key], (int, float)):
                raise KBError(f"{where}: model '{name}': {key} must be a number")
        if entry.get("encoding", "cl100k_base") not in OFFLINE_ENCODINGS:
            raise KBError(f"{where}: model '{name}': encoding must be one of {', '.join(OFFLINE_ENCODINGS)} "
                          "(the tiktoken files that ship offline)")
    if not isinstance(table.setdefault("defaults", {}), dict):
        raise KBError(f"{where}: [defaults] must be a table")
    epochs = table["defaults"].get("epochs", 4)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise KBError(f"{where}: defaults.epochs must be a whole number of at least 1")
    table["path"] = where
    return table


def price_entry(prices: dict, model: str | None, fmt: str) -> tuple[str, dict]:
    """The model (or the table's default for the format) and its row.

    Raises:
        KBError: the model is not in the table.
    """
    model = model or prices["defaults"].get(fmt) or next(
        name for name, entry in prices["models"].items() if entry["format"] == fmt)
    entry = prices["models"].get(model)
    if entry is None:
        raise KBError(f"no price for model '{model}' in {prices['path']}; add it there or use one of: "
                      + ", ".join(prices["models"]))
    return model, entry


def training_cost(tokens: int, epochs: int, price_per_1k: float) -> float:
    """Dollars to train: tokens in the file, times epochs, times the price per 1K tokens."""
    return tokens * epochs * price_per_1k / 1000


# -- check ----------------------------------------------------------------


@dataclass
class Problem:
    """One finding of the checker; ``line`` is None for the file as a whole."""

    line: int | None
    message: str

    def to_json(self) -> dict:
        return {"line": self.line, "message": self.message}

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass
class CheckReport:
    """What `kb finetune check --json` prints."""

    path: str
    format: str | None
    model: str | None
    examples: int
    errors: list[Problem]
    warnings: list[Problem]
    tokens: dict
    cost: dict

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {"path": self.path, "format": self.format, "model": self.model, "ok": self.ok,
                "examples": self.examples, "errors": [p.to_json() for p in self.errors],
                "warnings": [p.to_json() for p in self.warnings], "tokens": self.tokens,
                "cost": self.cost}


def line_format(item: dict) -> str | None:
    if "messages" in item:
        return "chat"
    if "prompt" in item or "completion" in item:
        return "completion"
    return None


def chat_problems(item: dict) -> list[str]:
    """What is wrong with one chat example: message shape, roles and their order, empty content."""
    messages = item.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list"]
    problems = []
    roles = []
    for n, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            problems.append(f"message {n} is not an object")
            continue
        role = message.get("role")
        if role not in CHAT_ROLES:
            problems.append(f"message {n}: role {role!r} is not system, user or assistant")
        content = message.get("content")
        if not isinstance(content, str):
            problems.append(f"message {n} ({role}): content must be text")
        elif not content.strip():
            problems.append(f"message {n} ({role}): empty content")
        roles.append(role)
    if problems:
        return problems
    offset = 1 if roles[0] == "system" else 0
    body = roles[offset:]
    if "system" in body:
        return [f"message {offset + body.index('system') + 1}: a system message may only come first"]
    for n, role in enumerate(body):
        expected = "user" if n % 2 == 0 else "assistant"
        if role != expected:
            return [f"message {offset + n + 1}: expected {expected}, got {role} "
                    "(user and assistant must alternate, starting with user)"]
    if not body or body[-1] != "assistant":
        return ["the last message must be the assistant's (the line to learn)"]
    return []


def completion_problems(item: dict) -> tuple[list[str], list[str]]:
    """Errors and warnings of one prompt/completion example: separator, leading space, stop sequence."""
    prompt, completion = item.get("prompt"), item.get("completion")
    errors = []
    if not isinstance(prompt, str):
        errors.append("'prompt' must be text")
    if not isinstance(completion, str):
        errors.append("'completion' must be text")
    if errors:
        return errors, []
    warnings = []
    if not prompt.replace(SEPARATOR, "").strip():
        errors.append("empty prompt")
    count = prompt.count(SEPARATOR)
    if count == 0:
        errors.append(f"the prompt does not end with the separator {SEPARATOR!r}")
    elif count > 1:
        errors.append(f"the separator {SEPARATOR!r} appears {count} times in the prompt; "
                      "it must appear once, at the end")
    elif not prompt.endswith(SEPARATOR):
        errors.append(f"the separator {SEPARATOR!r} is not at the end of the prompt")
    if SEPARATOR in completion:
        errors.append(f"the completion contains the separator {SEPARATOR!r}")
    if not completion.replace(STOP, "").strip():
        errors.append("empty completion")
    elif not completion.startswith(" "):
        errors.append("the completion does not start with a space")
    elif completion[1].isspace():
        errors.append("the completion starts with more than one whitespace character")
    if not completion.endswith(STOP):
        errors.append(f"the completion does not end with the stop sequence {STOP!r}")
    elif completion.count(STOP) > 1:
        errors.append(f"the stop sequence {STOP!r} also appears inside the completion "
                      "(generation would stop there)")
    elif completion[:-len(STOP)][-1:].isspace():
        warnings.append(f"whitespace before the stop sequence {STOP!r}")
    return errors, warnings


def example_tokens(item: dict, fmt: str, encoding_name: str) -> int:
    """Tokens one example costs: chat counted the way OpenAI bills messages, completion as both texts."""
    if fmt == "chat":
        return REPLY_PRIMING + sum(TOKENS_PER_MESSAGE + count_tokens(m["role"], encoding_name)
                                   + count_tokens(m["content"], encoding_name) for m in item["messages"])
    return count_tokens(item["prompt"], encoding_name) + count_tokens(item["completion"], encoding_name)


def _lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KBError(f"{path}: cannot read: {exc.strerror}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def check_file(path: Path | str, model: str | None = None, epochs: int | None = None,
               prices: dict | None = None, training: bool = True) -> CheckReport:
    """Validate a training file line by line, then count its tokens and estimate the training cost.

    A validation file (``training=False``) is held to every rule but the minimum size.

    Raises:
        KBError: the file cannot be read, or the model is not in the price table.
    """
    path = Path(path)
    prices = prices or load_prices()
    errors: list[Problem] = []
    warnings: list[Problem] = []
    parsed: list[tuple[int, dict, str]] = []
    for number, raw in enumerate(_lines(path), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            errors.append(Problem(number, "not UTF-8 text"))
            continue
        if not text.strip():
            errors.append(Problem(number, "empty line"))
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append(Problem(number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(item, dict):
            errors.append(Problem(number, "not a JSON object"))
            continue
        kind = line_format(item)
        if kind is None:
            errors.append(Problem(number, "neither a chat example ('messages') nor a "
                                          "prompt/completion example"))
            continue
        parsed.append((number, item, kind))
    fmt = parsed[0][2] if parsed else None
    model_name, entry, enc = None, None, None
    if fmt:
        model_name, entry = price_entry(prices, model, fmt)
        enc = entry.get("encoding", "cl100k_base")
        if entry["format"] != fmt:
            errors.append(Problem(None, f"{model_name} is trained on {entry['format']} files; "
                                        f"this is a {fmt} file"))
    epochs = epochs or int(prices["defaults"].get("epochs", 4))
    seen: dict[str, int] = {}
    counts: list[int] = []
    for number, item, kind in parsed:
        if kind != fmt:
            errors.append(Problem(number, f"a {kind} example in a {fmt} file"))
            continue
        if kind == "chat":
            line_errors, line_warnings = chat_problems(item), []
        else:
            line_errors, line_warnings = completion_problems(item)
        errors += [Problem(number, message) for message in line_errors]
        warnings += [Problem(number, message) for message in line_warnings]
        key = json.dumps(item, sort_keys=True, ensure_ascii=False)
        if key in seen:
            errors.append(Problem(number, f"duplicate of line {seen[key]}"))
        else:
            seen[key] = number
        if line_errors:
            continue
        tokens = example_tokens(item, kind, enc)
        counts.append(tokens)
        if tokens > entry["max_tokens"]:
            errors.append(Problem(number, f"{tokens} tokens, over the {entry['max_tokens']}-token "
                                          f"limit of {model_name}"))
    examples = sum(1 for _, _, kind in parsed if kind == fmt)
    if examples == 0:
        errors.append(Problem(None, "no examples"))
    elif not training:
        pass
    elif examples < MIN_EXAMPLES:
        errors.append(Problem(None, f"{examples} examples; the fine-tuning API needs at least {MIN_EXAMPLES}"))
    elif examples < RECOMMENDED_EXAMPLES[fmt]:
        warnings.append(Problem(None, f"{examples} examples; at least {RECOMMENDED_EXAMPLES[fmt]} are "
                                      "recommended (quality rises roughly with each doubling)"))
    errors.sort(key=lambda p: (p.line is None, p.line or 0))  # the file as a whole comes last
    warnings.sort(key=lambda p: (p.line is None, p.line or 0))
    return CheckReport(str(path), fmt, model_name, examples, errors, warnings,
                       token_stats(counts, entry["max_tokens"] if entry else None),
                       cost_estimate(counts, model_name, entry, epochs))


def token_stats(counts: list[int], limit: int | None) -> dict:
    """Per-example token figures of the examples that passed the checks."""
    if not counts:
        return {"total": 0, "counted": 0}
    return {"total": sum(counts), "counted": len(counts), "min": min(counts), "max": max(counts),
            "mean": round(statistics.mean(counts), 1), "median": statistics.median(counts),
            "limit": limit, "over_limit": sum(1 for c in counts if limit and c > limit)}


def cost_estimate(counts: list[int], model: str | None, entry: dict | None, epochs: int) -> dict:
    """Billed tokens and dollars for training (examples over the limit are billed up to it)."""
    if entry is None:
        return {}
    billed = sum(min(c, entry["max_tokens"]) for c in counts)
    price = entry["training_per_1k"]
    return {"model": model, "epochs": epochs, "tokens_per_epoch": billed, "billed_tokens": billed * epochs,
            "training_per_1k": price, "usd": round(training_cost(billed, epochs, price), 6),
            "price_source": entry.get("source", "")}


# -- jobs -----------------------------------------------------------------


def require_api(settings: Settings) -> None:
    """Fail before any request when there is neither a key nor a server to talk to.

    Raises:
        KBError: no OPENAI_API_KEY and no base URL.
    """
    if not settings.api_key and not settings.base_url:
        raise KBError("no API key: set OPENAI_API_KEY, or point --base-url (OPENAI_BASE_URL) "
                      "at an OpenAI-compatible server")


def job_summary(job: dict) -> dict:
    """The fields of a job a writer acts on."""
    error = job.get("error") or {}
    return {key: job.get(key) for key in ("id", "status", "model", "fine_tuned_model", "created_at",
                                          "finished_at", "trained_tokens", "training_file",
                                          "validation_file")} | {
        "error": error.get("message") if isinstance(error, dict) else str(error) or None}


def event_summary(event: dict) -> dict:
    return {key: event.get(key) for key in ("id", "created_at", "level", "message")}


def _refuse_unfit(path: Path, model: str, prices: dict, training: bool) -> None:
    report = check_file(path, model if model in prices["models"] else None, prices=prices, training=training)
    if report.errors:
        first = "; ".join(str(p) for p in report.errors[:3])
        raise KBError(f"{path} is not fit to upload ({len(report.errors)} error(s): {first}); "
                      f"run `kb finetune check {path}` for the full list")


def submit(path: Path | str, model: str, settings: Settings, suffix: str | None = None,
           epochs: int | None = None, validation: Path | str | None = None,
           prices: dict | None = None) -> dict:
    """Check, upload and start a fine-tuning job; the job's summary.

    Raises:
        KBError: a bad suffix, no key, a file unfit to upload (checked locally first).
        LLMError: the server cannot be reached or rejects the file or the job.
    """
    if suffix is not None and not 0 < len(suffix) <= SUFFIX_MAX:
        raise KBError(f"--suffix must be 1 to {SUFFIX_MAX} characters, not {len(suffix)}")
    require_api(settings)
    prices = prices or load_prices()
    files = [Path(path)] + ([Path(validation)] if validation else [])
    for file in files:
        _refuse_unfit(file, model, prices, training=file is files[0])
    uploaded = [llm.upload_training_file(file.name, file.read_bytes(), settings)["id"] for file in files]
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs}}} if epochs else None
    job = llm.create_fine_tune_job(settings, model=model, training_file=uploaded[0],
                                   validation_file=uploaded[1] if validation else None,
                                   suffix=suffix, method=method)
    return job_summary(job)


def status(job_id: str, settings: Settings) -> dict:
    require_api(settings)
    return job_summary(llm.fine_tune_job(job_id, settings))


def jobs(settings: Settings, limit: int = 20) -> list[dict]:
    require_api(settings)
    return [job_summary(job) for job in llm.fine_tune_jobs(settings, limit)]


def cancel(job_id: str, settings: Settings) -> dict:
    require_api(settings)
    return job_summary(llm.cancel_fine_tune_job(job_id, settings))


def follow(job_id: str, settings: Settings, on_event: Callable[[dict], None] | None = None,
           interval: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> tuple[dict, list[dict]]:
    """Stream a job's events, oldest first, until it succeeds, fails or is cancelled.

    Returns the final job summary and every event seen.
    """
    require_api(settings)
    seen: set[str] = set()
    events: list[dict] = []
    while True:
        job = llm.fine_tune_job(job_id, settings)  # state first, so the events read after it are as new
        listed = llm.fine_tune_events(job_id, settings)
        for event in sorted(reversed(listed), key=lambda e: e.get("created_at") or 0):
            if event.get("id") in seen:
                continue
            seen.add(event.get("id"))
            events.append(event_summary(event))
            if on_event:
                on_event(events[-1])
        if job.get("status") in TERMINAL_STATES:
            return job_summary(job), events
        sleep(interval)
