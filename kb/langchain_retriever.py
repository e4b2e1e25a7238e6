"""LangChain on the front door: a `BaseRetriever` whose documents are the canon `kb search` finds.

    from langchain_core.runnables import RunnableLambda
    from kb import KnowledgeBase
    from kb.langchain_retriever import LoreRetriever

    retriever = LoreRetriever(kb=KnowledgeBase.open(".kb"), k=5, npc="Sefa",
                              state={"chapter": 2, "flags": {"met_sefa": True}})
    chain = retriever | RunnableLambda(lambda docs: "\\n\\n".join(d.page_content for d in docs))

Each `Document` carries the chunk's id (``Document.id``), its text and its
metadata (``source``, ``title``, ``chapter``, ``speaker`` ...) plus the
retrieval ``score``. ``where``, an NPC's ``knows`` limits and the player's
game ``state`` (which narrows the card and sets the quest flags that
`requires:` canon needs) filter before ranking, through the same
``NPC.search`` mask as `kb npc ask --state`, so a chain built on an NPC's
retriever never sees canon that NPC may not know in that state.
"""

from __future__ import annotations

from typing import Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import model_validator

from kb.api import KnowledgeBase
from kb.retrieve import Hit


def as_document(hit: Hit) -> Document:
    """A retrieved chunk as LangChain's Document: chunk id, text, chunk metadata with source and score."""
    return Document(id=hit.id, page_content=hit.text,
                    metadata={**hit.metadata, "source": hit.source, "score": float(hit.score)})


class LoreRetriever(BaseRetriever):
    """The k best canon chunks for a query, filtered by metadata ``where`` and, with ``npc``, what that
    NPC may see in the game ``state`` (``None``: the card alone, no quest flags set).

    Raises (when invoked):
        NotFound: ``npc`` names no NPC card in the knowledge base.
        InvalidState: the state is malformed.
        StateBeyondCard: the state asks for more than the NPC's card allows.
        Unavailable: there is no knowledge base there.
    """

    kb: KnowledgeBase
    k: int = 5
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    where: dict | None = None
    npc: str | None = None
    state: dict | None = None

    @model_validator(mode="after")
    def _state_needs_an_npc(self) -> "LoreRetriever":
        if self.state is not None and not self.npc:
            raise ValueError("state is a player's game state for an NPC: give npc as well")
        return self

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        if self.npc:
            hits = self.kb.npc(self.npc).search(query, k=self.k, mode=self.mode, where=self.where, state=self.state)
        else:
            hits = self.kb.search(query, k=self.k, mode=self.mode, where=self.where)
        return [as_document(hit) for hit in hits]
