"""The editable price table (kb/finetune/prices.toml) and what a training run costs."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from ingest.tokens import OFFLINE_ENCODINGS
from kb.errors import KBError
from kb.finetune.dataset import FORMATS


def load_prices(path: Path | str | None = None) -> dict:
    """The price table: the shipped kb/finetune/prices.toml, or an edited copy.

    Raises:
        KBError: the file cannot be read, has no [models.*] entries, or an entry has a wrong field.
    """
    where = str(path) if path else "kb/finetune/prices.toml"
    try:
        text = Path(path).read_text(encoding="utf-8") if path else \
            resources.files("kb.finetune").joinpath("prices.toml").read_text(encoding="utf-8")
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
