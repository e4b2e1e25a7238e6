"""bench/scale.py's measures on a generated store written once, so code before and after a change meets the same store.

Writing 100,000 chunks takes about 20 minutes here and a whole bench/scale.py run about
35; this writes the store once (`write`) and then times, on a scratch copy of it
(`measure`): the first open, which builds the BM25 postings (in its own process); a
fresh process's open (time and VmHWM), its first dense search (chromadb loads its vector
index and inserts again the writes it has not saved into it: ``replayed``), the rest of
the warm-up `kb serve` does (``warm_s``), searches per mode (50 after one untimed, modes
interleaved, each query embedded by the real model), 400 new questions asked once in
hybrid alone (``hybrid_settled``: p50 of the last 200), a one-file change written by
another process and seen by that running KnowledgeBase (median of 3), 300 new questions
after it, each in hybrid and then in dense (``<mode>_changed``: p50 of the first 100,
asked of the reloaded corpus before it has kept many postings; ``<mode>_changed_later``:
of the rest), a new 100-section file ingested by `kb ingest` in another process
(``ingested_visible``), a 5,000-chunk change, too large to search beside the loaded
vector index, which opens the store afresh (``reopened``: seen after, and the longest
search in the 40 s after it) and its peak RSS; then a fresh server (``fresh_<mode>``): a
second fresh open (``open2``), the warm-up `kb serve` does before its first request
(``warm2_s``), and 50 new questions each asked in hybrid, then in dense. ``index_vectors``: the
vectors its saved index held before, the replaced ones `kb compact` drops included.

    python bench/scale_store.py write 100000 /tmp/store-100k
    python bench/scale_store.py measure /tmp/store-100k

At a million chunks the copy is 20 GB and its first build most of an hour: `measure
--in-place` times the store itself, building its postings only the first time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import forget_recent_embeddings, in_fresh_process, median, peak_rss_mb, revision  # noqa: E402
from bench.scale import Canon, change_visible, measure_open, search_latencies, server_started, synthetic_file  # noqa: E402
from kb.api import KnowledgeBase  # noqa: E402
from kb.store import Store  # noqa: E402
from kb.store.compact import saved_vectors  # noqa: E402
from kb.store.embed import model_dim  # noqa: E402

KB = Path(sys.executable).parent / "kb"


def write(size: int, out: Path, chunks_per_file: int = 100, words: int = 150, seed: int = 7) -> None:
    """The store bench/scale.py writes for ``size`` chunks, at ``out``."""
    canon, vectors = Canon(seed), np.random.default_rng(seed)
    store = Store(out, create=True)
    dim = model_dim(store.model)
    run, began, files = store.begin_run(), time.perf_counter(), -(-size // chunks_per_file)
    for index, start in enumerate(range(0, size, chunks_per_file)):
        run.put(*synthetic_file(canon, vectors, index, min(chunks_per_file, size - start), words, dim))
        if (index + 1) % 500 == 0:  # a million chunks take most of an hour: say how far it is
            print(f"  {index + 1}/{files} files, {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    run.publish()


def asked_once(kb: KnowledgeBase, canon: Canon, count: int) -> list[float]:
    """Seconds of each of ``count`` new questions, each asked once in hybrid alone, as a server's players ask."""
    seconds = []
    for _ in range(count):
        question = canon.phrase(canon.rng.randint(3, 8))
        forget_recent_embeddings()
        began = time.perf_counter()
        kb.search(question, k=5, mode="hybrid")
        seconds.append(time.perf_counter() - began)
    return seconds


def ingested_visible(kb: KnowledgeBase, kb_dir: Path) -> tuple[float, float]:
    """A new file of 100 sections of 150 new words ingested by `kb ingest` in another process, as a pipeline drops a
    script (that ingest embeds it and brings the postings on disk up to date): (seconds from the ingest's exit to
    a search of ``kb`` finding it, the ingest's seconds)."""
    marker, canon = f"zzdrop{time.time_ns()}", Canon(7)
    canon.rng.seed(marker)
    with tempfile.TemporaryDirectory(prefix="kb-drop-") as folder:
        path = Path(folder) / f"{marker}.md"
        sections = "".join(f"## Part {i}\n\n{canon.passage(150)}\n\n" for i in range(100))
        path.write_text(f"# {marker.title()}\n\n{sections}", encoding="utf-8")
        began = time.perf_counter()
        subprocess.run([str(KB), "ingest", str(path), "--kb", str(kb_dir)], check=True, stdout=subprocess.DEVNULL)
    ingested = time.perf_counter()
    while not any(hit.source == path.name for hit in kb.search(marker, k=1, mode="bm25")):
        assert time.perf_counter() - ingested < 300, f"the ingest of {path.name} was not seen in 300 s"
        time.sleep(0.02)
    return time.perf_counter() - ingested, ingested - began


