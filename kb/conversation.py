"""Conversations: a follow-up question keeps its subject, and the model sees a bounded history.

"And who hired them?" names nobody. Retrieval therefore searches a condensed
query: the question plus the rarest terms and names of the last few turns,
each weighted by its corpus IDF and by DECAY per turn of age, so the subject
of the previous exchange comes along and the talk of three exchanges ago
fades. With a chat model configured and KB_CONDENSE=model, the model rewrites
the follow-up as a standalone question instead.
"""

from __future__ import annotations

import re
from typing import Callable

from ingest.text import CJK_CHARS
from ingest.tokens import count_tokens
from kb.config import Settings
from kb.errors import KBError
from kb.lexical import tokens
from kb.llm import chat

MAX_TURNS = 6               # messages of history kept (three exchanges)
MAX_HISTORY_TOKENS = 800    # and never more tokens than this
CONDENSE_TURNS = 4          # messages the offline condenser reads
DECAY = 0.5                 # a term's weight per exchange of age
NAME_BOOST = 1.5            # a capitalised word (a name) counts for more than its rarity alone
REPLY_SHARE = 0.5           # a name from the NPC's reply weighs half one from the player
MIN_WEIGHT = 1.0            # idf 1.0: a word in about 70% of chunks
CARRIED_TERMS = 5
ROLES = ("user", "assistant")

_CITATION = re.compile(r"\[\d+\]")
_SURFACE = re.compile(rf"[A-Za-z][A-Za-z'-]*[A-Za-z]|[{CJK_CHARS}]+")
CONDENSE_INSTRUCTION = (
    "Rewrite the player's last question so it can be understood without the conversation: "
    "replace pronouns with the names they stand for. Reply with the question only."
)


def message_text(content) -> str:
    """The text of an OpenAI message's content (a string, or a list of parts)."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def split_messages(messages: list[dict]) -> tuple[str, list[dict]]:
    """The question (the last user message) and the user/assistant turns before it.

    Client system messages are dropped: the NPC's persona and rules are ours to set.

    Raises:
        KBError: there is no user message with text to answer (HTTP 400).
    """
    turns = [{"role": m["role"], "content": message_text(m.get("content")).strip()}
             for m in messages if m.get("role") in ROLES]
    while turns and not turns[-1]["content"]:
        turns.pop()
    if not turns or turns[-1]["role"] != "user":
        raise KBError("no user message to answer; the last user message is the question", "invalid_request")
    return turns[-1]["content"], [t for t in turns[:-1] if t["content"]]


def bounded_history(history: list[dict], max_turns: int = MAX_TURNS,
                    max_tokens: int = MAX_HISTORY_TOKENS) -> list[dict]:
    """The most recent turns that fit both caps, oldest first, citations markers removed."""
    kept: list[dict] = []
    used = 0
    for turn in reversed(history[-max_turns:]):
        text = _CITATION.sub("", turn["content"]).strip()
        cost = count_tokens(text) + 4
        if used + cost > max_tokens:
            break
        kept.append({"role": turn["role"], "content": text})
        used += cost
    return kept[::-1]


def _surface_terms(text: str) -> list[str]:
    """Words as written (names keep their capitals), and each CJK run as its character pairs."""
    terms = []
    for word in _SURFACE.findall(_CITATION.sub(" ", text)):
        if word[0].isascii():
            terms.append(word)
        else:
            terms.extend([word] if len(word) == 1 else [word[i:i + 2] for i in range(len(word) - 1)])
    return terms


def carried_terms(question: str, history: list[dict], idf: Callable[[str], float],
                  decay: float = DECAY, limit: int = CARRIED_TERMS) -> list[str]:
    """The terms of the earlier turns that a follow-up leaves out, heaviest first.

    From the player's turns every content word counts (their questions are short
    and name the subject); from the replies only names do, at REPLY_SHARE of the
    weight. A term weighs its IDF, times NAME_BOOST for a name, times DECAY per
    exchange of age; terms under MIN_WEIGHT (words in most chunks) are never carried.
    """
    asked = set(tokens(question))
    weights: dict[str, tuple[float, str]] = {}
    age = 0
    for turn in reversed(history[-CONDENSE_TURNS:]):
        from_player = turn["role"] == "user"
        for word in _surface_terms(turn["content"]):
            stems = tokens(word)
            name = word[0].isupper() and word[0].isascii()
            if not stems or asked & set(stems) or "'" in word or not (from_player or name):
                continue
            weight = max(idf(s) for s in stems) * decay ** age
            weight *= (NAME_BOOST if name else 1.0) * (1.0 if from_player else REPLY_SHARE)
            folded = word.casefold()
            if weight >= MIN_WEIGHT and weight > weights.get(folded, (0.0, ""))[0]:
                weights[folded] = (weight, word)
        if from_player:
            age += 1
    ranked = sorted(weights.values(), key=lambda item: -item[0])
    return [word for _, word in ranked[:limit]]


def condense(question: str, history: list[dict], idf: Callable[[str], float]) -> str:
    """The retrieval query for a question in a conversation: the question and the carried terms."""
    carried = carried_terms(question, history, idf)
    return f"{question} {' '.join(carried)}" if carried else question


def condense_with_model(question: str, history: list[dict], settings: Settings,
                        model: str | None = None) -> str:
    """A standalone version of a follow-up, written by the chat model (KB_CONDENSE=model).

    Raises:
        LLMError: the chat model cannot be reached or refuses.
    """
    if not history:
        return question
    transcript = "\n".join(f"{t['role']}: {t['content']}" for t in history)
    rewritten = chat([{"role": "system", "content": CONDENSE_INSTRUCTION},
                      {"role": "user", "content": f"{transcript}\n\nLast question: {question}"}],
                     settings, model).strip()
    return rewritten or question


def retrieval_query(question: str, turns: list[dict], settings: Settings, idf: Callable[[str], float],
                    model: str | None = None, extractive: bool = False) -> str:
    """What retrieval searches for a question after ``turns``: the model's rewrite when KB_CONDENSE=model
    and a model answers, else the question with the turns' carried terms.

    Raises:
        LLMError: KB_CONDENSE=model and the chat model fails.
    """
    if not turns:
        return question
    if settings.condense == "model" and settings.llm_configured and not extractive:
        return condense_with_model(question, turns, settings, model)
    return condense(question, turns, idf)
