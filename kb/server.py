"""`kb serve`: the knowledge base over HTTP, for game engines (OpenAI chat API) and tools (JSON API).

The line is drawn here: routes turn HTTP into calls of the same plain functions
the CLI uses (``search``, ``respond``, ``ask_npc``, ``ingest``) and their
results back into JSON; nothing in this module retrieves or answers by itself.

Two APIs share one process:

- OpenAI-compatible: ``GET /v1/models`` lists ``kb`` and ``npc:<Name>`` per
  card; ``POST /v1/chat/completions`` answers the last user message, streamed
  (SSE) or not, with ``[n]`` citations in the text and a ``citations`` field.
- JSON: ``POST /search``, ``/ask``, ``/npc/{name}/ask``, ``/ingest``;
  ``GET /status``, ``/healthz``; the OpenAPI document at ``/openapi.json``.

Every request thread shares one ``KnowledgeBase``: one store (chromadb clients
are thread-safe; the embedder serializes itself), and one in-memory corpus that
is swapped, never mutated, when the store's generation moves, so queries keep
answering from the last complete corpus while an ingest runs.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest.discover import discover
from ingest.tokens import count_tokens
from kb.answer import Answer, respond
from kb.config import Settings
from kb.errors import KBError, LLMError, ModelMismatch, StoreLocked
from kb.npc import ask_npc, cards, find_card
from kb.retrieve import Corpus, search
from kb.store import Store
from kb.sync import ingest

log = logging.getLogger("kb.server")

KB_MODEL = "kb"
NPC_PREFIX = "npc:"
MAX_BODY_BYTES = 1 << 20      # a chat history or a list of paths; canon arrives through /ingest paths
MAX_QUESTION_CHARS = 4000
MAX_MESSAGES = 200
MAX_ANSWER_K = 50             # as `kb ask -k`
MAX_SEARCH_K = 100            # as `kb search -k`
TOKEN_ENV = "KB_API_TOKEN"


class HTTPProblem(KBError):
    """A KBError with the HTTP status and OpenAI error code it should be answered with."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers


# -- exposure ---------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve the canon beyond this machine without a bearer token.

    Raises:
        KBError: ``host`` is not a loopback address and no token is set.
    """
    if not token and not is_loopback(host):
        raise KBError(f"refusing to listen on {host} without a token: set {TOKEN_ENV} to a long "
                      "random secret (clients send it as 'Authorization: Bearer ...'), "
                      "or bind to 127.0.0.1")


def confine(path: str, roots: list[Path]) -> str:
    """The server-side path a request names, if it lies under one of the ingest roots.

    Relative paths are taken relative to the first root that holds them. Symlinks and
    ``..`` are resolved before the check, and every file a folder walk would ingest is
    checked too, so no link escapes a root.

    Raises:
        HTTPProblem: 403 when ingest is off (no roots) or the path is outside every root.
    """
    if not roots:
        raise HTTPProblem(403, "ingest over HTTP is off; start `kb serve --root DIR` to allow "
                               "ingesting folders under DIR", "ingest_disabled")
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = next((r / path for r in roots if (r / path).exists()), roots[0] / path)
    resolved = candidate.resolve()
    if not _under(resolved, roots):
        raise HTTPProblem(403, f"'{path}' is outside the ingest roots of this server", "path_not_allowed")
    found, _, _ = discover([str(resolved)])
    for item in found:  # a symlinked file inside a walked folder may lead out
        if not _under(item.path.resolve(), roots):
            raise HTTPProblem(403, f"'{item.source}' in '{path}' links outside the ingest roots of "
                                   "this server", "path_not_allowed")
    return str(resolved)


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


# -- the shared knowledge base ------------------------------------------------

@dataclass(frozen=True)
class _Loaded:
    generation: int
    corpus: Corpus


class KnowledgeBase:
    """The store and its in-memory corpus, shared by every request thread.

    The corpus is replaced as a whole (one reference swap) when the store's
    generation changes; one thread reloads while the others keep answering from
    the previous corpus, which stays consistent because a file's old chunks are
    only deleted after its manifest row moved on (see kb/store.py).
    """

    def __init__(self, settings: Settings, roots: list[Path] | None = None, extractive: bool = False):
        self.settings = settings
        self.roots = [Path(r).resolve() for r in roots or []]
        self.extractive = extractive
        self._store: Store | None = None
        self._loaded: _Loaded | None = None
        self._open_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._ingest_lock = threading.Lock()

    def store(self) -> Store:
        """The store, opened on first use.

        Raises:
            HTTPProblem: 503 when there is no knowledge base yet or it cannot be reached.
        """
        if self._store is None:
            with self._open_lock:
                if self._store is None:
                    try:
                        self._store = Store(self.settings.kb_dir, self.settings.chroma_url)
                    except KBError as exc:
                        raise HTTPProblem(503, str(exc), "kb_unavailable") from None
        return self._store

    def corpus(self) -> Corpus:
        """The corpus of the store's current generation, or the previous one while another thread reloads."""
        store = self.store()
        loaded = self._loaded
        if loaded is not None and loaded.generation == store.generation():
            return loaded.corpus
        if loaded is None:
            with self._reload_lock:
                if self._loaded is None:
                    self._reload(store)
            return self._loaded.corpus
        if self._reload_lock.acquire(blocking=False):
            try:
                self._reload(store)
            finally:
                self._reload_lock.release()
        return self._loaded.corpus

    def refresh(self) -> None:
        """Load the current generation now (after an ingest, so its canon is visible at once)."""
        store = self.store()
        with self._reload_lock:
            if self._loaded is None or self._loaded.generation != store.generation():
                self._reload(store)

    def _reload(self, store: Store) -> None:
        # the generation is read first: if a write lands during the load, the next request reloads
        generation = store.generation()
        self._loaded = _Loaded(generation, Corpus.load(store))

    def warm(self) -> None:
        """Open the store, load the corpus and the embedding model before the first request."""
        try:
            self.corpus()
            self.store().embedder.embed_query(["warm up"])
        except KBError as exc:
            log.warning("%s", exc)

    def run_ingest(self, paths: list[str]) -> dict:
        """Ingest server-side paths (already confined), one ingest at a time per server.

        Raises:
            HTTPProblem: 409 while another ingest runs in this server.
            StoreLocked: another process holds the local store's write lock.
        """
        if not self._ingest_lock.acquire(blocking=False):
            raise HTTPProblem(409, "an ingest is already running on this server; try again when "
                                   "it finishes", "ingest_running")
        try:
            report = ingest(paths, self.settings)
        finally:
            self._ingest_lock.release()
        self.refresh()
        return report.to_json()


