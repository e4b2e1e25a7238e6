"""Which Markdown parser ingest should use: the native one or unstructured's partition_md, by speed and by what each keeps.

Both run on the same text: the Markdown files of corpora/world (English and
Chinese) and a generated ~1 MB file of fairytaleqa stories under '#', '##' and
'###' headings. The native parser is ingest.parsers.markdown.parse; the
unstructured path is partition_md (through ingest.parsers.elements'
offline_unstructured) then sections_from_elements, given the body after YAML
front matter (which the native parser reads itself and partition_md would take
for a heading). Reported: seconds per MB (median of --runs, after one
unmeasured warm-up), sections, the share of the source's headings found in the
sections' heading paths, and the share of the source's other words (CJK:
characters) found in the sections' text.

    python bench/markdown_parsers.py [--runs 3] [--mb 1.0]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import EVAL, ROOT, machine, median, revision  # noqa: E402
from ingest.meta import split_front_matter  # noqa: E402
from ingest.parsers import markdown  # noqa: E402
from ingest.parsers.elements import offline_unstructured, sections_from_elements  # noqa: E402

_TERM = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def native(text: str, path: str):
    return markdown.parse(text, path)


def unstructured(text: str, path: str):
    offline_unstructured()
    from unstructured.partition.md import partition_md

    _, body = split_front_matter(text, path)
    return sections_from_elements(partition_md(text=body), path)


PARSERS = {"native": native, "unstructured": unstructured}


def terms(text: str) -> Counter:
    return Counter(_TERM.findall(text.casefold()))


def kept(sources: dict[str, str], sections_by_file: dict[str, list]) -> tuple[float, float]:
    """Share of the sources' headings found in heading paths, and of their other words found in section text."""
    headings_total = headings_found = 0
    words_total = words_found = 0
    for path, text in sources.items():
        _, body = split_front_matter(text, path)
        sections = sections_by_file[path]
        components = {part.strip() for s in sections for part in str(s.meta.get("title", "")).split(" > ")}
        headings = [h.strip() for h in _HEADING.findall(body)]
        headings_total += len(headings)
        headings_found += sum(h in components for h in headings)
        source_terms = terms(_HEADING.sub("", body))
        output_terms = terms("\n".join(s.text for s in sections))
        words_total += sum(source_terms.values())
        words_found += sum((source_terms & output_terms).values())
    return headings_found / max(1, headings_total), words_found / max(1, words_total)


def generated_markdown(target_mb: float) -> str:
    """About target_mb of fairytaleqa stories as one Markdown book: a story per '##', a part per 4 paragraphs."""
    docs = sorted((EVAL / "fairytaleqa" / "docs").glob("*.txt"))
    if not docs:
        sys.exit(f"{EVAL / 'fairytaleqa' / 'docs'} not found: the generated file is built from ../shared/eval")
    parts = ["# Fairy tales (fairytaleqa, for bench/markdown_parsers.py)\n"]
    size = 0
    for doc in docs:
        paragraphs = [p.strip() for p in doc.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        parts.append(f"## {doc.stem.replace('-', ' ').title()}\n")
        for i, paragraph in enumerate(paragraphs):
            if i % 4 == 0:
                parts.append(f"### Part {i // 4 + 1}\n")
            parts.append(paragraph + "\n")
        size = sum(len(p.encode()) for p in parts)
        if size >= target_mb * 1e6:
            break
    return "\n".join(parts)


def measure(name: str, sources: dict[str, str], runs: int) -> dict:
    parse = PARSERS[name]
    megabytes = sum(len(t.encode()) for t in sources.values()) / 1e6
    for path, text in sources.items():
        parse(text, path)  # warm-up: imports, the spaCy pipeline, regex caches
    seconds, sections_by_file = [], {}
    for _ in range(runs):
        start = time.perf_counter()
        sections_by_file = {path: parse(text, path) for path, text in sources.items()}
        seconds.append(time.perf_counter() - start)
    headings, words = kept(sources, sections_by_file)
    return {"s_per_mb": median(seconds) / megabytes, "sections": sum(map(len, sections_by_file.values())),
            "headings": headings, "words": words}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per parser and input; the median is shown [3]")
    parser.add_argument("--mb", type=float, default=1.0, help="size of the generated Markdown file [1.0]")
    args = parser.parse_args()

    world = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
             for p in sorted((ROOT / "corpora" / "world").rglob("*.md"))}
    book = generated_markdown(args.mb)
    inputs = {f"corpora/world ({len(world)} files, {sum(len(t.encode()) for t in world.values()) / 1e3:.0f} KB)": world,
              f"generated fairytales.md ({len(book.encode()) / 1e6:.2f} MB)": {"fairytales.md": book}}

    table = Table(title=f"Markdown parsers, median of {args.runs} runs after a warm-up")
    for column, justify in (("input", "left"), ("parser", "left"), ("s per MB", "right"),
                            ("sections", "right"), ("headings kept", "right"), ("words kept", "right")):
        table.add_column(column, justify=justify)
    results = {}
    for label, sources in inputs.items():
        for name in PARSERS:
            print(f"  {name} on {label} ...", file=sys.stderr)
            r = results[label, name] = measure(name, sources, args.runs)
            table.add_row(label, name, f"{r['s_per_mb']:.3f}", str(r["sections"]),
                          f"{r['headings']:.1%}", f"{r['words']:.1%}")
    console = Console(width=120)
    console.print(table)
    for label in inputs:
        n, u = results[label, "native"], results[label, "unstructured"]
        loses = [what for what in ("headings", "words") if n[what] < u[what] - 0.001]
        verdict = (f"native is {u['s_per_mb'] / n['s_per_mb']:.0f}x faster per MB and keeps "
                   f"{n['headings']:.1%} of headings / {n['words']:.1%} of words vs "
                   f"{u['headings']:.1%} / {u['words']:.1%}")
        verdict += (" -> keep native" if not loses and n["s_per_mb"] < u["s_per_mb"]
                    else f" -> native loses {', '.join(loses) or 'on speed'}: look before choosing")
        console.print(f"verdict, {label}: {verdict}")
    console.print(f"machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
