"""Answers with citations: from a chat model given the canon, or extracted from the canon itself.

Both modes see the same numbered canon. The offline default picks the
sentences that best cover the question and cites them; when the canon holds
nothing relevant, both modes say so rather than guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from kb.config import Settings
from kb.context import Citation, data_rule, new_nonce, pack, render
from kb.errors import KBError, LLMError
from kb.extract import choose, chunk_coverage, question_terms, remember
from kb.extract import render as render_quotes
from kb.llm import chat
from kb.retrieve import Corpus, search
from kb.store import Store

if TYPE_CHECKING:
    from kb.api import KnowledgeBase

NOT_IN_CANON = "The canon does not say."
INSTRUCTION = (
    "Answer the question using only the canon excerpts below. "
    "Cite every fact with the id of its excerpt in square brackets, like [1] or [2][3]. "
    f"If the excerpts do not contain the answer, reply exactly: {NOT_IN_CANON} "
    "Do not use outside knowledge and do not invent facts."
)
NO_CANON_INSTRUCTION = (
    "Answer the question about the game's world from what you know, briefly. "
    "If you do not know, say so rather than invent."
)
# Answers 32 of the sample world's 34 answerable questions and 1 of 12 unanswerable (bench/relevance.py):
# the lowest answered scores 0.774, the highest refused 0.768.
MIN_RELEVANCE = 0.77


@dataclass
class Answer:
    """What `kb ask --json` prints."""

    answer: str
    citations: list[Citation]
    mode: str
    extra: dict = field(default_factory=dict)
    retrieved: list[Citation] = field(default_factory=list)  # canon a model was shown but did not cite

    def to_json(self) -> dict:
        shown = {"retrieved": [c.to_json() for c in self.retrieved]} if self.retrieved else {}
        return {"answer": self.answer, "citations": [c.to_json() for c in self.citations],
                "mode": self.mode, **shown, **self.extra}


def coverages(question: str, cited: list[Citation], idf) -> dict[str, float]:
    """Each cited chunk's share of the question's rare terms (kb.extract.passage_coverage), by chunk id."""
    asked = question_terms(question, idf)
    return {c.hit.id: chunk_coverage(asked, c.hit.text, c.hit.metadata.get("title", "")) for c in cited}


def relevance(covered: dict[str, float], similarity: dict[str, float]) -> float:
    """How well the best chunk answers the question: rare-term coverage plus twice the cosine."""
    return max((value + 2 * similarity.get(cid, 0.0) for cid, value in covered.items()), default=0.0)


def extract(question: str, cited: list[Citation], idf) -> str:
    """The sentences of the canon that answer the question best, each with its citation (kb.extract)."""
    return render_quotes(choose(question, [(c.n, c.hit.text, c.hit.metadata.get("title", "")) for c in cited], idf))


def holds_answer(store: Store, question: str, cited: list[Citation], idf, searched: bool = False) -> bool:
    """The relevance check, fetching the chunks' cosines only when their words alone fall short of it.

    ``searched``: ``question`` is what retrieval searched, so the hits' own cosines can be used.
    """
    covered = coverages(question, cited, idf)
    if relevance(covered, {}) >= MIN_RELEVANCE:
        return True
    if searched and relevance(covered, searched_cosines(cited)) >= MIN_RELEVANCE:
        return True  # a chunk the dense ranking saw is enough: no query of the store for the others
    return relevance(covered, dense_similarities(store, question, cited, searched)) >= MIN_RELEVANCE


def build_messages(system: str, question: str, cited: list[Citation],
                   history: list[dict] | None = None) -> list[dict]:
    """The chat request: instructions, the conversation so far, then the fenced canon and the question.

    The fences' nonce is new for each request, so no chunk can close its own excerpt and pose as
    another excerpt, the instructions or the question.
    """
    nonce = new_nonce()
    return [
        {"role": "system", "content": f"{system}\n\n{data_rule(nonce)}"},
        *(history or []),
        {"role": "user", "content": f"Canon:\n\n{render(cited, nonce)}\n\nQuestion: {question}"},
    ]


def dense_similarities(store: Store, question: str, cited: list[Citation], searched: bool = False) -> dict[str, float]:
    """Cosine similarity of the question to each cited chunk (for the relevance check).

    A hybrid search already knows the cosines of the chunks its dense ranking saw (``searched``);
    only the others cost a query of the store.
    """
    known = searched_cosines(cited) if searched else {}
    missing = [c.hit.id for c in cited if c.hit.id not in known]
    if missing:
        known.update((cid, 1.0 - d) for cid, d in store.dense_query(question, len(missing), missing))
    return known


def searched_cosines(cited: list[Citation]) -> dict[str, float]:
    """The cosines a hybrid search already knows: those of the cited chunks its dense ranking saw."""
    return {c.hit.id: c.hit.cosine for c in cited if c.hit.cosine is not None}


def answer_without_canon(question: str, settings: Settings, system: str, model: str | None = None,
                         on_token: Callable[[str], None] | None = None) -> Answer:
    """The model's own answer with no canon in front of it: what a base or fine-tuned model knows alone.

    Raises:
        LLMError: no chat model is configured, or it fails.
    """
    if not settings.llm_configured:
        raise LLMError("answering without retrieval needs a chat model: set OPENAI_API_KEY "
                       "or OPENAI_BASE_URL (or pass --base-url)")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return Answer(chat(messages, settings, model, on_token), [], "llm")


def respond(kb: "KnowledgeBase", question: str, *, k: int = 5,
            extractive: bool = False, model: str | None = None, system: str | None = None,
            not_found: str = NOT_IN_CANON, limits: dict | None = None, retrieval: bool = True,
            on_token: Callable[[str], None] | None = None, flags: frozenset[str] | None = None,
            query: str | None = None, history: list[dict] | None = None, strict: bool = False,
            on_prompt: Callable[[list[dict]], None] | None = None, corpus: Corpus | None = None) -> Answer:
    """Retrieve, pack and answer one question; the NPC path passes its own system prompt and limits.

    With ``retrieval=False`` the model answers alone (no canon, no citations), so a
    fine-tuned model can be measured with and without the canon in front of it.
    In a conversation, ``query`` (kb/conversation.py's condensed question) is what
    retrieval searches and ``history`` the bounded turns the model sees before it.
    ``flags`` hides canon whose `requires:` they do not meet, ``strict`` canon without a
    limited key (kb/gamestate.py).
    ``on_prompt`` receives the messages a chat model is (or, offline, would be) sent,
    so the NPC evaluation can check them for hidden canon. ``corpus`` is the one the
    caller condensed the query with, so both rank on one generation of the store.
    """
    settings = kb.settings
    if not retrieval:
        if extractive:
            raise KBError("--extractive quotes the canon, so it cannot be combined with --no-retrieval")
        return answer_without_canon(question, settings, system or NO_CANON_INSTRUCTION, model, on_token)
    system = system or INSTRUCTION
    query = query or question
    corpus = corpus or kb.corpus  # one generation: the hits and the IDF from the same corpus
    store = kb.store  # after the corpus, which opens the store afresh for a new generation
    hits = search(store, corpus, query, k=k, limits=limits, flags=flags, strict=strict,
                  config=settings.retrieval)
    known = corpus.worked_out([hit.id for hit in hits])  # at indexing: token counts, sentence analyses
    cited = pack(hits, settings.context_tokens, {cid: tokens for cid, (tokens, _) in known.items()})
    for citation in cited:
        if citation.hit.id in known:
            remember(citation.hit.text, known[citation.hit.id][1])
    use_llm = settings.llm_configured and not extractive
    mode = "llm" if use_llm else "extractive"
    # a follow-up passes on the condensed query, a new subject on its own words; the query first,
    # since its cosines came with the search (the question alone costs another dense query)
    if not any(holds_answer(store, q, cited, corpus.idf, searched=q == query) for q in dict.fromkeys([query, question])):
        return Answer(not_found, [], mode)
    messages = build_messages(system, question, cited, history) if use_llm or on_prompt is not None else []
    if on_prompt is not None:
        on_prompt(messages)
    if not use_llm:
        return Answer(extract(query, cited, corpus.idf), cited, mode)
    text = chat(messages, settings, model, on_token)
    if text.strip() == not_found:  # the model found nothing: citing the canon would claim otherwise
        return Answer(text.strip(), [], mode)
    used = {int(n) for n in re.findall(r"\[(\d+)\]", text)}
    citations = [c for c in cited if c.n in used]
    return Answer(text, citations, mode, retrieved=[] if citations else cited)
