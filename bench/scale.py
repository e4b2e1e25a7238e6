"""How the store's costs grow with the canon: ingest rate, size on disk, memory, open time and search latency at 1k, 10k and 100k chunks.

Chunks are generated (seeded sentences over a fixed invented vocabulary with a
Zipf-like word frequency; nothing downloads) and written through the real
kb.store run (Run.put, then one publish), manifest and batching included, as files of
--chunks-per-file chunks. Embedding 100k chunks with the real model would take
hours on this machine, so the stored vectors are seeded random unit vectors of
the model's dimension: the ingest rate here is the store's alone. Everything
read goes through the front door (kb.api.KnowledgeBase), per size:

- index s: the first open, which builds the BM25 postings (kb/postings.py) from the store;
- open s and open RSS: a fresh process's KnowledgeBase.open(...).corpus with the postings on disk;
- searches per mode, each embedding its query with the real model;
- change visible s: a running KnowledgeBase (as `kb serve` holds one) finds a one-file change
  written by another writer, searching until it does (median of 3 changes).

Then the real model's ingest rate on a generated localization table (short
strings, --loc-rows keys in 5 languages) through KnowledgeBase.ingest: parse,
embed (in batches, each distinct text once) and store; then the same table with
one row edited (its other rows keep their stored vectors).
Each size runs in its own process so peak RSS is that size's. Prints medians.

    python bench/scale.py [--sizes 1000,10000,100000] [--queries 50] [--loc-rows 400]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import (  # noqa: E402
    forget_recent_embeddings,
    in_fresh_process,
    machine,
    median,
    peak_rss_mb,
    percentile,
    revision,
)
from kb.api import KnowledgeBase  # noqa: E402
from kb.retrieve import MODES  # noqa: E402
from kb.store import FileRecord, Store  # noqa: E402
from kb.store.embed import LoreEmbedding, model_dim  # noqa: E402

SYLLABLES = ["ka", "ren", "tho", "mir", "el", "va", "dun", "si", "lor", "ae", "bre", "gal", "shi", "tor",
             "wen", "ny", "ost", "quil", "har", "ume", "fen", "dra", "cael", "mo"]


class Canon:
    """Seeded invented prose: a fixed vocabulary, words drawn with Zipf-like frequencies."""

    def __init__(self, seed: int = 7, vocabulary: int = 5000):
        self.rng = random.Random(seed)
        words = set()
        while len(words) < vocabulary:
            words.add("".join(self.rng.choice(SYLLABLES) for _ in range(self.rng.randint(1, 4))))
        self.words = sorted(words)
        self.rng.shuffle(self.words)
        self.cumulative = np.cumsum([1 / (rank + 1) ** 1.07 for rank in range(vocabulary)]).tolist()

    def phrase(self, n: int) -> str:
        return " ".join(self.rng.choices(self.words, cum_weights=self.cumulative, k=n))

    def passage(self, words: int) -> str:
        sentences, left = [], words
        while left > 0:
            n = min(left, self.rng.randint(6, 18))
            sentences.append(self.phrase(n).capitalize() + ".")
            left -= n
        return " ".join(sentences)


def synthetic_file(canon: Canon, vectors: np.random.Generator, index: int, chunks: int, words: int,
                   dim: int):
    """One generated file's record, ids, texts, metadata and unit vectors, shaped as ingest makes them."""
    source = f"synthetic/file-{index:06d}.md"
    key = hashlib.sha1(source.encode()).hexdigest()[:16]
    digest = hashlib.sha1(f"{source}-v1".encode()).hexdigest()
    now = time.time()
    title = canon.phrase(3).title()
    texts = [canon.passage(words) for _ in range(chunks)]
    metas = [{"title": f"{title} > Part {i // 4 + 1}", "lang": "en", "source": source, "chunk_index": i,
              "hash": hashlib.sha1(t.encode()).hexdigest()[:16], "file_key": key, "file_hash": digest,
              "ingested_at": now} for i, t in enumerate(texts)]
    ids = [f"{key}-{digest[:12]}-{i}" for i in range(chunks)]
    embeddings = vectors.standard_normal((chunks, dim), dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    record = FileRecord(key=key, path=f"/synthetic/{source}", source=source, root="/synthetic",
                        hash=digest, kind="canon", chunks=chunks, ingested_at=now)
    return record, ids, texts, metas, embeddings


def measure_size(size: int, chunks_per_file: int, words: int, queries: int, seed: int) -> dict:
    """Build a store of ``size`` generated chunks and time its ingest, opens and searches (run in a fresh process)."""
    canon = Canon(seed)
    vectors = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="kb-bench-scale-") as tmp:
        store = Store(Path(tmp) / "kb", create=True)
        dim = model_dim(store.model)
        put_seconds = 0.0
        run = store.begin_run()
        for index, start in enumerate(range(0, size, chunks_per_file)):
            record, ids, texts, metas, embeddings = synthetic_file(
                canon, vectors, index, min(chunks_per_file, size - start), words, dim)
            began = time.perf_counter()
            run.put(record, ids, texts, metas, embeddings)
            put_seconds += time.perf_counter() - began
        began = time.perf_counter()
        run.publish()
        put_seconds += time.perf_counter() - began
        size_mb = store.size_bytes() / 1e6

        kb = KnowledgeBase.open(Path(tmp) / "kb")
        began = time.perf_counter()
        kb.corpus  # noqa: B018 - builds the postings
        index_seconds = time.perf_counter() - began
        opened = in_fresh_process(measure_open, Path(tmp) / "kb")
        latencies = search_latencies(kb, [canon.phrase(canon.rng.randint(3, 8)) for _ in range(queries + 1)])
        chunks = store.count()
        visible = [change_visible(kb, Path(tmp) / "kb", index, min(chunks_per_file, size), words) for index in range(3)]
    return {"size": size, "chunks": chunks, "model": store.model, "dim": dim,
            "ingest_rate": size / put_seconds, "ingest_s": put_seconds, "size_mb": size_mb,
            "index_s": index_seconds, **opened, "visible_s": median(visible), "rss_mb": peak_rss_mb(),
            **{f"{mode}_p50": median(v) * 1000 for mode, v in latencies.items()},
            **{f"{mode}_p95": percentile(v, 95) * 1000 for mode, v in latencies.items()}}


