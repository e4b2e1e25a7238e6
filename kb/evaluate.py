"""Retrieval metrics on a question set: recall@k, MRR, nDCG@10, answer recall@5."""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from ingest.text import plain
from kb.errors import KBError

if TYPE_CHECKING:
    from kb.api import KnowledgeBase

DEPTH = 10


def read_questions(path: str) -> list[dict]:
    """Read a QA.jsonl file; every line needs question, answers and doc_id.

    Raises:
        KBError: the file is missing or a line is malformed (named by number).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise KBError(f"{path}: cannot read question set: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise KBError(f"{path}: question set is not UTF-8 (bad byte at offset {exc.start})") from None
    questions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KBError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not all(k in item for k in ("question", "answers", "doc_id")):
            raise KBError(f"{path}:{number}: a line needs question, answers and doc_id")
        if not isinstance(item["question"], str) or not item["question"].strip():
            raise KBError(f"{path}:{number}: question must be non-empty text")
        if not isinstance(item["answers"], list) or not all(isinstance(a, str) for a in item["answers"]):
            raise KBError(f"{path}:{number}: answers must be a list of strings")
        if not isinstance(item["doc_id"], (str, int)) or isinstance(item["doc_id"], bool):
            raise KBError(f"{path}:{number}: doc_id must be text (the gold file's name without extension)")
        questions.append(item)
    if not questions:
        raise KBError(f"{path}: no questions")
    return questions


def first_hit_rank(sources: list[str], doc_id: str) -> int | None:
    """1-based rank of the first chunk from the gold document, or None."""
    for rank, source in enumerate(sources, start=1):
        if PurePath(source).stem == str(doc_id):
            return rank
    return None


def score_question(sources: list[str], texts: list[str], item: dict) -> dict:
    """Per-question figures from the ranked chunks' sources and texts."""
    rank = first_hit_rank(sources, item["doc_id"])
    top5 = plain(" ".join(texts[:5]))
    return {
        "rank": rank,
        "answer_in_top5": any(plain(a) in top5 for a in item["answers"] if plain(a)),
    }


def summarize(per_question: list[dict]) -> dict:
    """Aggregate per-question figures into the metrics `kb eval --json` prints."""
    n = len(per_question)
    ranks = [q["rank"] for q in per_question]

    def recall(k):
        return sum(1 for r in ranks if r is not None and r <= k) / n

    return {
        "n": n,
        "recall@1": round(recall(1), 4),
        "recall@5": round(recall(5), 4),
        "recall@10": round(recall(10), 4),
        "mrr": round(sum(1 / r for r in ranks if r) / n, 4),
        "ndcg@10": round(sum(1 / math.log2(r + 1) for r in ranks if r) / n, 4),
        "answer_recall@5": round(sum(q["answer_in_top5"] for q in per_question) / n, 4),
    }


def run_questions(kb: "KnowledgeBase", questions: list[dict], mode: str = "hybrid") -> list[dict]:
    """Run every question through retrieval in one mode; per-question figures."""
    per_question = []
    for item in questions:
        hits = kb.search(item["question"], k=DEPTH, mode=mode)
        per_question.append(score_question([h.source for h in hits], [h.text for h in hits], item))
    return per_question


def recall_curve(per_question: list[dict]) -> list[float]:
    """recall@k for k = 1..10, for plotting."""
    ranks = [q["rank"] for q in per_question]
    return [sum(1 for r in ranks if r and r <= k) / len(ranks) for k in range(1, DEPTH + 1)]
