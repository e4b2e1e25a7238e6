"""How well the "not in the canon" check separates answerable from unanswerable questions.

Prints the relevance score of every question in corpora/eval (world-qa and
crosslingual are answerable; unanswerable.jsonl is not) against the sample
world, and how many of each pass the threshold kb.answer.MIN_RELEVANCE.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from kb.answer import MIN_RELEVANCE, coverages, dense_similarities, relevance  # noqa: E402
from kb.api import KnowledgeBase  # noqa: E402
from kb.context import pack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "corpora" / "eval"


def questions(name: str) -> list[str]:
    return [json.loads(line)["question"] for line in (EVAL / name).read_text().splitlines() if line]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, help="reuse a store of the sample world")
    args = parser.parse_args()
    kb_dir = args.kb or Path(tempfile.mkdtemp()) / "kb"
    kb = KnowledgeBase.open(kb_dir)
    if not args.kb:
        kb.ingest([str(ROOT / "corpora")])
    store, corpus = kb.store, kb.corpus
    groups = {"answerable": questions("world-qa.jsonl") + questions("crosslingual.jsonl"),
              "unanswerable": questions("unanswerable.jsonl")}
    print(f"threshold MIN_RELEVANCE = {MIN_RELEVANCE}")
    for label, items in groups.items():
        scores = []
        for question in items:
            cited = pack(kb.search(question, k=5), kb.settings.context_tokens)
            scores.append(relevance(coverages(question, cited, corpus.idf), dense_similarities(store, question, cited)))
        passed = sum(s >= MIN_RELEVANCE for s in scores)
        print(f"{label:13} n={len(scores):3}  answered={passed:3}  "
              f"scores min/median/max = {min(scores):.2f} / {sorted(scores)[len(scores) // 2]:.2f} / {max(scores):.2f}")


if __name__ == "__main__":
    main()
