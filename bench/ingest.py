"""How fast `kb ingest` builds a store from fairytaleqa, and how cheap an unchanged or one-file re-ingest is.

Works on a temp copy of the docs (../shared is never touched) and a fresh temp
store, through kb.sync.ingest with the current default settings. The embedding
model is loaded once before the full ingest and timed on its own line; the
embedder's in-process cache is emptied before each run, as a new process has it.

    python bench/ingest.py [--docs DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import eval_set, forget_recent_embeddings, machine, peak_rss_mb, revision  # noqa: E402
from kb.config import Settings  # noqa: E402
from kb.store.embed import DEFAULT_MODEL, LoreEmbedding  # noqa: E402
from kb.sync import ingest  # noqa: E402


def copy_docs(docs: Path, target: Path, limit: int | None) -> list[Path]:
    """Copy the first ``limit`` files (by name) of a folder; the copies are what gets ingested."""
    files = sorted(p for p in docs.iterdir() if p.is_file() and not p.name.startswith("."))
    target.mkdir(parents=True)
    copies = []
    for path in files[:limit]:
        copies.append(target / path.name)
        shutil.copyfile(path, copies[-1])
    return copies


def timed_ingest(folder: Path, settings: Settings):
    """One ingest as a fresh `kb ingest` process would run it (no vectors kept from the last run)."""
    forget_recent_embeddings()
    start = time.perf_counter()
    report = ingest([str(folder)], settings)
    elapsed = time.perf_counter() - start
    if report.failed:
        sys.exit(f"ingest failed: {report.failed[:3]}")
    return report, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, help="folder to ingest [../shared/eval/fairytaleqa/docs]")
    parser.add_argument("--limit", type=int, help="only the first N files (by name)")
    args = parser.parse_args()
    docs = args.docs or eval_set("fairytaleqa") / "docs"
    if not docs.is_dir():
        sys.exit(f"{docs}: not a folder")

    with tempfile.TemporaryDirectory(prefix="kb-bench-ingest-") as tmp:
        copies = copy_docs(docs, Path(tmp) / "docs", args.limit)
        megabytes = sum(p.stat().st_size for p in copies) / 1e6
        settings = Settings(kb_dir=Path(tmp) / "kb", chroma_url=None)

        embedder = LoreEmbedding(settings.embed_model or DEFAULT_MODEL)
        start = time.perf_counter()
        embedder(["warm up"])
        model_load = time.perf_counter() - start

        full, full_s = timed_ingest(copies[0].parent, settings)
        rss_after_full = peak_rss_mb()
        again, again_s = timed_ingest(copies[0].parent, settings)
        changed_file = sorted(copies, key=lambda p: p.stat().st_size)[len(copies) // 2]  # a median-size file
        changed_kb = changed_file.stat().st_size / 1e3
        with open(changed_file, "a", encoding="utf-8") as fh:
            fh.write("\nA line appended by bench/ingest.py to change this one file.\n")
        changed, changed_s = timed_ingest(copies[0].parent, settings)

    table = Table(title=f"kb ingest of {docs} ({len(copies)} files, {megabytes:.2f} MB)")
    table.add_column("run")
    table.add_column("seconds", justify="right")
    table.add_column("x full", justify="right")
    table.add_column("figure", justify="right")
    table.add_row(f"embedding model load ({embedder.model})", f"{model_load:.1f}", "", "")
    table.add_row(f"full ingest: {len(full.added)} added, {full.chunks} chunks", f"{full_s:.1f}", "1",
                  f"{megabytes / (full_s / 60):.2f} MB/min, {full.chunks / full_s:.1f} chunks/s")
    table.add_row(f"unchanged re-ingest: {len(again.unchanged)} unchanged", f"{again_s:.2f}",
                  f"{again_s / full_s:.4f}", "")
    table.add_row(f"one file changed: {len(changed.updated)} updated ({changed_kb:.0f} KB)", f"{changed_s:.2f}",
                  f"{changed_s / full_s:.4f}", "")
    console = Console(width=120)
    console.print(table)
    console.print(f"peak RSS {rss_after_full:.0f} MB after the full ingest, {peak_rss_mb():.0f} MB at the end; "
                  f"chunk_tokens={settings.chunk_tokens}, chunk_overlap={settings.chunk_overlap}")
    console.print(f"machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