def server_started(kb_dir: Path) -> tuple[KnowledgeBase, dict]:
    """A server's start, timed as `kb serve` goes through it: the open, the first dense search (chromadb loads its
    vector index and inserts again the writes it has not saved into it: ``replayed``), the rest of the warm-up."""
    began = time.perf_counter()
    kb = KnowledgeBase.open(kb_dir)
    kb.corpus  # noqa: B018
    result = {"open_s": time.perf_counter() - began, "open_rss_mb": peak_rss_mb()}
    kb.store.embed_passages(["load the model"])  # the store's own model, so the next search loads only the index
    result["replayed"] = kb.store.unsaved_vectors()  # what that load inserts again from chromadb's log
    began = time.perf_counter()
    kb.search("load the vector index", k=5, mode="dense")
    result["first_dense_s"] = time.perf_counter() - began
    began = time.perf_counter()
    kb.warm()  # what `kb serve` does before its first request: the commonest terms' postings read ahead
    result["warm_s"] = time.perf_counter() - began
    return kb, result


def search_latencies(kb: KnowledgeBase, asked: list[str]) -> dict[str, list[float]]:
    """Seconds per search of each question but the first (asked untimed: it loads the model) in each mode, each
    mode first in turn, none embedded before; and under ``<mode>_first`` the searches that asked a question first,
    its postings not read yet (a new question to a server: the modes after it find them kept, and at a million
    prose chunks that halved BM25's p50). A mode that came first for no question has no ``_first``."""
    for mode in MODES:
        kb.search(asked[0], k=5, mode=mode)
    latencies = {mode: [] for mode in MODES} | {f"{mode}_first": [] for mode in MODES}
    for i, question in enumerate(asked[1:], start=1):
        order = MODES[i % 3:] + MODES[:i % 3]
        for mode in order:
            forget_recent_embeddings()
            began = time.perf_counter()
            kb.search(question, k=5, mode=mode)
            latencies[mode].append(time.perf_counter() - began)
        latencies[f"{order[0]}_first"].append(latencies[order[0]][-1])
    return {mode: seconds for mode, seconds in latencies.items() if seconds}


