"""Validate a training file the way OpenAI's data preparation tool did, then count its tokens and cost."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from ingest.tokens import count_tokens
from kb.errors import KBError
from kb.finetune.dataset import SEPARATOR, STOP
from kb.finetune.prices import load_prices, price_entry, training_cost

MIN_EXAMPLES = 10                 # the fine-tuning API refuses smaller training files
RECOMMENDED_EXAMPLES = {"chat": 50, "completion": 500}
CHAT_ROLES = ("system", "user", "assistant")
TOKENS_PER_MESSAGE = 3            # OpenAI's chat overhead per message ...
REPLY_PRIMING = 3                 # ... and per example


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