def asked_in_turn(kb: KnowledgeBase, canon: Canon, count: int) -> dict[str, list[float]]:
    """Seconds of each of ``count`` new questions asked in hybrid and then in dense (which reads no postings for
    the next to find), by mode: the two compared in the same state of the server."""
    latencies = {"hybrid": [], "dense": []}
    for _ in range(count):
        question = canon.phrase(canon.rng.randint(3, 8))
        for mode, seconds in latencies.items():
            forget_recent_embeddings()
            began = time.perf_counter()
            kb.search(question, k=5, mode=mode)
            seconds.append(time.perf_counter() - began)
    return latencies


def served(kb_dir: Path, queries: int = 50) -> dict:
    kb, result = server_started(kb_dir)
    canon = Canon(7)  # the store's vocabulary (Canon(seed) draws its own words), other phrases than its chunks
    canon.rng.seed(11)
    latencies = search_latencies(kb, [canon.phrase(canon.rng.randint(3, 8)) for _ in range(queries + 1)])
    result.update({f"{mode}_p50_ms": median(seconds) * 1000 for mode, seconds in latencies.items()})
    # by the last 200 the postings a server keeps (kb.retrieve.HOT_POSTINGS) have filled
    result["hybrid_settled_p50_ms"] = median(asked_once(kb, canon, 400)[200:]) * 1000
    result["visible_s"] = median([change_visible(kb, kb_dir, i, 100, 150) for i in range(3)])
    # of the reloaded corpus, which has kept no postings yet: the first 100 new questions, and the 200 after them
    for mode, seconds in asked_in_turn(kb, canon, 300).items():
        result[f"{mode}_changed_p50_ms"] = median(seconds[:100]) * 1000
        result[f"{mode}_changed_later_p50_ms"] = median(seconds[100:]) * 1000
    result["ingested_visible_s"], result["ingest_s"] = ingested_visible(kb, kb_dir)
    # 5,000 new chunks, more than a reload keeps beside the loaded vector index (kb/catch_up.py's EMBEDDED_MAX, and
    # too many for their writer to keep their vectors): the store is opened afresh
    result["reopened_visible_s"] = change_visible(kb, kb_dir, 3, 5_000, 150)
    began, longest = time.perf_counter(), 0.0
    while time.perf_counter() - began < 40:  # at a million chunks that reload took 8-15 s here
        longest = max(longest, *asked_once(kb, canon, 100))
    result["reopened_longest_s"] = longest
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def fresh_server(kb_dir: Path, questions: int = 50) -> dict:
    """A fresh process's open, the warm-up `kb serve` does before its first request (KnowledgeBase.warm), and its
    first new questions, each asked in hybrid and then in dense (which reads no postings for the next to find)."""
    began = time.perf_counter()
    kb = KnowledgeBase.open(kb_dir)
    kb.corpus  # noqa: B018
    result = {"open2_s": time.perf_counter() - began, "open2_rss_mb": peak_rss_mb()}
    began = time.perf_counter()
    kb.warm()
    result["warm2_s"] = time.perf_counter() - began
    canon = Canon(7)
    canon.rng.seed(13)  # other questions than served()'s
    latencies = asked_in_turn(kb, canon, questions)
    result.update({f"fresh_{mode}_p50_ms": median(seconds) * 1000 for mode, seconds in latencies.items()})
    result["fresh_peak_rss_mb"] = peak_rss_mb()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    written = commands.add_parser("write", help="write a generated store once")
    written.add_argument("size", type=int)
    written.add_argument("dir", type=Path)
    measured = commands.add_parser("measure", help="time opens, searches and a change on a copy of it")
    measured.add_argument("dir", type=Path)
    measured.add_argument("--in-place", action="store_true",
                          help="on the store itself, its postings built once (its first three files are replaced)")
    args = parser.parse_args()
    if args.command == "write":
        write(args.size, args.dir)
        return
    with tempfile.TemporaryDirectory(prefix="kb-bench-store-") as tmp:
        work = args.dir if args.in_place else Path(tmp) / "kb"
        if not args.in_place:
            shutil.copytree(args.dir, work)
        index_vectors = saved_vectors(work)  # replaced ones included: every process loading the index holds them
        result = in_fresh_process(measure_open, work, "index")
        result["index_vectors"] = index_vectors or 0
        result.update(in_fresh_process(served, work))
        result.update(in_fresh_process(fresh_server, work))
    print(json.dumps({key: round(value, 3) for key, value in result.items()}))
    print(f"code at {revision()}", file=sys.stderr)


if __name__ == "__main__":
    main()
