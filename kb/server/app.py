"""`kb serve`: the knowledge base over HTTP, for game engines (OpenAI chat API) and tools (JSON API).

Two APIs share one process (routes in kb/server/routes.py):

- OpenAI-compatible: ``GET /v1/models`` lists ``kb`` and ``npc:<Name>`` per
  card; ``POST /v1/chat/completions`` answers the last user message (after the turns
  before it, under the extension field ``state``), streamed
  (SSE) or not, with ``[n]`` citations in the text and a ``citations`` field.
- JSON: ``POST /search``, ``/ask``, ``/npc/{name}/ask``, ``/ingest``;
  ``GET /status``, ``/healthz``; the OpenAPI document at ``/openapi.json``.

Every request thread shares one ``KnowledgeBase`` (kb/api.py): one store and
one in-memory corpus that is swapped, never mutated, when the store's
generation moves, so queries keep answering while an ingest runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI

from kb.api import KnowledgeBase
from kb.config import RetrievalConfig, Settings
from kb.errors import KBError
from kb.server import routes
from kb.server.errors import install_error_handlers
from kb.server.replies import Replies
from kb.server.security import (
    MAX_BODY_BYTES,
    NPC_TOKEN_ENV,
    TOKEN_ENV,
    BodyLimit,
    HostAllowlist,
    allowed_hosts,
    check_exposure,
)
from kb.server.workers import run_workers, spreads_connections


def create_app(settings: Settings, *, token: str | None = None, npc_token: str | None = None,
               roots: list[Path] | None = None, extractive: bool = False,
               max_body_bytes: int = MAX_BODY_BYTES, hosts: list[str] | None = None) -> FastAPI:
    """The HTTP app over one knowledge base.

    ``token`` defaults to $KB_API_TOKEN and ``npc_token`` to $KB_NPC_TOKEN; when
    either is set, every route but /healthz and the docs needs ``Authorization:
    Bearer <token>``, and the NPC token opens only the NPC routes. ``roots`` are
    the folders /ingest may read (none: /ingest is off). ``hosts`` are the Host
    names answered besides the loopback ones. ``extractive`` never calls a chat
    model even when one is configured.
    """
    kb = KnowledgeBase(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await anyio.to_thread.run_sync(kb.warm_or_log)
        yield

    app = FastAPI(title="Lore KB", version="0.1.0", lifespan=lifespan,
                  description="Your studio's canon as an OpenAI-compatible chat API and a JSON API.")
    app.state.kb = kb
    app.state.token = token or os.environ.get(TOKEN_ENV) or None
    app.state.npc_token = npc_token or os.environ.get(NPC_TOKEN_ENV) or None
    app.state.roots = [Path(r).resolve() for r in roots or []]
    app.state.private = [*app.state.roots, *_kb_paths(settings)]  # never shown in a reply
    app.state.extractive = extractive
    app.state.replies = Replies()
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(HostAllowlist, hosts=allowed_hosts(hosts))
    install_error_handlers(app)
    for router in (routes.service, routes.json_api, routes.npc_api, routes.openai_api):
        app.include_router(router)
    return app


def _kb_paths(settings: Settings) -> list[Path]:
    """The knowledge base folder as given and as resolved (error messages may carry either)."""
    return [] if settings.chroma_url else [Path(settings.kb_dir).absolute(), Path(settings.kb_dir).resolve()]


WORKER_OPTIONS_ENV = "KB_SERVE_WORKER_OPTIONS"


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
          roots: list[Path] | None = None, token: str | None = None, npc_token: str | None = None,
          extractive: bool = False, allowed_host_names: list[str] | None = None, workers: int = 1) -> None:
    """Run the API with uvicorn until interrupted; it answers to the loopback names, ``host`` and
    ``allowed_host_names``.

    ``workers`` processes share the port, each with its own model and corpus: one process
    answers on about one core (Python's GIL), so a game server uses one per core.

    Raises:
        KBError: exposed without a token, a root that is not a folder, or no knowledge base
            to serve (and no root to ingest into it).
        ConfigError: exposed with a blank or short token.
    """
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    npc_token = npc_token if npc_token is not None else os.environ.get(NPC_TOKEN_ENV)
    check_exposure(host, token, npc_token)
    for root in roots or []:
        if not Path(root).is_dir():
            raise KBError(f"--root {root} is not a folder")
    if not roots:
        KnowledgeBase(settings).store  # noqa: B018 - fail now, in one line, rather than per request
    import uvicorn

    one_blas_thread()
    options = {"roots": roots, "extractive": extractive, "hosts": [host, *(allowed_host_names or [])]}
    if workers == 1:
        app = create_app(settings, token=token, npc_token=npc_token, **options)
        uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
        return
    # each worker starts afresh (spawn): it builds the app from what this process leaves in
    # its environment, the tokens under their usual names rather than in the options
    for name, value in ((TOKEN_ENV, token), (NPC_TOKEN_ENV, npc_token)):
        if value:
            os.environ[name] = value
    os.environ[WORKER_OPTIONS_ENV] = json.dumps({**options, "settings": _settings_fields(settings)}, default=str)
    if spreads_connections():
        run_workers(workers, host, port, f"{__name__}:worker_app")
        return
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, host=host, port=port,
                log_level="info", server_header=False)


def one_blas_thread() -> None:
    """Numpy's small products run on one BLAS thread in a server process: requests are the parallelism,
    and a second BLAS thread mostly spin-waits on the core another request needs (bench/serve.py,
    8 clients, new NPC questions: server CPU 31-34 -> 10-11 ms per request). USE sets its own
    limit, also one (kb/store/embed.py)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _settings_fields(settings: Settings) -> dict:
    """The settings as JSON values, less the API key (a worker reads it from the environment, as this
    process did)."""
    fields = dataclasses.asdict(settings)
    fields.pop("api_key")
    return fields


def worker_app() -> FastAPI:
    """The app of one `kb serve --workers N` process, as the parent would have built it."""
    one_blas_thread()
    options = json.loads(os.environ[WORKER_OPTIONS_ENV])
    fields = options.pop("settings")
    settings = Settings(**{**fields, "kb_dir": Path(fields["kb_dir"]),
                           "retrieval": RetrievalConfig(**fields["retrieval"])})
    return create_app(settings, **{**options, "roots": [Path(r) for r in options["roots"] or []]})
