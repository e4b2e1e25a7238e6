"""The routes, on module-level routers: each turns HTTP into one call on the KnowledgeBase and back.

Nothing here retrieves or answers by itself; the app (kb/server/app.py) puts
the KnowledgeBase, its ingest roots and its options on ``app.state``.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from kb.answer import Answer
from kb.api import NPC, KnowledgeBase
from kb.conversation import split_messages
from kb.errors import Forbidden, InvalidRequest, NotFound
from kb.server import streaming
from kb.server.errors import redact
from kb.server.schemas import (
    MAX_QUESTION_CHARS,
    AnswerResponse,
    AskRequest,
    ChatMessage,
    ChatRequest,
    IngestRequest,
    IngestResponse,
    NpcAskRequest,
    SearchRequest,
    SearchResponse,
)
from kb.server.security import authorize, confine, require_full

KB_MODEL = "kb"
NPC_PREFIX = "npc:"

service = APIRouter(tags=["service"])
json_api = APIRouter(tags=["json"], dependencies=[Depends(require_full)])
npc_api = APIRouter(tags=["json"], dependencies=[Depends(authorize)])  # what the NPC-only token opens
openai_api = APIRouter(tags=["openai"], dependencies=[Depends(authorize)])


def knowledge_base(request: Request) -> KnowledgeBase:
    return request.app.state.kb


def extractive(request: Request, asked: bool = False) -> bool:
    """Quote the canon when the server was started --extractive or the request asks for it."""
    return request.app.state.extractive or asked


def quoted(kb: KnowledgeBase, quote: bool) -> bool:
    """The answer will quote the canon: asked to, or no chat model is configured."""
    return quote or not kb.settings.llm_configured


def answer_for(request: Request, who: str, answerer: KnowledgeBase | NPC, question: str, *, k: int,
               quote: bool, history: list[dict] | None = None, state: dict | None = None,
               on_token=None) -> Answer:
    """``answerer``'s answer (``who``: `kb` or `npc:<Name>`); a quoted one comes from the server's
    replies when the same request came before on the same canon (kb/server/replies.py)."""
    def compute() -> Answer:
        return answerer.ask(question, k=k, extractive=quote, on_token=on_token, history=history, state=state)

    kb = knowledge_base(request)
    if not quoted(kb, quote):
        return compute()
    asked = {"who": who, "question": question, "history": history or [], "state": state, "k": k}
    return request.app.state.replies.answer(kb.corpus, asked, compute)


def find_npc(kb: KnowledgeBase, name: str, code: str = "npc_not_found") -> NPC:
    try:
        return kb.npc(name)
    except NotFound as exc:
        raise NotFound(str(exc), code) from None


@service.get("/healthz")
def healthz():
    """Liveness, open without the token (load balancers): the process answers, the store is not touched."""
    return {"status": "ok"}


@service.get("/status", dependencies=[Depends(require_full)])
def status(request: Request):
    """Files, cards, chunks, embedding model and last ingest, as `kb status --json` (the store by its
    folder's name only)."""
    kb = knowledge_base(request)
    found = kb.status()
    found["kb"] = redact(found["kb"], request.app.state.private)
    return {**found, "llm": kb.settings.llm_configured and not request.app.state.extractive}


@json_api.post("/search", response_model=SearchResponse)
def search(body: SearchRequest, request: Request):
    """The canon chunks that best match a query, as `kb search --json`."""
    hits = knowledge_base(request).search(body.query, k=body.k, mode=body.mode, where=body.where)
    return {"query": body.query, "results": [h.to_json() for h in hits]}


@json_api.post("/ask", response_model=AnswerResponse, response_model_exclude_none=True)
def ask(body: AskRequest, request: Request):
    """An answer from the canon with [n] citations, as `kb ask --json`."""
    kb = knowledge_base(request)
    return answer_for(request, KB_MODEL, kb, body.question, k=body.k,
                      quote=extractive(request, body.extractive)).to_json()


def conversation(body: NpcAskRequest) -> tuple[str, list[dict]]:
    """The question and the turns before it, from ``question`` (+ ``history``) or ``messages``.

    Raises:
        InvalidRequest: both forms, or neither.
    """
    if body.messages is not None:
        if body.question is not None or body.history is not None:
            raise InvalidRequest("give either question (with history) or messages, not both")
        return split_messages([t.model_dump() for t in body.messages])
    if body.question is None:
        raise InvalidRequest("give question (with history) or messages")
    return body.question, [t.model_dump() for t in body.history or []]


@npc_api.post("/npc/{name}/ask", response_model=AnswerResponse, response_model_exclude_none=True)
def npc_ask(name: str, body: NpcAskRequest, request: Request):
    """An NPC's in-character answer from only the canon its card (and the game state) allows,
    as `kb npc ask --json`; ``history`` or ``messages`` carry the conversation."""
    character = find_npc(knowledge_base(request), name)
    question, history = conversation(body)
    return answer_for(request, f"{NPC_PREFIX}{character.name}", character, question, k=body.k,
                      quote=extractive(request, body.extractive), history=history, state=body.state).to_json()


@json_api.post("/ingest", response_model=IngestResponse)
def ingest(body: IngestRequest, request: Request):
    """Ingest files or folders on the server (under its --root folders), as `kb ingest --json`
    with every path relative to its root."""
    paths = [confine(p, request.app.state.roots) for p in body.paths]
    report = knowledge_base(request).ingest(paths).to_json()
    return json.loads(redact(json.dumps(report), request.app.state.private))


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "lore-kb"}


