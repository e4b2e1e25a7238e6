"""What each retrieval choice is worth: hybrid on the dev questions with one choice undone at a time.

Per set of ../shared/eval, our store is ingested with the current defaults
(or reused from --cache), then scored in hybrid mode:

- defaults: as shipped;
- no word pairs: the English word-pair BM25 index left out (pair_weight 0);
- Chinese question words kept: a question's stopword-only bigrams (是什么) stay in the query;
- min-max BM25: BM25 min-max scaled like the cosine, as before (the weakest match scores 0);
- dense weight w: the query language's cosine weight set to w.

Each row is a RetrievalConfig with one field changed, passed to the same search the CLI runs,
so the code measured is the code shipped. BM25 alone is printed for reference, and under the table the
ceiling of answer_recall@5: the share of questions whose gold answer string
appears in any chunk at all, and in a chunk of the gold document.

    python bench/ablation.py [--sets fairytaleqa,cmrc2018,drcd] [--cache DIR] [--weights 0,0.05,0.1,0.2,0.3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from dataclasses import replace  # noqa: E402

from bench.common import SETS, cached_store_dir, eval_set, ingested, machine, revision  # noqa: E402
from ingest.text import plain  # noqa: E402
from kb.config import RetrievalConfig  # noqa: E402
from kb.evaluate import run_questions, summarize  # noqa: E402
from kb.retrieve import Corpus  # noqa: E402

METRICS = ("recall@1", "recall@5", "mrr", "answer_recall@5")


def variants(weights: list[float]):
    """(label, config, mode) for every row of the table."""
    shipped = RetrievalConfig()
    yield "defaults", shipped, "hybrid"
    yield "no word pairs", replace(shipped, pair_weight=0.0), "hybrid"
    yield "Chinese question words kept", replace(shipped, drop_question_words=False), "hybrid"
    yield "min-max BM25", replace(shipped, bm25_scaling="min-max"), "hybrid"
    for weight in weights:
        yield f"dense weight {weight:g}", replace(shipped, dense_weight={"en": weight, "zh": weight}), "hybrid"
    yield "BM25 alone", shipped, "bm25"


def answer_ceiling(corpus: Corpus, questions: list[dict]) -> tuple[float, float]:
    """Shares of questions whose gold answer is in some chunk, and in some chunk of the gold document."""
    chunks = [(Path(meta.get("source", "")).stem, plain(text))
              for _, text, meta in corpus.chunks()]
    anywhere = in_gold = 0
    for item in questions:
        answers = [a for a in map(plain, item["answers"]) if a]
        anywhere += any(a in text for _, text in chunks for a in answers)
        in_gold += any(a in text for doc, text in chunks if doc == str(item["doc_id"]) for a in answers)
    return anywhere / len(questions), in_gold / len(questions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated [{','.join(SETS)}]")
    parser.add_argument("--cache", type=Path, help="keep our stores here and reuse them (as bench/baseline.py)")
    parser.add_argument("--weights", default="0,0.05,0.1,0.2,0.3", help="dense weights to try")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",") if w.strip()]

    table = Table(title="Hybrid on the dev questions with one choice undone (document-level)")
    ceilings = []
    for column in ("set", "variant", *METRICS):
        table.add_column(column, justify="left" if column in ("set", "variant") else "right")
    with tempfile.TemporaryDirectory(prefix="kb-bench-ablation-") as tmp:
        for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
            folder = eval_set(name)
            with open(folder / "qa.dev.jsonl", encoding="utf-8") as fh:
                questions = [json.loads(line) for line in fh if line.strip()]
            kb_dir = cached_store_dir(args.cache, name) if args.cache else Path(tmp) / name
            kb = ingested(kb_dir, folder / "docs")
            ceilings.append((name, *answer_ceiling(kb.corpus, questions)))
            rows = list(variants(weights))
            for label, config, mode in rows:
                figures = summarize(run_questions(kb.with_retrieval(config), questions, mode))
                table.add_row(name, label, *(f"{figures[m]:.4f}" for m in METRICS),
                              end_section=label == rows[-1][0])
                print(f"{name}: {label} done", file=sys.stderr)
    console = Console(width=140)
    console.print(table)
    for name, anywhere, in_gold in ceilings:
        console.print(f"{name}: answer_recall@5 ceiling: gold answer in any chunk {anywhere:.3f}, "
                      f"in a chunk of the gold document {in_gold:.3f}")
    console.print(f"machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
