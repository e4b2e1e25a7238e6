"""Score generated answers against gold answers, so models with and without retrieval compare on one table.

Retrieval metrics (kb.evaluate) say whether the canon was found; these say
whether the answer was right: normalized exact match and token F1 (SQuAD
style, with every CJK character its own token so Chinese scores fairly),
whether the answer contains a gold answer, and, with retrieval, the ceiling
of that (a gold answer inside the canon the answer drew on: its citations,
or what it retrieved without citing) and whether the answer's citations point
at the gold document.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

from ingest.text import CJK_CHARS, plain
from kb.answer import Answer
from kb.errors import LLMError
from kb.evaluate import first_hit_rank

if TYPE_CHECKING:
    from kb.api import KnowledgeBase

_CITATION = re.compile(r"\[\d+\]")
_CJK_OR_RUN = re.compile(f"[{CJK_CHARS}]|[^{CJK_CHARS}]+")
_ARTICLES = frozenset({"a", "an", "the"})
METRICS = ("exact_match", "f1", "contains", "ceiling", "citation_hit")


def answer_tokens(text: str) -> list[str]:
    """Normalized tokens: case- and width-folded, without [n] citations, punctuation or English
    articles; each CJK character is one token."""
    return [piece for word in plain(_CITATION.sub(" ", text)).split()
            for piece in _CJK_OR_RUN.findall(word) if piece not in _ARTICLES]


def _golds(answers: list[str]) -> list[list[str]]:
    return [answer_tokens(a) for a in answers if a and answer_tokens(a)] or [[]]


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer."""
    predicted = answer_tokens(prediction)
    return float(any(predicted == gold for gold in _golds(answers)))


def token_f1(prediction: str, answers: list[str]) -> float:
    """The best token-overlap F1 of the prediction against any gold answer."""
    predicted = answer_tokens(prediction)
    best = 0.0
    for gold in _golds(answers):
        common = sum((Counter(predicted) & Counter(gold)).values())
        if common:
            precision, recall = common / len(predicted), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains_answer(prediction: str, answers: list[str]) -> float:
    """1.0 when a normalized gold answer appears, whole, inside the normalized prediction."""
    predicted = f" {' '.join(answer_tokens(prediction))} "
    return float(any(gold and f" {' '.join(gold)} " in predicted for gold in _golds(answers)))


def score_answer(answer: Answer, item: dict, retrieval: bool) -> dict:
    """One question's figures; ceiling and citation_hit are None when the model answered without retrieval."""
    golds = [str(a) for a in item["answers"]]
    cited = [c.hit.source for c in answer.citations]
    canon = "\n".join(c.hit.text for c in answer.citations + answer.retrieved)
    return {
        "id": item.get("id"),
        "answer": answer.answer,
        "exact_match": exact_match(answer.answer, golds),
        "f1": round(token_f1(answer.answer, golds), 4),
        "contains": contains_answer(answer.answer, golds),
        "ceiling": contains_answer(canon, golds) if retrieval else None,
        "citation_hit": (first_hit_rank(cited, item["doc_id"]) is not None) if retrieval else None,
    }


def summarize_answers(per_question: list[dict], model: str, retrieval: bool, mode: str) -> dict:
    """One row of the comparison table."""
    n = len(per_question)
    row = {"model": model, "retrieval": retrieval, "mode": mode, "n": n}
    for metric in METRICS:
        values = [q[metric] for q in per_question if q[metric] is not None]
        row[metric] = round(sum(values) / n, 4) if values and n else None
    return row


def run_answers(kb: "KnowledgeBase", questions: list[dict], model: str | None = None,
                retrieval: bool = True, k: int = 5, extractive: bool = False) -> dict:
    """Answer every question with one model, with or without retrieval, and score the answers.

    Without a chat model configured, or with ``extractive``, retrieval runs answer
    extractively (the offline baseline); asking for a model, or for no retrieval,
    without one fails.

    Raises:
        LLMError: a model was named (or retrieval turned off) but no chat model is configured.
    """
    settings = kb.settings
    if model and not settings.llm_configured and not extractive:
        raise LLMError(f"answering with --model {model} needs a chat model: set OPENAI_API_KEY "
                       "or OPENAI_BASE_URL (or pass --base-url)")
    per_question, mode = [], "llm"
    for item in questions:
        answer = kb.ask(item["question"], k=k, model=model, retrieval=retrieval, extractive=extractive)
        mode = answer.mode
        per_question.append(score_answer(answer, item, retrieval))
    label = (model or settings.model) if mode == "llm" else "-"
    return {**summarize_answers(per_question, label, retrieval, mode), "questions": per_question}


def compare_answers(kb: "KnowledgeBase", questions: list[dict], models: list[str | None],
                    retrieval: bool | None = None, k: int = 5) -> list[dict]:
    """Rows for every model, each without and with retrieval (or only the setting asked for)."""
    settings_to_run = (False, True) if retrieval is None else (retrieval,)
    rows = []
    for model in models:
        for use_retrieval in settings_to_run:
            run = run_answers(kb, questions, model, use_retrieval, k)
            run.pop("questions")
            rows.append(run)
    return rows