# -- request and response bodies ----------------------------------------------

Question = Field(min_length=1, max_length=MAX_QUESTION_CHARS)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Question
    k: int = Field(5, ge=1, le=MAX_SEARCH_K)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    where: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=20,
                                                       description="Only chunks whose metadata match.")


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Question
    k: int = Field(5, ge=1, le=MAX_ANSWER_K)
    extractive: bool = Field(False, description="Quote the canon; never call the chat model.")


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(min_length=1, max_length=100,
                             description="Files or folders on the server, under its --root folders.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(max_length=32)
    content: str | list[dict] | None = None


class ChatRequest(BaseModel):
    """An OpenAI chat request; sampling options are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(max_length=200, description="`kb` or `npc:<Name>` (see GET /v1/models).")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: dict | None = None
    k: int = Field(5, ge=1, le=MAX_ANSWER_K, description="Canon chunks to retrieve (extension).")


class Citation(BaseModel):
    n: int
    source: str
    id: str
    text: str


class AnswerResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    answer: str
    citations: list[Citation]
    mode: Literal["llm", "extractive"]
    npc: str | None = None


class Hit(BaseModel):
    id: str
    text: str
    score: float
    source: str
    metadata: dict


class SearchResponse(BaseModel):
    query: str
    results: list[Hit]


class IngestResponse(BaseModel):
    added: list[str]
    updated: list[str]
    unchanged: list[str]
    removed: list[str]
    failed: list[dict]
    skipped: list[dict]
    chunks: int


# -- request body size ----------------------------------------------------------

class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before any route reads it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        response = _error(413, f"request body over {self.max_bytes} bytes", "request_too_large")
        await response(scope, receive, send)


# -- errors ---------------------------------------------------------------------

def _error(status: int, message: str, code: str | None = None, headers: dict | None = None,
           param: str | None = None) -> JSONResponse:
    """The OpenAI error shape, for both APIs: ``{"error": {"message", "type", "code"}}``."""
    kind = ("authentication_error" if status == 401 else
            "invalid_request_error" if status < 500 else "server_error")
    body = {"message": message, "type": kind, "code": code, "param": param}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KBError)
    async def kb_error(request: Request, exc: KBError):
        if isinstance(exc, HTTPProblem):
            return _error(exc.status, str(exc), exc.code, exc.headers)
        if isinstance(exc, StoreLocked):
            return _error(409, str(exc), "store_locked")
        if isinstance(exc, ModelMismatch):
            return _error(409, str(exc), "model_mismatch")
        if isinstance(exc, LLMError):
            return _error(502, str(exc), "upstream_error")
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        response = _error(422, f"{where}: {first['msg']}" if where else first["msg"],
                          "invalid_request", param=where or None)
        body = json.loads(response.body)
        body["error"]["details"] = problems
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return _error(500, "internal error; the server log has the details", "internal_error")


# -- chat completions -------------------------------------------------------------

def _last_user_message(messages: list[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role != "user":
            continue
        content = message.content
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        text = (content or "").strip()
        if len(text) > MAX_QUESTION_CHARS:
            raise HTTPProblem(422, f"the question is over {MAX_QUESTION_CHARS} characters",
                              "invalid_request")
        if text:
            return text
        break
    raise HTTPProblem(400, "no user message to answer; the last user message is the question",
                      "invalid_request")


def _usage(question: str, answer: str) -> dict:
    prompt, completion = count_tokens(question), count_tokens(answer)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _chunk(base: dict, delta: dict, finish: str | None = None, **extra) -> str:
    event = {**base, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


_PIECE = re.compile(r"\S+\s*|\s+")


def _stream_events(base: dict, first, events: queue.Queue, question: str, include_usage: bool):
    """SSE in the OpenAI chunk shape: role, content deltas, a last chunk with citations, [DONE]."""
    yield _chunk(base, {"role": "assistant", "content": ""})
    streamed = False
    item = first
    while True:
        kind, value = item
        if kind == "token":
            streamed = True
            yield _chunk(base, {"content": value})
        elif kind == "error":
            log.error("chat stream failed: %s", value)
            message = str(value) if isinstance(value, KBError) else "internal error"
            yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
            return
        else:
            answer: Answer = value
            if not streamed:  # extractive, or nothing relevant: the whole answer, a word at a time
                for piece in _PIECE.findall(answer.answer):
                    yield _chunk(base, {"content": piece})
            citations = [c.to_json() for c in answer.citations]
            yield _chunk(base, {}, "stop", citations=citations, mode=answer.mode)
            if include_usage:
                yield f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [], 'usage': _usage(question, answer.answer)})}\n\n"
            yield "data: [DONE]\n\n"
            return
        item = events.get()


# -- the app ------------------------------------------------------------------------

def create_app(settings: Settings, *, token: str | None = None, roots: list[Path] | None = None,
               extractive: bool = False, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The HTTP app over one knowledge base.

    ``token`` defaults to $KB_API_TOKEN; when set, every route but /healthz and
    the docs needs ``Authorization: Bearer <token>``. ``roots`` are the folders
    /ingest may read (none: /ingest is off). ``extractive`` never calls a chat
    model even when one is configured.
    """
    token = token or os.environ.get(TOKEN_ENV) or None
    kb = KnowledgeBase(settings, roots, extractive)
    bearer = HTTPBearer(auto_error=False, description=f"The server's {TOKEN_ENV}.")

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPProblem(401, "missing or wrong bearer token; send 'Authorization: Bearer "
                                   f"<{TOKEN_ENV}>'", "invalid_api_key", {"WWW-Authenticate": "Bearer"})

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await anyio.to_thread.run_sync(kb.warm)
        yield

    app = FastAPI(title="Lore KB", version="0.1.0", lifespan=lifespan,
                  description="Your studio's canon as an OpenAI-compatible chat API and a JSON API.")
    app.state.kb = kb
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _install_error_handlers(app)
    api = APIRouter(dependencies=[Depends(authorize)] if token else [])

    @app.get("/healthz", tags=["service"])
    def healthz():
        """Liveness, open without the token (load balancers): the process answers, the store is not touched."""
        return {"status": "ok"}

    def answer_options(extractive_request: bool, k: int) -> dict:
        return {"k": k, "extractive": kb.extractive or extractive_request}

    def npc_card(store: Store, name: str, code: str = "npc_not_found") -> dict:
        try:
            return find_card(store, name)
        except KBError as exc:
            raise HTTPProblem(404, str(exc), code) from None

    @api.get("/status", tags=["service"])
    def status():
        """Files, cards, chunks, embedding model and last ingest, as `kb status --json`."""
        store = kb.store()
        return {**store.status(), "generation": store.generation(),
                "llm": settings.llm_configured and not kb.extractive}

    @api.post("/search", tags=["json"], response_model=SearchResponse)
    def search_route(body: SearchRequest):
        """The canon chunks that best match a query, as `kb search --json`."""
        hits = search(kb.store(), kb.corpus(), body.query, k=body.k, mode=body.mode, where=body.where)
        return {"query": body.query, "results": [h.to_json() for h in hits]}

    @api.post("/ask", tags=["json"], response_model=AnswerResponse, response_model_exclude_none=True)
    def ask_route(body: AskRequest):
        """An answer from the canon with [n] citations, as `kb ask --json`."""
        answer = respond(kb.store(), kb.corpus(), body.question, settings,
                         **answer_options(body.extractive, body.k))
        return answer.to_json()

    @api.post("/npc/{name}/ask", tags=["json"], response_model=AnswerResponse)
    def npc_ask_route(name: str, body: AskRequest):
        """An NPC's in-character answer from only the canon its card allows, as `kb npc ask --json`."""
        store = kb.store()
        card = npc_card(store, name)
        answer = ask_npc(store, kb.corpus(), card, body.question, settings,
                         **answer_options(body.extractive, body.k))
        return answer.to_json()

    @api.post("/ingest", tags=["json"], response_model=IngestResponse)
    def ingest_route(body: IngestRequest):
        """Ingest files or folders on the server (under its --root folders), as `kb ingest --json`."""
        paths = [confine(p, kb.roots) for p in body.paths]
        return kb.run_ingest(paths)

    def model_card(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "lore-kb"}

    def model_ids() -> list[str]:
        return [KB_MODEL] + [f"{NPC_PREFIX}{name}" for name in sorted(cards(kb.store()))]

    @api.get("/v1/models", tags=["openai"])
    def list_models():
        """`kb` (lore answers) and `npc:<Name>` for every NPC card."""
        return {"object": "list", "data": [model_card(m) for m in model_ids()]}

    @api.get("/v1/models/{model_id:path}", tags=["openai"])
    def get_model(model_id: str):
        if model_id not in model_ids():
            raise HTTPProblem(404, f"unknown model '{model_id}'", "model_not_found")
        return model_card(model_id)

    @api.post("/v1/chat/completions", tags=["openai"])
    def chat_completions(body: ChatRequest):
        """Answer the last user message as `kb` or in character as `npc:<Name>`; `stream: true` for SSE."""
        question = _last_user_message(body.messages)
        store = kb.store()
        if body.model == KB_MODEL:
            card = None
        elif body.model.startswith(NPC_PREFIX):
            card = npc_card(store, body.model[len(NPC_PREFIX):], "model_not_found")
        else:
            raise HTTPProblem(404, f"unknown model '{body.model}'; GET /v1/models lists `kb` and "
                                   "`npc:<Name>` for each NPC card", "model_not_found")
        corpus = kb.corpus()
        options = answer_options(False, body.k)

        def run(on_token=None) -> Answer:
            if card is None:
                return respond(store, corpus, question, settings, on_token=on_token, **options)
            return ask_npc(store, corpus, card, question, settings, on_token=on_token, **options)

        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
        if not body.stream:
            answer = run()
            citations = [c.to_json() for c in answer.citations]
            return {**base, "object": "chat.completion",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer.answer,
                                             "citations": citations}}],
                    "usage": _usage(question, answer.answer),
                    "citations": citations, "mode": answer.mode}

        events: queue.Queue = queue.Queue()

        def work():
            try:
                events.put(("done", run(on_token=lambda t: events.put(("token", t)))))
            except Exception as exc:  # reported in the stream (or as a status, if nothing was sent)
                events.put(("error", exc))

        threading.Thread(target=work, name="kb-chat-stream", daemon=True).start()
        first = events.get()
        if first[0] == "error":
            raise first[1]
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_stream_events(base, first, events, question, include_usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(api)
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
          roots: list[Path] | None = None, token: str | None = None, extractive: bool = False) -> None:
    """Run the API with uvicorn until interrupted.

    Raises:
        KBError: exposed without a token, a root that is not a folder, or no knowledge base
            to serve (and no root to ingest into it).
    """
    token = token or os.environ.get(TOKEN_ENV) or None
    check_exposure(host, token)
    for root in roots or []:
        if not Path(root).is_dir():
            raise KBError(f"--root {root} is not a folder")
    if not roots:
        Store(settings.kb_dir, settings.chroma_url)  # fail now, in one line, rather than per request
    import uvicorn

    app = create_app(settings, token=token, roots=roots, extractive=extractive)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
