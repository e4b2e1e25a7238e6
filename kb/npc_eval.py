"""`kb eval --npc FILE`: does an NPC keep its secrets, say "I don't know" outside its limits, and answer inside them?

Each JSONL line names an NPC, a question, optionally a game state and a
conversation before it, and what is expected: ``{"fact": "..."}`` (the answer
must contain it; a list gives alternatives) or ``{"hidden": true}`` (the canon
that answers it is beyond the NPC's card or state, so the answer must be the
card's ``unknown_answer``).

Hidden canon is found from metadata, per question: every chunk the NPC's card,
narrowed by the question's state, does not allow (a later chapter, another
region, a `requires:` flag the state does not set). A question leaks when a
hidden chunk is cited, or one of its sentences is in the answer or in the
prompt a chat model is (offline: would be) sent.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

from ingest.cards import Card
from ingest.text import plain
from kb.errors import KBError
from kb.evaluate import read_jsonl
from kb.gamestate import card_visibility
from kb.in_character import npc_names

if TYPE_CHECKING:
    from kb.api import KnowledgeBase

_SENTENCES = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；])|\n+")
MIN_SENTENCE = 12  # shorter pieces ("Step in.") are too common to call a leak
_FIRST_PERSON = re.compile(r"\b(?:I|my|me|myself|I'm|I've)\b|我")


def read_npc_questions(path: str) -> list[dict]:
    """Read an NPC question set; each line needs npc, question and expected.

    Raises:
        KBError: the file is missing or a line is malformed (named by number).
    """
    items = []
    for number, item in read_jsonl(path):
        expected = item.get("expected") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("npc", "question")):
            raise KBError(f"{path}:{number}: a line needs npc and question (text) and expected")
        if not isinstance(expected, dict) or not (expected.get("hidden") is True or "fact" in expected):
            raise KBError(f'{path}:{number}: expected must be {{"fact": "..."}} or {{"hidden": true}}')
        if not isinstance(item.get("state", {}), dict) or not isinstance(item.get("history", []), list):
            raise KBError(f"{path}:{number}: state must be a mapping and history a list of turns")
        items.append(item)
    if not items:
        raise KBError(f"{path}: no questions")
    return items


def _sentences(text: str) -> set[str]:
    return {plain(s) for s in _SENTENCES.split(text) if len(plain(s)) >= MIN_SENTENCE}


def hidden_canon(kb: "KnowledgeBase", card: Card, state: dict | None) -> tuple[set[str], set[str]]:
    """The ids of the chunks the card and state hide, and their sentences found in no visible chunk."""
    seen = card_visibility(card, state)
    corpus = kb.corpus
    hidden_ids, hidden, visible = set(), set(), set()
    for cid, text, meta in corpus.chunks():
        if seen.allows(meta):
            visible |= _sentences(text)
        else:
            hidden_ids.add(cid)
            hidden |= _sentences(text)
    return hidden_ids, hidden - visible


def speaks_in_first_person(answer: str, card: Card) -> bool | None:
    """True when the answer refers to the NPC only as I/my/me, False when it names them in the third
    person, None when it refers to them neither way."""
    names = re.compile("|".join(rf"\b{re.escape(n)}\b" for n in npc_names(card)))
    third = bool(names.search(answer))
    if third:
        return False
    return True if _FIRST_PERSON.search(answer) else None


def _contains_fact(answer: str, fact) -> bool:
    facts = fact if isinstance(fact, list) else [fact]
    return any(plain(f) and plain(f) in plain(answer) for f in facts)


def run_npc_questions(kb: "KnowledgeBase", items: list[dict], k: int = 5) -> dict:
    """Ask every question; leak rate, unknown-answer and fact accuracy, first-person rate, latency."""
    hidden_by_key: dict[str, tuple[set[str], set[str]]] = {}
    rows = []
    for item in items:
        npc = kb.npc(item["npc"])
        state = item.get("state") or None
        key = json.dumps([npc.name, state], sort_keys=True)
        if key not in hidden_by_key:
            hidden_by_key[key] = hidden_canon(kb, npc.card, state)
        hidden_ids, hidden_sentences = hidden_by_key[key]
        prompts: list[list[dict]] = []
        started = time.perf_counter()
        answer = npc.ask(item["question"], k=k, history=item.get("history") or None, state=state,
                         on_prompt=prompts.append)
        latency = time.perf_counter() - started
        prompt = plain("\n".join(m["content"] for messages in prompts for m in messages))
        leaked_ids = [c.hit.id for c in answer.citations if c.hit.id in hidden_ids]
        leaked_text = [s for s in hidden_sentences if s in plain(answer.answer) or s in prompt]
        expected = item["expected"]
        unknown = answer.answer.strip() == npc.card.unknown_answer
        rows.append({
            "npc": npc.name, "question": item["question"], "state": state, "answer": answer.answer,
            "expected": expected, "unknown": unknown,
            "correct": unknown if expected.get("hidden") else _contains_fact(answer.answer, expected["fact"]),
            "leak": bool(leaked_ids or leaked_text), "leaked": leaked_ids + leaked_text[:3],
            "first_person": None if unknown else speaks_in_first_person(answer.answer, npc.card),
            "latency_ms": round(latency * 1000, 1),
        })
    return summarize_npc(rows)


def _share(rows: list[dict], key: str) -> float | None:
    return round(sum(1 for r in rows if r[key]) / len(rows), 4) if rows else None


def summarize_npc(rows: list[dict]) -> dict:
    """The figures `kb eval --npc --json` prints, and every question's row."""
    hidden = [r for r in rows if r["expected"].get("hidden")]
    facts = [r for r in rows if not r["expected"].get("hidden")]
    voiced = [r for r in rows if r["first_person"] is not None]
    latencies = sorted(r["latency_ms"] for r in rows)

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, round(q / 100 * (len(latencies) - 1)))]

    return {
        "n": len(rows), "hidden_questions": len(hidden), "fact_questions": len(facts),
        "leak_rate": _share(rows, "leak"),
        "unknown_accuracy": _share(hidden, "correct"),
        "fact_accuracy": _share(facts, "correct"),
        "first_person_rate": _share(voiced, "first_person"), "first_person_n": len(voiced),
        "p50_ms": percentile(50), "p95_ms": percentile(95),
        "questions": rows,
    }
