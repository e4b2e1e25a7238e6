"""`kb mcp`: the knowledge base as tools for MCP clients (Claude Desktop, IDE agents), over stdio.

Tools: ``search``, ``ask``, ``npc_ask`` (with a game ``state`` and the conversation's
``history``, as `/npc/{name}/ask` takes them) and ``status``, each returning the same
JSON as the matching `kb ... --json` command. The server is read-only unless
started with ``--allow-ingest``, which adds an ``ingest`` tool confined to the
``--root`` folders, checked the way `kb serve --root` checks them (symlinks and
``..`` resolved, every file of a folder walk included).

As `kb serve` does, the server loads the store, its indexes and the model as it
starts (in a thread, so the client's handshake is answered at once), not at the
first call: a million chunks' vector index takes seconds to load.

A failure the user can fix (no such NPC, no knowledge base, a path outside the
roots) reaches the client as the tool's error text, the same one line the CLI
prints; stdout belongs to the protocol, so nothing else is printed there.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from kb.api import KnowledgeBase
from kb.errors import KBError
from kb.server.schemas import GAME_STATE_HELP, MAX_MESSAGES, Turn
from kb.server.security import confine

INSTRUCTIONS = (
    "Lore KB holds a game studio's canon (lore bibles, design docs, dialogue scripts). "
    "Use `search` to find canon passages, `ask` for an answer that cites them as [n], and `npc_ask` "
    "for a character's in-character answer from only the canon that character may know. "
    "Quote sources by their `source` path when you rely on them."
)
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
Where = dict[str, str | int | float | bool]
JSON = dict[str, Any]  # a bare `dict` return would not reach clients as structured content
Chunks = Annotated[int, Field(ge=1, le=50, description="how many canon chunks to retrieve")]
State = Annotated[dict[str, Any] | None, Field(description=GAME_STATE_HELP)]
History = Annotated[list[Turn] | None, Field(max_length=MAX_MESSAGES,
                                             description="the conversation before the question, oldest first")]


def reported(tool):
    """Run a tool, turning a KBError into the tool error text the client reads (not a crash)."""

    @functools.wraps(tool)
    def run(*args, **kwargs):
        try:
            return tool(*args, **kwargs)
        except KBError as exc:
            raise ToolError(str(exc)) from None

    return run


def build_server(kb: KnowledgeBase, roots: list[Path] | None = None, extractive: bool = False) -> MCPServer:
    """An MCP server over ``kb``; with ``roots``, also an ``ingest`` tool that reads only under them."""
    server = MCPServer("lore-kb", instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(annotations=READ_ONLY)
    @reported
    def search(query: str, k: Chunks = 5, mode: Literal["hybrid", "dense", "bm25"] = "hybrid",
               where: Where | None = None) -> JSON:
        """Find the canon chunks that best match a query, best first.

        `where` keeps only chunks whose metadata match every key, e.g. {"chapter": 2, "speaker": "Maren"}.
        Each result has id, text, score, source (the file) and metadata.
        """
        return {"query": query, "results": [hit.to_json() for hit in kb.search(query, k=k, mode=mode, where=where)]}

    @server.tool(annotations=READ_ONLY)
    @reported
    def ask(question: str, k: Chunks = 5) -> JSON:
        """Answer a lore question from the canon, citing excerpts as [n]; says so when the canon does not hold it.

        Returns answer, citations (n, source, id, text) and mode (llm or extractive).
        """
        return kb.ask(question, k=k, extractive=extractive).to_json()

    @server.tool(annotations=READ_ONLY)
    @reported
    def npc_ask(name: str, question: str, k: Chunks = 5, state: State = None, history: History = None) -> JSON:
        """Ask an NPC (by card or speaker name) a player's question; they answer in character.

        They use only the canon their card lets them know, narrowed by the game state, and give their own
        "unknown" line beyond it. A follow-up keeps its subject from the history.
        """
        turns = [turn.model_dump() for turn in history or []]
        return kb.npc(name).ask(question, k=k, extractive=extractive, history=turns, state=state).to_json()

    @server.tool(annotations=READ_ONLY)
    @reported
    def status() -> JSON:
        """Files, NPC cards, chunks, embedding model, store size and last ingest of the knowledge base."""
        return kb.status()

    if roots:
        allowed = [Path(r).resolve() for r in roots]

        @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                                 idempotent_hint=True, open_world_hint=False))
        @reported
        def ingest(paths: list[str]) -> JSON:
            """Add, update and remove canon files incrementally (only under this server's ingest roots).

            Relative paths are taken under the roots. Returns added, updated, unchanged, removed, failed, skipped, warnings, chunks.
            """
            return kb.ingest([confine(path, allowed) for path in paths]).to_json()

    return server


def serve_stdio(kb: KnowledgeBase, roots: list[Path] | None = None, extractive: bool = False) -> None:
    """Serve ``kb`` to one MCP client on stdin/stdout until it disconnects.

    Raises:
        Unavailable: read-only (no ``roots``) and there is no knowledge base there yet.
    """
    if not roots:
        kb.store  # noqa: B018 - a read-only server over nothing fails now, with one line, not on each call
    warming = threading.Thread(target=kb.warm_or_log, name="kb-warm")  # as kb serve does, while the client connects
    warming.start()
    build_server(kb, roots, extractive).run("stdio")
    warming.join()