def measure_open(kb_dir: Path, name: str = "open") -> dict:
    """A new process's open: the store, and the corpus from the postings on disk, which it builds unless they are
    there (run in a fresh process; ``name``: its keys' prefix)."""
    began = time.perf_counter()
    KnowledgeBase.open(kb_dir).corpus  # noqa: B018
    return {f"{name}_s": time.perf_counter() - began, f"{name}_rss_mb": peak_rss_mb()}


def write_change(kb_dir: Path, seed: int, index: int, chunks: int, words: int) -> tuple[str, str]:
    """Replace generated file ``index`` with ``chunks`` new chunks of ``words`` words drawn with ``seed``, as another
    writer does (run in a fresh process: a server's own store is no writer's, and its loaded vector index may be
    behind another's write); the new word the first chunk holds, and that chunk's id."""
    store = Store(kb_dir, create=True)
    canon = Canon(7)
    canon.rng.seed(seed)
    record, ids, texts, metas, embeddings = synthetic_file(canon, np.random.default_rng(seed), index, chunks, words,
                                                           model_dim(store.model))
    marker = f"zzchange{index}x{seed}"  # new each time: a store measured in place holds the last run's
    texts[0] = f"{marker} {texts[0]}"
    record.hash = metas[0]["file_hash"] = hashlib.sha1(marker.encode()).hexdigest()
    ids = [f"{record.key}-{record.hash[:12]}-{i}" for i in range(len(ids))]
    for meta in metas:
        meta["file_hash"] = record.hash
    run = store.begin_run()
    run.put(record, ids, texts, metas, embeddings)
    run.publish()
    return marker, ids[0]


def change_visible(kb: KnowledgeBase, kb_dir: Path, index: int, chunks: int, words: int) -> float:
    """Seconds from another process replacing one file with new words (write_change) to a search of ``kb`` finding
    its new word (searched again until then: a reload longer than kb.api.RELOAD_WAIT_S goes on behind the
    searches)."""
    marker, first = in_fresh_process(write_change, kb_dir, time.time_ns(), index, chunks, words)
    began = time.perf_counter()
    while not any(hit.id == first for hit in kb.search(marker, k=1, mode="bm25")):
        assert time.perf_counter() - began < 300, f"the change to file {index} was not seen in 300 s"
        time.sleep(0.02)
    return time.perf_counter() - began


def loc_table(canon: Canon, rows: int, prefix: str = "ui") -> str:
    """A localization CSV: ``rows`` keys (``prefix``.row_N), each with a short string (2-7 words) in five languages."""
    lines = ["key,en,fr,de,es,it"]
    for i in range(rows):
        cells = [canon.phrase(canon.rng.randint(2, 7)).capitalize() for _ in range(5)]
        lines.append(f"{prefix}.row_{i:06d}," + ",".join(cells))
    return "\n".join(lines) + "\n"


