"""How the store's costs grow with the canon: ingest rate, size on disk, memory and search latency at 1k, 10k and 100k chunks.

Chunks are generated (seeded sentences over a fixed invented vocabulary with a
Zipf-like word frequency; nothing downloads) and written through the real
kb.store.Store.put_file, manifest and batching included, as files of
--chunks-per-file chunks. Embedding 100k chunks with the real model would take
hours on this machine, so the stored vectors are seeded random unit vectors of
the model's dimension: the ingest rate here is the store's alone. The real
model's embedding rate is measured separately on ~500 real chunks (the current
chunker over fairytaleqa when ../shared/eval is there), so that

    real ingest time ~= chunks / embedding rate + chunks / store rate.

Queries embed with the real model (each call pays for its embedding). Each size
runs in its own process so peak RSS is that size's. Prints medians.

    python bench/scale.py [--sizes 1000,10000,100000] [--queries 50]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import (  # noqa: E402
    EVAL,
    forget_recent_embeddings,
    machine,
    median,
    peak_rss_mb,
    percentile,
    revision,
)
from kb.config import Settings  # noqa: E402
from kb.retrieve import MODES, Corpus, search  # noqa: E402
from kb.store import FileRecord, Store  # noqa: E402
from kb.store.embed import model_dim  # noqa: E402

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
    """Build a store of ``size`` generated chunks and time its ingest and searches (run in a fresh process)."""
    canon = Canon(seed)
    vectors = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="kb-bench-scale-") as tmp:
        store = Store(Path(tmp) / "kb", create=True)
        dim = model_dim(store.model)
        put_seconds = 0.0
        for index, start in enumerate(range(0, size, chunks_per_file)):
            record, ids, texts, metas, embeddings = synthetic_file(
                canon, vectors, index, min(chunks_per_file, size - start), words, dim)
            began = time.perf_counter()
            store.put_file(record, ids, texts, metas, embeddings)
            put_seconds += time.perf_counter() - began
        size_mb = store.size_bytes() / 1e6

        began = time.perf_counter()
        corpus = Corpus.load(store)
        corpus_seconds = time.perf_counter() - began
        asked = [canon.phrase(canon.rng.randint(3, 8)) for _ in range(queries + 1)]
        latencies = {mode: [] for mode in MODES}
        for i, question in enumerate(asked):
            for mode in MODES[i % 3:] + MODES[:i % 3]:  # each mode goes first in turn
                forget_recent_embeddings()
                began = time.perf_counter()
                search(store, corpus, question, k=5, mode=mode)
                latencies[mode].append(time.perf_counter() - began)
        chunks = store.count()
    timed = {mode: values[1:] for mode, values in latencies.items()}  # the first call loads the model
    return {"size": size, "chunks": chunks, "model": store.model, "dim": dim,
            "ingest_rate": size / put_seconds, "ingest_s": put_seconds, "size_mb": size_mb,
            "corpus_s": corpus_seconds, "rss_mb": peak_rss_mb(),
            **{f"{mode}_p50": median(v) * 1000 for mode, v in timed.items()},
            **{f"{mode}_p95": percentile(v, 95) * 1000 for mode, v in timed.items()}}


def real_chunks(count: int, words: int) -> tuple[list[str], str]:
    """About ``count`` chunk texts as ingest would embed them: fairytaleqa through the current chunker."""
    from ingest.load import load_chunks
    from kb.sync import passage_text

    settings = Settings()
    docs = sorted((EVAL / "fairytaleqa" / "docs").glob("*.txt"))
    texts = []
    for doc in docs:
        for chunk in load_chunks(doc.read_bytes(), doc.name, doc.stem, "0" * 40, settings.chunk_tokens,
                                 settings.chunk_overlap):
            texts.append(passage_text(chunk.text, chunk.meta))
        if len(texts) >= count:
            return texts[:count], f"fairytaleqa chunks at chunk_tokens={settings.chunk_tokens}"
    canon = Canon(11)
    return [canon.passage(words) for _ in range(count)], f"generated {words}-word chunks (no ../shared/eval)"


def measure_embedding(count: int, words: int) -> dict:
    """The real model's passage-embedding rate, through Store.embed_passages (run in a fresh process)."""
    texts, what = real_chunks(count, words)
    with tempfile.TemporaryDirectory(prefix="kb-bench-scale-") as tmp:
        store = Store(Path(tmp) / "kb", create=True)
        store.embed_passages(["warm up the model"])
        began = time.perf_counter()
        store.embed_passages(texts)
        seconds = time.perf_counter() - began
    return {"model": store.model, "chunks": len(texts), "what": what, "seconds": seconds,
            "rate": len(texts) / seconds}


def in_fresh_process(function, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="chunk counts [1000,10000,100000]")
    parser.add_argument("--queries", type=int, default=50, help="timed searches per mode and size [50]")
    parser.add_argument("--chunks-per-file", type=int, default=100, help="chunks per generated file [100]")
    parser.add_argument("--words", type=int, default=150, help="words per generated chunk (~200 tokens) [150]")
    parser.add_argument("--embed-sample", type=int, default=500, help="chunks for the real model's rate [500]")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    rows = []
    for size in sizes:
        print(f"  {size} chunks ...", file=sys.stderr)
        rows.append(in_fresh_process(measure_size, size, args.chunks_per_file, args.words, args.queries,
                                     args.seed))
        print(f"    ingest {rows[-1]['ingest_s']:.0f} s", file=sys.stderr)
    print(f"  embedding {args.embed_sample} real chunks ...", file=sys.stderr)
    embedding = in_fresh_process(measure_embedding, args.embed_sample, args.words)

    table = Table(title=f"Store and search at scale: generated chunks in files of {args.chunks_per_file}, "
                        f"random {rows[0]['dim']}-d unit vectors in place of embeddings")
    columns = ["chunks", "store chunks/s", "ingest s", "disk MB", "peak RSS MB", "Corpus.load s"]
    columns += [f"{mode} p50/p95 ms" for mode in MODES]
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['chunks']:,}", f"{r['ingest_rate']:.0f}", f"{r['ingest_s']:.1f}",
                      f"{r['size_mb']:.0f}", f"{r['rss_mb']:.0f}", f"{r['corpus_s']:.2f}",
                      *(f"{r[f'{m}_p50']:.1f} / {r[f'{m}_p95']:.1f}" for m in MODES))
    console = Console(width=140)
    console.print(table)
    console.print(f"searches: {args.queries} per mode and size after one untimed, -k 5, modes interleaved, "
                  f"each query embedded by the real model ({rows[0]['model']}); Corpus.load is cold "
                  "(builds BM25 and writes its cache)")
    console.print(f"real embedding rate ({embedding['model']}): {embedding['rate']:.1f} chunks/s on "
                  f"{embedding['chunks']} {embedding['what']} ({embedding['seconds']:.0f} s); e.g. 100,000 such "
                  f"chunks ~ {100_000 / embedding['rate'] / 3600:.1f} h of embedding on top of the store's time")
    console.print(f"machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
