"""The routes, on module-level routers: each turns HTTP into one call on the KnowledgeBase and back.

Nothing here retrieves or answers by itself; the app (kb/server/app.py) puts
the KnowledgeBase, its ingest roots and its options on ``app.state``.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from kb.api import NPC, KnowledgeBase
from kb.errors import InvalidRequest, KBError, NotFound
from kb.server import streaming
from kb.server.schemas import (
    MAX_QUESTION_CHARS,
    AnswerResponse,
    AskRequest,
    ChatMessage,
    ChatRequest,
    IngestRequest,
    IngestResponse,
    SearchRequest,
    SearchResponse,
)
from kb.server.security import authorize, confine

KB_MODEL = "kb"
NPC_PREFIX = "npc:"

service = APIRouter(tags=["service"])
json_api = APIRouter(tags=["json"], dependencies=[Depends(authorize)])
openai_api = APIRouter(tags=["openai"], dependencies=[Depends(authorize)])


def knowledge_base(request: Request) -> KnowledgeBase:
    return request.app.state.kb


def extractive(request: Request, asked: bool = False) -> bool:
    """Quote the canon when the server was started --extractive or the request asks for it."""
    return request.app.state.extractive or asked


def find_npc(kb: KnowledgeBase, name: str, code: str = "npc_not_found") -> NPC:
    try:
        return kb.npc(name)
    except NotFound as exc:
        raise NotFound(str(exc), code) from None


@service.get("/healthz")
def healthz():
    """Liveness, open without the token (load balancers): the process answers, the store is not touched."""
    return {"status": "ok"}


@service.get("/status", dependencies=[Depends(authorize)])
def status(request: Request):
    """Files, cards, chunks, embedding model and last ingest, as `kb status --json`."""
    kb = knowledge_base(request)
    return {**kb.status(), "llm": kb.settings.llm_configured and not request.app.state.extractive}


@json_api.post("/search", response_model=SearchResponse)
def search(body: SearchRequest, request: Request):
    """The canon chunks that best match a query, as `kb search --json`."""
    hits = knowledge_base(request).search(body.query, k=body.k, mode=body.mode, where=body.where)
    return {"query": body.query, "results": [h.to_json() for h in hits]}


@json_api.post("/ask", response_model=AnswerResponse, response_model_exclude_none=True)
def ask(body: AskRequest, request: Request):
    """An answer from the canon with [n] citations, as `kb ask --json`."""
    answer = knowledge_base(request).ask(body.question, k=body.k,
                                         extractive=extractive(request, body.extractive))
    return answer.to_json()


@json_api.post("/npc/{name}/ask", response_model=AnswerResponse)
def npc_ask(name: str, body: AskRequest, request: Request):
    """An NPC's in-character answer from only the canon its card allows, as `kb npc ask --json`."""
    character = find_npc(knowledge_base(request), name)
    return character.ask(body.question, k=body.k, extractive=extractive(request, body.extractive)).to_json()


@json_api.post("/ingest", response_model=IngestResponse)
def ingest(body: IngestRequest, request: Request):
    """Ingest files or folders on the server (under its --root folders), as `kb ingest --json`."""
    paths = [confine(p, request.app.state.roots) for p in body.paths]
    return knowledge_base(request).ingest(paths).to_json()


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "lore-kb"}


def _model_ids(kb: KnowledgeBase) -> list[str]:
    return [KB_MODEL] + [f"{NPC_PREFIX}{name}" for name in sorted(kb.npcs())]


@openai_api.get("/v1/models")
def list_models(request: Request):
    """`kb` (lore answers) and `npc:<Name>` for every NPC card."""
    return {"object": "list", "data": [_model_card(m) for m in _model_ids(knowledge_base(request))]}


@openai_api.get("/v1/models/{model_id:path}")
def get_model(model_id: str, request: Request):
    if model_id not in _model_ids(knowledge_base(request)):
        raise NotFound(f"unknown model '{model_id}'", "model_not_found")
    return _model_card(model_id)


def last_user_message(messages: list[ChatMessage]) -> str:
    """The question: the last user message's text.

    Raises:
        KBError: there is no user message, or it is too long.
    """
    for message in reversed(messages):
        if message.role != "user":
            continue
        content = message.content
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        text = (content or "").strip()
        if len(text) > MAX_QUESTION_CHARS:
            raise InvalidRequest(f"the question is over {MAX_QUESTION_CHARS} characters")
        if text:
            return text
        break
    raise KBError("no user message to answer; the last user message is the question", "invalid_request")


@openai_api.post("/v1/chat/completions")
def chat_completions(body: ChatRequest, request: Request):
    """Answer the last user message as `kb` or in character as `npc:<Name>`; `stream: true` for SSE."""
    question = last_user_message(body.messages)
    kb = knowledge_base(request)
    if body.model == KB_MODEL:
        answerer = kb
    elif body.model.startswith(NPC_PREFIX):
        answerer = find_npc(kb, body.model[len(NPC_PREFIX):], "model_not_found")
    else:
        raise NotFound(f"unknown model '{body.model}'; GET /v1/models lists `kb` and `npc:<Name>` for "
                       "each NPC card", "model_not_found")
    quote = extractive(request)

    def run(on_token=None):
        return answerer.ask(question, k=body.k, extractive=quote, on_token=on_token)

    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    if not body.stream:
        return streaming.completion(base, question, run())
    first, events = streaming.start(run)
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    return StreamingResponse(streaming.sse_events(base, first, events, question, include_usage),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
