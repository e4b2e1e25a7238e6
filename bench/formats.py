"""How well the script parsers hold on real game files: per format, what ingests and what text survives.

Runs every file of a real-world set (default tests/realworld/, one folder per
format) through ingest.load.load_chunks, the path `kb ingest` takes, and
counts per format: files, ingested, skipped (nothing to index), failed; the
text lines found (lines of the chunks) against an independent count (a naive
per-format reading of the source: body lines that hold words once commands,
tags and comments are cut); the share of the source's words that reach a
chunk; distinct speakers; and lines still holding markup (`<i>`, `[color=..]`,
`**`, `<<`, `{`, `>..<`). Then it times parsing and chunking two
pathological inputs: one Ink line of nested braces and a long localization CSV.

    python bench/formats.py [--set tests/realworld] [--braces 100000] [--rows 200000]

To measure older code, copy this file and bench/common.py into a checkout of
that code and pass --set pointing at this set.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import io
import re
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import ROOT, machine, revision  # noqa: E402
from ingest.errors import IngestError  # noqa: E402
from ingest.load import load_chunks  # noqa: E402
from ingest.parsers import parser_for  # noqa: E402

FORMATS = ("ink", "yarn", "fountain", "twee", "loctable")
TAKES_FILE_PATH = "file_path" in inspect.signature(load_chunks).parameters  # older code does not
_WORD = re.compile(r"[^\W\d_]{2,}")
_MARKUP = re.compile(r"</?[a-z]+(?:=[^>]*)?>|\[/?(?:color|b|i|u|break|right|center)\b[^\]]*\]|\*\*|<<|[{}]|^>.*<$",
                     re.IGNORECASE | re.MULTILINE)
_CUE = re.compile(r"^@?[^a-z]*[A-Z][^a-z]*$")
_SCENE = re.compile(r"^(?:INT|EXT|EST|I/E)[. /]|^\.[^.]", re.IGNORECASE)


def _ink_lines(text: str) -> list[str]:
    """Ink lines with words once logic, diverts, tags, choice and gather marks are cut."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    found = []
    in_function = False
    for line in text.splitlines():
        line = line.split("//")[0].strip()
        if line.startswith("=="):
            in_function = "function" in line
            continue
        if in_function or re.match(r"^(?:~|=|VAR |CONST |LIST |INCLUDE |EXTERNAL |TODO|#)", line):
            continue
        line = re.sub(r"#.*$|->\s*[\w.]*|<-\s*[\w.]*|<>|^[-*+\s]+|\(\w+\)", " ", line)
        line = re.sub(r"^\{?[^{}|]*:\s*$|^\}$|^\{\s*$", "", line.strip())  # a block's condition line
        if _WORD.search(re.sub(r"\{[^{}]*\}", "", line)):
            found.append(line)
    return found


def _yarn_lines(text: str) -> list[str]:
    """Lines of node bodies that hold words once commands, hashtags and comments are cut."""
    found = []
    in_body = False
    for line in text.splitlines():
        line = line.strip()
        if line == "---":
            in_body = True
        elif line == "===":
            in_body = False
        elif in_body:
            line = re.sub(r"<<.*?>>|//.*$|(?:^|\s)#\S+", " ", line)
            if _WORD.search(line):
                found.append(line)
    return found


def _fountain_lines(text: str) -> list[str]:
    """One line per dialogue block (cue + speech) and per action line, after the title page."""
    text = re.sub(r"/\*.*?\*/|\[\[.*?\]\]", "", text, flags=re.DOTALL)
    lines = [line.strip() for line in text.splitlines()]
    if lines and re.match(r"^\w[\w ]*:", lines[0]):
        lines = lines[lines.index(""):] if "" in lines else []
    found = []
    index = 0
    while index < len(lines):
        line = lines[index]
        blank_before = index == 0 or not lines[index - 1]
        index += 1
        if not line or _SCENE.match(line) or line.startswith(("#", "=")) or line.endswith("TO:"):
            continue
        if blank_before and _CUE.match(line) and index < len(lines) and lines[index]:
            speech = []
            while index < len(lines) and lines[index]:
                speech.append(lines[index])
                index += 1
            found.append(" ".join(speech))
        elif _WORD.search(line):
            found.append(line)
    return found


def _twee_lines(text: str) -> list[str]:
    """Lines of story passages (not StoryTitle/StoryData/script/stylesheet) with words outside macros."""
    found = []
    keep = False
    for line in re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL).splitlines():
        if line.startswith("::"):
            name = line[2:].split("[")[0].split("{")[0].strip()
            keep = name not in ("StoryTitle", "StoryData") and not re.search(r"\[[^\]]*\b(?:script|stylesheet)\b", line)
            continue
        if keep:
            visible = re.sub(r"<<[^>]*>>|<[^>]*>|\([\w-]+:[^)]*\)|\$[\w.]+", " ", line)
            if _WORD.search(visible):
                found.append(visible)
    return found


