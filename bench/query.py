"""How long `kb search` takes per mode on the fairytaleqa store, and whether hybrid stays within 2x of dense.

Builds the store with KnowledgeBase.ingest (current defaults) in a temp dir, or uses
--kb DIR (built there first if it holds no store, so a later run reuses it).
Opens the store and loads the corpus, as the CLI does per process, and times
both (the BM25 postings built from nothing, and read from disk); then runs
KnowledgeBase.search over the dev questions with the modes
taken in turn per question, each going first in turn (so load from other jobs falls on every mode alike),
the embedder's cache of recent vectors emptied before each call (so each call
embeds its question, as a new question does), and each mode's first call left
out. Prints medians and ratios: timings on a shared machine vary.

    python bench/query.py [--kb DIR] [--limit-questions N] [-k 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import (  # noqa: E402
    eval_set,
    forget_recent_embeddings,
    machine,
    median,
    peak_rss_mb,
    percentile,
    revision,
)
from kb.api import KnowledgeBase  # noqa: E402
from kb.errors import KBError  # noqa: E402
from kb.postings import index_path  # noqa: E402
from kb.retrieve import MODES  # noqa: E402


def open_or_build(kb_dir: Path, docs: Path) -> tuple[KnowledgeBase, float, str]:
    """The knowledge base at kb_dir (ingesting the docs there first if it has none), and the store's open time."""
    how = "reused"
    try:
        KnowledgeBase.open(kb_dir).store  # noqa: B018 - opening is the test
    except KBError:
        print(f"building the fairytaleqa store in {kb_dir} ...", file=sys.stderr)
        start = time.perf_counter()
        KnowledgeBase.open(kb_dir).ingest([str(docs)])
        how = f"built in {time.perf_counter() - start:.0f} s, which loaded the model"
    kb = KnowledgeBase.open(kb_dir)
    start = time.perf_counter()
    kb.store  # noqa: B018
    return kb, time.perf_counter() - start, how


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, help="use (or build and keep) the store here")
    parser.add_argument("--limit-questions", type=int, help="only the first N dev questions")
    parser.add_argument("-k", type=int, default=5, help="results per search, as `kb search -k` [5]")
    args = parser.parse_args()
    fairytaleqa = eval_set("fairytaleqa")
    with open(fairytaleqa / "qa.dev.jsonl", encoding="utf-8") as fh:
        questions = [json.loads(line)["question"] for line in fh if line.strip()]
    questions = questions[:args.limit_questions]

    with tempfile.TemporaryDirectory(prefix="kb-bench-query-") as tmp:
        kb, open_s, how = open_or_build(args.kb or Path(tmp) / "kb", fairytaleqa / "docs")

        def load_fresh():  # a new process's view: nothing loaded, the postings read from disk
            KnowledgeBase.open(kb.settings.kb_dir).corpus  # noqa: B018

        index_path(kb.store).unlink(missing_ok=True)
        cold_s = timed(load_fresh)  # builds the postings from the store
        cached_s = median([timed(load_fresh) for _ in range(3)])
        corpus = kb.corpus
        forget_recent_embeddings()
        first_s = timed(lambda: kb.search("warm up the embedding model", k=args.k, mode="hybrid"))

        latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
        for i, question in enumerate(questions):
            for mode in MODES[i % 3:] + MODES[:i % 3]:  # each mode goes first in turn
                forget_recent_embeddings()
                latencies[mode].append(timed(lambda q=question, m=mode: kb.search(q, k=args.k, mode=m)))
        chunks = corpus.size

    table = Table(title=f"kb search on fairytaleqa ({chunks} chunks, store {how}), "
                        f"{len(questions)} dev questions per mode, -k {args.k}")
    for name, justify in (("mode", "left"), ("calls", "right"), ("p50 ms", "right"), ("p95 ms", "right"),
                          ("p50 / dense p50", "right")):
        table.add_column(name, justify=justify)
    timed_calls = {mode: values[1:] for mode, values in latencies.items()}
    dense_p50 = median(timed_calls["dense"])
    for mode in MODES:
        values = timed_calls[mode]
        table.add_row(mode, str(len(values)), f"{median(values) * 1000:.1f}",
                      f"{percentile(values, 95) * 1000:.1f}", f"{median(values) / dense_p50:.2f}")
    console = Console(width=120)
    console.print(table)
    ratio = median(timed_calls["hybrid"]) / dense_p50
    console.print(f"hybrid p50 / dense p50 = {ratio:.2f} (issue 4 target: <= 2)")
    console.print(f"once per process: Store open {open_s * 1000:.0f} ms; corpus with the BM25 postings built "
                  f"{cold_s * 1000:.0f} ms, read from disk {cached_s * 1000:.0f} ms (median of 3); "
                  f"first search incl. model load {first_s * 1000:.0f} ms")
    console.print(f"peak RSS {peak_rss_mb():.0f} MB; machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
