"""A whole game's localization through the real ingest: a million short loc rows, then what a server pays for them.

`write` generates loc tables (one shared invented vocabulary, --rows-per-file
rows a file: keys in five languages, one chunk per row and language) and
ingests them through KnowledgeBase.ingest with the real model in one run,
printing the rate as it goes: rows/s, rows per CPU second of the ingesting
process and its embedding worker (the parse worker's CPU not counted: it
outlives the ingest), the peak RSS of each; the time includes building the
BM25 postings, which the ingest does for a new store.
Rerun on the same folder, an interrupted ingest finishes (the tables are
written once).

`measure` then times, each in a fresh process as a server would meet the store:
the first open (which builds the BM25 postings if no ingest has); an open with
them on disk, and the first dense search (chromadb loads its vector index); the
rest of the warm-up `kb serve` does before its first request
(KnowledgeBase.warm: the commonest terms' postings read ahead); searches per
mode (--queries after one untimed, modes interleaved, each query embedded by
the real model); and three one-row edits, each ingested by `kb ingest` in
another process while this one holds the store open: the seconds from that
process's exit to a hybrid search here finding the edit, and the longest search
meanwhile. Peak RSS (VmHWM) of the serving process, and its resident memory 5 s
after the last edit was found.

    python bench/loc_scale.py write 1000000 /tmp/loc-1m
    python bench/loc_scale.py measure /tmp/loc-1m
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import cpu_seconds, in_fresh_process, machine, median, peak_rss_mb, revision, rss_mb  # noqa: E402
from bench.scale import Canon, loc_table, measure_open, search_latencies, server_started  # noqa: E402
from kb.api import KnowledgeBase  # noqa: E402
from kb.store.embed import LoreEmbedding  # noqa: E402

LANGUAGES = 5  # loc_table's columns after the key
KB = Path(sys.executable).parent / "kb"


def tables(rows: int, rows_per_file: int, folder: Path) -> dict[str, int]:
    """The generated tables under ``folder`` (written unless there already): their rows, by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    canon, written = Canon(7), {}
    for index, start in enumerate(range(0, rows, rows_per_file)):
        path = folder / f"area-{index:04d}.csv"
        keys = min(rows_per_file, rows - start) // LANGUAGES
        if not path.exists():
            canon.rng.seed(1000 + index)
            path.write_text(loc_table(canon, keys, prefix=f"area{index:04d}"), encoding="utf-8")
        written[path.name] = keys * LANGUAGES
    return written


def write(rows: int, out: Path, rows_per_file: int) -> dict:
    """Generate the tables and ingest them into ``out``/kb, printing progress."""
    rows_in = tables(rows, rows_per_file, out / "loc")
    kb = KnowledgeBase.open(out / "kb")
    LoreEmbedding()(["load the model before the clock starts"])
    began, cpu, done = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN), []

    def progress(source: str) -> None:
        done.append(source)
        seconds = time.perf_counter() - began
        print(f"  {len(done)}/{len(rows_in)} files, {seconds:.0f} s, "
              f"{len(done) * rows_per_file / seconds:.0f} rows/s", file=sys.stderr, flush=True)

    report = kb.ingest([str(out / "loc")], on_file=progress)
    seconds, cpu = time.perf_counter() - began, cpu_seconds(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) - cpu
    if report.failed:
        sys.exit(f"ingest failed: {report.failed[:3]}")
    ingested = [Path(source).name for source in report.added + report.updated]
    rows_ingested = sum(rows_in[name] for name in ingested)
    return {"chunks": report.chunks, "files_ingested": len(ingested), "rows_ingested": rows_ingested,
            "seconds": seconds, "rows_per_s": rows_ingested / seconds, "rows_per_cpu_s": rows_ingested / cpu,
            "peak_rss_mb": peak_rss_mb(),
            "embedding_worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def served(out: Path, queries: int) -> dict:
    """A server's view: open, first search, searches per mode, three edits by another process seen."""
    kb, result = server_started(out / "kb")
    canon = Canon(7)
    canon.rng.seed(11)  # the tables' vocabulary, phrases none of them holds whole
    latencies = search_latencies(kb, [canon.phrase(canon.rng.randint(2, 5)) for _ in range(queries + 1)])
    result.update({f"{mode}_p50_ms": median(seconds) * 1000 for mode, seconds in latencies.items()})
    seen, ingests, longest = zip(*(edit_seen(kb, out) for _ in range(3)))
    result.update({"visible_s": median(seen), "visible_max_s": max(seen), "longest_search_s": median(longest),
                   "edit_ingest_s": median(ingests), "peak_rss_mb": peak_rss_mb()})
    time.sleep(5)  # a reload still loading behind the last search ends
    result["rss_after_mb"] = rss_mb()
    return result


def edit_seen(kb: KnowledgeBase, out: Path) -> tuple[float, float, float]:
    """Edit one row of the first table, ingest it with `kb ingest` in another process, and search ``kb``
    (hybrid, as `kb ask` does) until it finds the edit: (seconds from the ingest's exit to that hit, the
    ingest's seconds, the longest search meanwhile: the one that paid for loading the new state)."""
    table = sorted((out / "loc").glob("*.csv"))[0]
    marker = f"zzedit{time.time_ns()}"
    header, first, rest = table.read_text(encoding="utf-8").split("\n", 2)
    cells = first.split(",")
    cells[1] = f"{marker} edited"  # the English string of the first key
    table.write_text("\n".join([header, ",".join(cells), rest]), encoding="utf-8")
    began = time.perf_counter()
    subprocess.run([str(KB), "ingest", str(table), "--kb", str(out / "kb")], check=True,
                   stdout=subprocess.DEVNULL)
    ingested = time.perf_counter()
    longest = 0.0
    while True:
        asked = time.perf_counter()
        hits = kb.search(marker, k=5, mode="hybrid")
        longest = max(longest, time.perf_counter() - asked)
        if any(marker in hit.text for hit in hits):
            return time.perf_counter() - ingested, ingested - began, longest
        if time.perf_counter() - ingested > 300:
            sys.exit(f"the edit to {table.name} was not found in 300 s")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    written = commands.add_parser("write", help="generate the tables and ingest them")
    written.add_argument("rows", type=int)
    written.add_argument("dir", type=Path)
    written.add_argument("--rows-per-file", type=int, default=10_000, help="rows a table (keys x 5) [10000]")
    measured = commands.add_parser("measure", help="open, search and see edits, as a server")
    measured.add_argument("dir", type=Path)
    measured.add_argument("--queries", type=int, default=50, help="timed searches per mode [50]")
    args = parser.parse_args()
    if args.command == "write":
        result = in_fresh_process(write, args.rows, args.dir, args.rows_per_file)
    else:
        result = in_fresh_process(measure_open, args.dir / "kb", "index")
        result.update(in_fresh_process(served, args.dir, args.queries))
    print(json.dumps({key: round(value, 3) for key, value in result.items()}))
    print(f"machine: {machine()}; code at {revision()}", file=sys.stderr)


if __name__ == "__main__":
    main()