def _loctable_lines(data: bytes) -> list[str]:
    """Translated cells: every non-empty cell after the key column that is not a copy of the row's first text."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), skipinitialspace=True))
    except (UnicodeDecodeError, csv.Error):
        return []
    if not rows:
        return []
    header = [name.strip().lower() for name in rows[0]]
    text_columns = [i for i, name in enumerate(header)
                    if i and (re.fullmatch(r"[a-z]{2,3}(?:[-_][a-z0-9]{2,8})*", name) or name == "text")
                    and name not in {"id", "key", "tag", "npc", "file", "node", "lock"}]
    found = []
    for row in rows[1:]:
        seen = set()
        for i in text_columns:
            cell = row[i].strip() if i < len(row) else ""
            if cell and cell not in seen:
                found.append(cell)
            seen.add(cell)
    return found


def expected_lines(fmt: str, data: bytes) -> list[str]:
    """The independent count's lines for one file."""
    if fmt == "loctable":
        return _loctable_lines(data)
    text = data.decode("utf-8-sig", errors="replace")
    return {"ink": _ink_lines, "yarn": _yarn_lines, "fountain": _fountain_lines,
            "twee": _twee_lines}[fmt](text)


def words(lines: list[str]) -> Counter:
    return Counter(word.lower() for line in lines for word in _WORD.findall(line))


def measure(fmt: str, files: list[Path]) -> dict:
    """One row of the table: outcomes, lines, word share, speakers and markup left for one format."""
    row = Counter()
    speakers: set[str] = set()
    source_words: Counter = Counter()
    kept_words = 0
    for path in files:
        data = path.read_bytes()
        expected = expected_lines(fmt, data)
        row["expected"] += len(expected)
        try:
            extra = {"file_path": path} if TAKES_FILE_PATH else {}
            chunks = load_chunks(data, str(path), "key", "0" * 40, 400, 40, **extra)
        except IngestError as exc:
            if exc.__class__.__name__ == "NothingToIndex":
                row["skipped"] += 1
            else:
                row["failed"] += 1
            file_words = words(expected)
            source_words.update(file_words)
            continue
        row["ingested"] += 1
        found = [line for chunk in chunks for line in chunk.text.splitlines() if line.strip()]
        row["found"] += len(found)
        row["markup"] += sum(1 for line in found if _MARKUP.search(line))
        for chunk in chunks:
            speakers.update(chunk.meta.get("speaker", []))
        file_words = words(expected)
        source_words.update(file_words)
        found_words = words(found)
        kept_words += sum(min(count, found_words[word]) for word, count in file_words.items())
    row["files"] = len(files)
    row["kept"] = kept_words / max(1, sum(source_words.values()))
    row["speakers"] = len(speakers)
    row["speaker_names"] = sorted(speakers)
    return row


def _time_load(suffix: str, data: bytes) -> tuple[float, str]:
    """Seconds to parse and chunk one input (what ingest does before embedding), and how it ended."""
    start = time.perf_counter()
    try:
        outcome = f"{len(load_chunks(data, f'stress{suffix}', 'key', '0' * 40, 400, 40)):,} chunks"
    except IngestError as exc:
        outcome = f"refused: {exc.reason[:40]}"
    return time.perf_counter() - start, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=ROOT / "tests" / "realworld")
    parser.add_argument("--braces", type=int, default=100_000, help="nesting depth of the Ink stress line")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the CSV stress table")
    parser.add_argument("--speakers", action="store_true", help="also list each format's speakers")
    args = parser.parse_args()
    console = Console(width=160)
    console.print(f"machine: {machine()}; code at {revision()} ({ROOT}); set {args.set}")
    table = Table("format", "files", "ingested", "skipped", "failed", "lines found", "independent count",
                  "words kept", "speakers", "lines with markup")
    for fmt in FORMATS:
        files = sorted(p for p in (args.set / fmt).rglob("*") if p.is_file() and parser_for(p.suffix))
        row = measure(fmt, files)
        table.add_row(fmt, *(str(row[k]) for k in ("files", "ingested", "skipped", "failed", "found", "expected")),
                      f"{row['kept']:.1%}", str(row["speakers"]), str(row["markup"]))
        if args.speakers:
            console.print(f"{fmt} speakers: {', '.join(row['speaker_names'])}")
    console.print(table)
    stress = Table("stress input", "seconds", "outcome")
    ink = ("Hello " + "{a|" * args.braces + "b" + "}" * args.braces + "\n").encode()
    stress.add_row(f"Ink line of {args.braces:,} nested braces", *_fmt(_time_load(".ink", ink)))
    rows = "key,en,fr\n" + "".join(f"line_{i},Hello number {i},Bonjour numéro {i}\n" for i in range(args.rows))
    stress.add_row(f"CSV of {args.rows:,} rows", *_fmt(_time_load(".csv", rows.encode())))
    console.print(stress)


def _fmt(result: tuple[float, str]) -> tuple[str, str]:
    return f"{result[0]:.2f}", result[1]


if __name__ == "__main__":
    main()