def measure_loc_ingest(rows: int, seed: int) -> dict:
    """Rows per second through KnowledgeBase.ingest with the real model, then the seconds to ingest the
    table again with one row edited (run in a fresh process)."""
    with tempfile.TemporaryDirectory(prefix="kb-bench-scale-") as tmp:
        table = Path(tmp) / "loc" / "strings.csv"
        table.parent.mkdir()
        table.write_text(loc_table(Canon(seed), rows), encoding="utf-8")
        kb = KnowledgeBase.open(Path(tmp) / "kb")
        LoreEmbedding()(["load the model before the clock starts"])
        began, cpu = time.perf_counter(), time.process_time()
        report = kb.ingest([str(table.parent)])
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        header, first, rest = table.read_text(encoding="utf-8").split("\n", 2)
        table.write_text("\n".join([header, first.replace(",", ",Edited ", 1), rest]), encoding="utf-8")
        forget_recent_embeddings()
        began = time.perf_counter()
        kb.ingest([str(table.parent)])
        edited = time.perf_counter() - began
    return {"rows": report.chunks, "seconds": seconds, "rate": report.chunks / seconds, "cpu_rate": report.chunks / cpu,
            "edited_s": edited}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="chunk counts ('' for none: the loc table alone) [1000,10000,100000]")
    parser.add_argument("--queries", type=int, default=50, help="timed searches per mode and size [50]")
    parser.add_argument("--chunks-per-file", type=int, default=100, help="chunks per generated file [100]")
    parser.add_argument("--words", type=int, default=150, help="words per generated chunk (~200 tokens) [150]")
    parser.add_argument("--loc-rows", type=int, default=400, help="keys in the generated loc table (x5 languages) [400]")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    rows = []
    for size in sizes:
        print(f"  {size} chunks ...", file=sys.stderr)
        rows.append(in_fresh_process(measure_size, size, args.chunks_per_file, args.words, args.queries,
                                     args.seed))
        print(f"    ingest {rows[-1]['ingest_s']:.0f} s", file=sys.stderr)
    loc = None
    if args.loc_rows:
        print(f"  ingesting a {args.loc_rows}-key loc table with the real model ...", file=sys.stderr)
        loc = in_fresh_process(measure_loc_ingest, args.loc_rows, args.seed)

    console = Console(width=160)
    if rows:  # --sizes '' measures the loc table alone
        table = Table(title=f"Store and search at scale: generated chunks in files of {args.chunks_per_file}, "
                            f"random {rows[0]['dim']}-d unit vectors in place of embeddings")
        columns = ["chunks", "store chunks/s", "disk MB", "peak RSS MB", "index s", "open s", "open RSS MB",
                   "change visible s"]
        columns += [f"{mode} p50/p95 ms" for mode in MODES] + ["hybrid / bm25 p50 ms, asked first"]
        for column in columns:
            table.add_column(column, justify="right")
        for r in rows:
            table.add_row(f"{r['chunks']:,}", f"{r['ingest_rate']:.0f}", f"{r['size_mb']:.0f}", f"{r['rss_mb']:.0f}",
                          f"{r['index_s']:.1f}", f"{r['open_s']:.2f}", f"{r['open_rss_mb']:.0f}",
                          f"{r['visible_s']:.2f}", *(f"{r[f'{m}_p50']:.1f} / {r[f'{m}_p95']:.1f}" for m in MODES),
                          f"{r['hybrid_first_p50']:.1f} / {r['bm25_first_p50']:.1f}")
        console.print(table)
        console.print(f"searches: {args.queries} per mode and size after one untimed, -k 5, modes interleaved, "
                      f"each query embedded by the real model ({rows[0]['model']}); index s: the first open, which "
                      "builds the BM25 postings; open s: a new process's open with them on disk; change visible s: "
                      "from another writer replacing one file to a running KnowledgeBase's search finding it (median of 3); "
                      "asked first: the searches of a mode that came first for their question (a third of them)")
    if loc:
        console.print(f"loc table ingest with the real model: {loc['rows']} rows in {loc['seconds']:.0f} s = "
                      f"{loc['rate']:.1f} rows/s (parse, embed, store); {loc['cpu_rate']:.1f} rows per CPU second of "
                      "the ingesting process (what a machine shared with other jobs changes least); the table again "
                      f"with one row edited: {loc['edited_s']:.1f} s")
    console.print(f"machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