def _model_ids(kb: KnowledgeBase, scope: str) -> list[str]:
    """The models a token may use: the NPC-only token does not see `kb`."""
    npcs = [f"{NPC_PREFIX}{name}" for name in sorted(kb.npcs())]
    return npcs if scope == "npc" else [KB_MODEL, *npcs]


@openai_api.get("/v1/models")
def list_models(request: Request, scope: str = Depends(authorize)):
    """`kb` (lore answers) and `npc:<Name>` for every NPC card."""
    return {"object": "list", "data": [_model_card(m) for m in _model_ids(knowledge_base(request), scope)]}


@openai_api.get("/v1/models/{model_id:path}")
def get_model(model_id: str, request: Request, scope: str = Depends(authorize)):
    if model_id not in _model_ids(knowledge_base(request), scope):
        raise NotFound(f"unknown model '{model_id}'", "model_not_found")
    return _model_card(model_id)


def chat_turns(messages: list[ChatMessage]) -> tuple[str, list[dict]]:
    """The question (the last user message) and every user/assistant turn before it.

    Raises:
        InvalidRequest: there is no user message, or the question is too long.
    """
    question, history = split_messages([m.model_dump() for m in messages])
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidRequest(f"the question is over {MAX_QUESTION_CHARS} characters")
    return question, history


@openai_api.post("/v1/chat/completions")
def chat_completions(body: ChatRequest, request: Request, scope: str = Depends(authorize)):
    """Answer the last user message, in the light of the turns before it, as `kb` or in character as
    `npc:<Name>`; ``state`` (extension) is the player's game state; `stream: true` for SSE."""
    question, history = chat_turns(body.messages)
    kb = knowledge_base(request)
    if body.model == KB_MODEL:
        if scope != "full":
            raise Forbidden("this token opens only the npc:<Name> models, not `kb`", "insufficient_scope")
        answerer = kb
    elif body.model.startswith(NPC_PREFIX):
        answerer = find_npc(kb, body.model[len(NPC_PREFIX):], "model_not_found")
    else:
        raise NotFound(f"unknown model '{body.model}'; GET /v1/models lists `kb` and `npc:<Name>` for "
                       "each NPC card", "model_not_found")
    quote = extractive(request)

    who = KB_MODEL if answerer is kb else f"{NPC_PREFIX}{answerer.name}"

    def run(on_token=None):
        return answer_for(request, who, answerer, question, k=body.k, quote=quote, history=history,
                          state=body.state, on_token=on_token)

    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    if not body.stream:  # already JSON's types: FastAPI's encoder would walk it again (0.5 ms)
        return JSONResponse(streaming.completion(base, question, run()))
    # a quoted answer streams no tokens: it is made here, not in a thread of its own
    first, events = streaming.start(run) if not quoted(kb, quote) else (("done", run()), None)
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    return StreamingResponse(streaming.sse_events(base, first, events, question, include_usage,
                                                  request.app.state.private),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
