"""LangChain on the front door: a `BaseRetriever` whose documents are the canon `kb search` finds.

    from langchain_core.runnables import RunnableLambda
    from kb import KnowledgeBase
    from kb.langchain_retriever import LoreRetriever

    retriever = LoreRetriever(kb=KnowledgeBase.open(".kb"), k=5, npc="Sefa")
    chain = retriever | RunnableLambda(lambda docs: "\\n\\n".join(d.page_content for d in docs))

Each `Document` carries the chunk's id (``Document.id``), its text and its
metadata (``source``, ``title``, ``chapter``, ``speaker`` ...) plus the
retrieval ``score``. ``where`` and an NPC's ``knows`` limits filter before
ranking, exactly as in `kb search --where` and `kb npc ask`, so a chain built
on an NPC's retriever never sees canon that NPC may not know.
"""

from __future__ import annotations

from typing import Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from kb.api import KnowledgeBase
from kb.retrieve import Hit


def as_document(hit: Hit) -> Document:
    """A retrieved chunk as LangChain's Document: chunk id, text, chunk metadata with source and score."""
    return Document(id=hit.id, page_content=hit.text,
                    metadata={**hit.metadata, "source": hit.source, "score": float(hit.score)})


class LoreRetriever(BaseRetriever):
    """The k best canon chunks for a query, filtered by metadata ``where`` and, with ``npc``, that NPC's limits.

    Raises (when invoked):
        NotFound: ``npc`` names no NPC card in the knowledge base.
        Unavailable: there is no knowledge base there.
    """

    kb: KnowledgeBase
    k: int = 5
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    where: dict | None = None
    npc: str | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        card = self.kb.npc(self.npc).card if self.npc else None
        hits = self.kb.search(query, k=self.k, mode=self.mode, where=self.where,
                              limits=card.knows if card else None, strict=bool(card and card.strict))
        return [as_document(hit) for hit in hits]
