"""LoreRetriever inside real LangChain chains: the documents that flow are the canon we ingested, and no more."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough
from pydantic import ValidationError

from kb import KnowledgeBase, NotFound
from kb.gamestate import StateBeyondCard
from kb.langchain_retriever import LoreRetriever
from tests.small_canon import BELL_QUESTION, HIDDEN_WORDS, chunk_ids_by_source, write_canon

KEY = ("---\nchapter: 1\nregion: Saltreach\nrequires: {flag: met_pell}\n---\n# The Ferry Key\n"
       "The ferry key hangs behind the tide chart in the harbourmaster's cottage.\n")
KEY_QUESTION = "Where does the ferry key hang?"


@pytest.fixture(scope="module")
def lore(tmp_path_factory) -> KnowledgeBase:
    """tests/small_canon.py's canon plus a chapter 1 secret that `requires:` a flag (ingested once here)."""
    root = tmp_path_factory.mktemp("lc")
    kb = KnowledgeBase.open(root / "kb")
    canon = write_canon(root / "canon")
    (canon / "world" / "key.md").write_text(KEY, encoding="utf-8")
    report = kb.ingest([str(canon)])
    assert not report.failed, report.failed
    return kb


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(f"[{d.metadata['source']}] {d.page_content}" for d in docs)


def test_documents_carry_chunk_ids_text_and_metadata(lore):
    ids = chunk_ids_by_source(lore)
    docs = LoreRetriever(kb=lore, k=5).invoke(BELL_QUESTION)
    assert docs[0].metadata["source"] == "world/betrayal.md"  # the only file that answers it
    assert {d.metadata["source"] for d in docs} == set(ids)
    for doc in docs:
        assert doc.id in ids[doc.metadata["source"]]
        assert isinstance(doc.metadata["score"], float)
        assert doc.metadata["chapter"] in (1, 4) and doc.metadata["region"] == "Saltreach"
    assert [d.metadata["score"] for d in docs] == sorted((d.metadata["score"] for d in docs), reverse=True)


def test_where_and_k_reach_the_search(lore):
    docs = LoreRetriever(kb=lore, where={"chapter": 1}, mode="bm25").invoke(BELL_QUESTION)
    assert docs and {d.metadata["source"] for d in docs} == {"world/harbour.md"}
    assert len(LoreRetriever(kb=lore, k=1).invoke(BELL_QUESTION)) == 1


def test_a_chain_formats_the_retrieved_canon(lore):
    chain = LoreRetriever(kb=lore, k=2) | RunnableLambda(format_docs)
    context = chain.invoke(BELL_QUESTION)
    assert context.startswith("[world/betrayal.md] ")
    assert all(word in context for word in HIDDEN_WORDS)


def test_a_limited_npc_never_gets_hidden_canon_through_a_chain(lore):
    """The full RAG shape: retriever and question in parallel, a prompt, a chat model (parrot), a parser."""
    prompt = ChatPromptTemplate.from_messages([
        ("system", "You are Pell. Answer only from the canon."),
        ("human", "Canon:\n{context}\n\nQuestion: {question}"),
    ])

    def chain_for(retriever):
        return (RunnableParallel(context=retriever | RunnableLambda(format_docs), question=RunnablePassthrough())
                | prompt | ParrotFakeChatModel() | StrOutputParser())

    sent_to_model = chain_for(LoreRetriever(kb=lore, k=10, npc="Pell")).invoke(BELL_QUESTION)
    assert "[world/harbour.md]" in sent_to_model and BELL_QUESTION in sent_to_model
    assert not any(word in sent_to_model for word in HIDDEN_WORDS)
    assert "world/betrayal.md" not in sent_to_model
    # the same chain without the NPC does carry the chapter 4 canon, so the check above can fail
    unlimited = chain_for(LoreRetriever(kb=lore, k=10)).invoke(BELL_QUESTION)
    assert all(word in unlimited for word in HIDDEN_WORDS)


def test_npc_limits_combine_with_where(lore):
    docs = LoreRetriever(kb=lore, npc="pell", where={"chapter": 4}).invoke(BELL_QUESTION)
    assert docs == []


def sources(docs: list[Document]) -> set[str]:
    return {d.metadata["source"] for d in docs}


def test_an_npc_retriever_sees_what_the_npc_sees_in_the_game_state(lore):
    unlocked = {"flags": {"met_pell": True}}
    assert "world/key.md" in sources(LoreRetriever(kb=lore, k=10).invoke(KEY_QUESTION))  # a writer sees it
    locked_docs = LoreRetriever(kb=lore, k=10, npc="Pell").invoke(KEY_QUESTION)
    assert locked_docs and "world/key.md" not in sources(locked_docs)   # Pell has not met the flag yet
    assert "world/key.md" in sources(LoreRetriever(kb=lore, k=10, npc="Pell", state=unlocked).invoke(KEY_QUESTION))
    # the same mask as `kb npc ask --state`: the NPC answers from the key only once the flag is set
    assert "tide chart" not in lore.npc("Pell").ask(KEY_QUESTION).answer
    assert "tide chart" in lore.npc("Pell").ask(KEY_QUESTION, state=unlocked).answer
    # a state narrows the card (chapter 0 of a chapter 1 card: nothing here) and may not widen it
    assert LoreRetriever(kb=lore, k=10, npc="Pell", state={"chapter": 0, **unlocked}).invoke(KEY_QUESTION) == []
    with pytest.raises(StateBeyondCard, match="beyond Pell's card"):
        LoreRetriever(kb=lore, npc="Pell", state={"chapter": 4}).invoke(KEY_QUESTION)
    with pytest.raises(ValidationError, match="give npc as well"):
        LoreRetriever(kb=lore, state=unlocked)


def test_async_invoke_returns_the_same_documents(lore):
    retriever = LoreRetriever(kb=lore, k=3)
    found = asyncio.run(retriever.ainvoke(BELL_QUESTION))
    assert found and [d.id for d in found] == [d.id for d in retriever.invoke(BELL_QUESTION)]


def test_an_unknown_npc_is_a_clear_error(lore):
    with pytest.raises(NotFound, match="no NPC named 'Nobody'.*Pell"):
        LoreRetriever(kb=lore, npc="Nobody").invoke(BELL_QUESTION)


def test_an_unknown_mode_is_refused_when_built(lore):
    with pytest.raises(ValidationError):
        LoreRetriever(kb=lore, mode="fuzzy")
