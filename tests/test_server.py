"""`kb serve` as a game client sees it: the official openai client and plain HTTP against a running server.

Each server runs uvicorn in a thread on a free 127.0.0.1 port over its own
copy of the sample world's store.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from threadpoolctl import threadpool_info

import kb.api as kb_api
from ingest.discover import discover
from kb.api import KnowledgeBase
from kb.config import Settings
from kb.errors import Unavailable
from kb.retrieve import within_limits
from kb.server import create_app
from kb.store import Store, write_lock
from tests.conftest import CORPORA_PATHS, invoke

LATE_QUESTION = "Who commissioned the theft of the Kessel Glass?"
KESSEL_QUESTION = "What happened to the Kessel Glass on the first night of the festival?"  # later chapters say more
MAREN = {"chapter": 1, "region": ["Saltreach"]}
NEW_CANON = "The harbour bell of Greyhithe was cast by the smith Odo Varn from seven melted anchors."


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "kb serve did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def settings_for(kb_dir: Path, **overrides) -> Settings:
    settings = Settings(kb_dir=kb_dir, chroma_url=None, api_key=None, base_url=None)
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture(scope="module")
def store_copy(_corpora_kb, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("served") / "kb"
    shutil.copytree(_corpora_kb, path)
    return path


@pytest.fixture(scope="module")
def base_url(store_copy):
    """An open (loopback, no token) extractive server on the sample world, shared by this module."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("KB_API_TOKEN", raising=False)
        app = create_app(settings_for(store_copy))
    with running(app) as url:
        yield url


@pytest.fixture
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def hidden_ids(kb_dir: Path, limits: dict) -> set[str]:
    return {cid for cid, _, meta in Store(kb_dir).scan_chunks() if not within_limits(meta, limits)}


# -- the OpenAI-compatible API ----------------------------------------------------

def test_models_list_kb_and_every_npc(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["kb", "npc:Maren", "npc:Sefa Orrin", "npc:Ysolde Penhallow"]
    assert client.models.retrieve("npc:Maren").id == "npc:Maren"


def test_chat_answers_with_citations(client):
    reply = client.chat.completions.create(
        model="kb", messages=[{"role": "system", "content": "You are a lore assistant."},
                              {"role": "user", "content": "Who is the ferrywoman of the Saltreach crossing?"}])
    message = reply.choices[0].message
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason == "stop"
    assert "Maren" in message.content and "[1]" in message.content
    citations = message.model_extra["citations"]
    assert citations and citations == reply.model_extra["citations"]
    assert {"n", "source", "id", "text"} <= set(citations[0])
    assert reply.usage.total_tokens > 0


def test_chat_streams_the_same_answer(client):
    question = [{"role": "user", "content": "Who is the ferrywoman of the Saltreach crossing?"}]
    whole = client.chat.completions.create(model="kb", messages=question)
    chunks = list(client.chat.completions.create(model="kb", messages=question, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.model_extra["citations"] == whole.model_extra["citations"]
    assert chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_npc_model_answers_in_character_without_later_canon(client, store_copy, stream):
    hidden = hidden_ids(store_copy, MAREN)
    assert hidden
    request = dict(model="npc:Maren", messages=[{"role": "user", "content": KESSEL_QUESTION}],
                   extra_body={"k": 10})
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **request))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        citations = chunks[-1].model_extra["citations"]
    else:
        reply = client.chat.completions.create(**request)
        text, citations = reply.choices[0].message.content, reply.model_extra["citations"]
    assert "Aurel" not in text
    assert citations  # an answer from the canon she may know, so the leak check is not vacuous
    assert not {c["id"] for c in citations} & hidden
    assert not any(c["source"].startswith(("chapter-2", "chapter-3", "chapter-4")) for c in citations)


def test_npc_who_knows_more_cites_later_chapters(client, store_copy):
    reply = client.chat.completions.create(
        model="npc:Ysolde Penhallow", messages=[{"role": "user", "content": LATE_QUESTION}])
    assert reply.model_extra["citations"]
    assert reply.choices[0].message.content != "The tide hasn't brought me word of that, tidewalker."


def test_unknown_model_is_a_404_the_client_understands(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="npc:Nobody", messages=[{"role": "user", "content": "hi"}])
    assert "no NPC named 'Nobody'" in str(caught.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="kb", messages=[{"role": "system", "content": "only"}])


def test_generation_upstream_streams_through(store_copy, fake_openai):
    fake_openai.reply = "Maren rows it, tidewalker [1]."
    app = create_app(settings_for(store_copy, base_url=fake_openai.base_url), token=None)
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        request = dict(model="npc:Maren", messages=[{"role": "user", "content": LATE_QUESTION}],
                   extra_body={"k": 10})
        chunks = list(client.chat.completions.create(stream=True, **request))
        reply = client.chat.completions.create(**request)
    streamed = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(streamed) > 1 and "".join(streamed) == fake_openai.reply
    assert chunks[-1].model_extra["mode"] == "llm" and chunks[-1].model_extra["citations"]
    assert reply.choices[0].message.content == fake_openai.reply
    upstream = fake_openai.chat_requests()
    assert [r.get("stream", False) for r in upstream] == [True, False]
    prompt = "\n".join(m["content"] for m in upstream[0]["messages"])
    assert "You are Maren" in prompt and "Aurel" not in prompt


# -- the JSON API -------------------------------------------------------------------

def test_json_api_matches_the_cli(base_url, store_copy):
    with httpx.Client(base_url=base_url) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        status = http.get("/status").json()
        cli_status = invoke("status", "--kb", store_copy, "--json")
        found, _, _ = discover(CORPORA_PATHS)
        assert status["files"] == sum(f.kind == "canon" for f in found)
        assert status["cards"] == sum(f.kind == "card" for f in found) > 0
        assert status["chunks"] == Store(store_copy).count()
        assert cli_status.exit_code == 0 and f'"chunks": {status["chunks"]}' in cli_status.stdout

        found = http.post("/search", json={"query": "Orrin Light keeper", "k": 3,
                                           "where": {"speaker": "Sefa"}}).json()
        assert len(found["results"]) == 3 and all("Sefa" in r["metadata"]["speaker"]
                                                  for r in found["results"])
        answer = http.post("/ask", json={"question": "Who is the ferrywoman of the Saltreach crossing?"}).json()
        assert answer["mode"] == "extractive" and "Maren" in answer["answer"] and answer["citations"]
        npc = http.post("/npc/maren/ask", json={"question": LATE_QUESTION, "k": 10}).json()
        assert npc["npc"] == "Maren" and "Aurel" not in npc["answer"]
        assert http.post("/npc/nobody/ask", json={"question": "hi"}).status_code == 404
        schema = http.get("/openapi.json").json()
        assert {"/v1/chat/completions", "/search", "/ask", "/npc/{name}/ask", "/ingest",
                "/status"} <= set(schema["paths"])


def test_limits_answer_422_and_413_without_tracebacks(base_url):
    with httpx.Client(base_url=base_url) as http:
        too_many = http.post("/search", json={"query": "tide", "k": 1000})
        assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "k"
        assert http.post("/ask", json={"question": "x" * 5000}).status_code == 422
        assert http.post("/ask", content=b"{not json", headers={"content-type": "application/json"}
                         ).status_code == 422
        huge = {"model": "kb", "messages": [{"role": "user", "content": "tide " * 300_000}]}
        assert http.post("/v1/chat/completions", json=huge).status_code == 413
        chunked = http.post("/ask", content=iter([b'{"question": "', b"x" * (1 << 20), b'"}']),
                            headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"


def test_unexpected_errors_hide_their_details(base_url, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom at /srv/secret/path")

    monkeypatch.setattr(KnowledgeBase, "search", explode)
    with httpx.Client(base_url=base_url) as http:
        response = http.post("/search", json={"query": "tide"})
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "internal error; the server log has the details"
    assert "boom" not in response.text and "Traceback" not in response.text


def test_concurrent_requests_are_answered_correctly(base_url, client):
    questions = [("kb", "Who is the ferrywoman of the Saltreach crossing?"), ("kb", "What burns in the Orrin Light?"),
                 ("kb", "Where are the kilns?"), ("npc:Maren", "Tell me about the tides."),
                 ("npc:Sefa Orrin", "Who keeps the Orrin Light?"), ("npc:Maren", LATE_QUESTION),
                 ("npc:Ysolde Penhallow", LATE_QUESTION)]

    def ask(item):
        model, question = item
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               extra_body={"k": 3})
        return reply.choices[0].message.content, [c["id"] for c in reply.model_extra["citations"]]

    expected = {item: ask(item) for item in questions}
    work = (questions * 6)[:32]
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(ask, work))
    assert len(answers) == 32
    for item, answer in zip(work, answers):
        assert answer == expected[item], item


# -- security -------------------------------------------------------------------------

def test_token_is_required_when_set(store_copy):
    app = create_app(settings_for(store_copy), token="s3cret-token")
    with running(app) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret-token", max_retries=0)
        assert [m.id for m in good.models.list()][0] == "kb"
        with httpx.Client(base_url=url) as http:
            missing = http.post("/search", json={"query": "tide"})
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            assert http.get("/healthz").status_code == 200
            assert http.get("/status", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200


def test_token_is_read_from_the_environment(store_copy, monkeypatch):
    monkeypatch.setenv("KB_API_TOKEN", "from-env")
    with running(create_app(settings_for(store_copy))) as url, httpx.Client(base_url=url) as http:
        assert http.get("/status").status_code == 401
        assert http.get("/status", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(corpora_kb):
    result = invoke("serve", "--host", "0.0.0.0", "--kb", corpora_kb)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: refusing to listen on 0.0.0.0 without a token")
    assert len(result.stderr.strip().splitlines()) == 1
    result = invoke("serve", "--kb", corpora_kb.parent / "missing")
    assert result.exit_code == 1 and "no knowledge base" in result.stderr


FULL_TOKEN = "full-token-for-tools-0123456789"
NPC_TOKEN = "npc-token-a-game-ships-0123456789"


@pytest.fixture
def captured_uvicorn(monkeypatch) -> list[dict]:
    """`kb serve` runs up to uvicorn.run, which records what it was given instead of listening."""
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append({"app": app, **options}))
    return calls


def test_a_server_process_runs_numpy_on_one_blas_thread(store_copy, captured_uvicorn):
    assert invoke("serve", "--kb", store_copy).exit_code == 0 and captured_uvicorn
    assert [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"] == [1]


def test_dns_rebinding_is_refused_by_the_host_allowlist(store_copy, captured_uvicorn):
    assert invoke("serve", "--kb", store_copy, "--allowed-host", "kb.studio.lan").exit_code == 0
    [served] = captured_uvicorn
    with running(served["app"]) as url, httpx.Client(base_url=url) as http:
        port = url.rsplit(":", 1)[1]
        for host in (f"rebind.attacker.example:{port}", "attacker.example", f"localhost.attacker.example:{port}",
                     f"127.0.0.1.nip.io:{port}", ""):
            refused = http.post("/search", json={"query": "ferrywoman"}, headers={"Host": host})
            assert refused.status_code == 421, host
            assert refused.json()["error"]["code"] == "host_not_allowed" and "Maren" not in refused.text
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "kb.studio.lan",
                     f"KB.Studio.lan:{port}"):
            assert http.post("/search", json={"query": "ferrywoman"}, headers={"Host": host}).status_code == 200
        assert http.get("/healthz", headers={"Host": "10.0.0.7:8000"}).status_code == 200  # a probe by address


def test_the_npc_token_opens_only_the_npc_routes(store_copy, monkeypatch):
    monkeypatch.setenv("KB_API_TOKEN", FULL_TOKEN)
    monkeypatch.setenv("KB_NPC_TOKEN", NPC_TOKEN)
    with running(create_app(settings_for(store_copy))) as url:
        game = openai.OpenAI(base_url=f"{url}/v1", api_key=NPC_TOKEN, max_retries=0)
        assert [m.id for m in game.models.list()] == ["npc:Maren", "npc:Sefa Orrin", "npc:Ysolde Penhallow"]
        reply = game.chat.completions.create(model="npc:Maren", messages=[{"role": "user", "content": "Who rows the ferry?"}])
        assert reply.choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError):
            game.chat.completions.create(model="kb", messages=[{"role": "user", "content": "Who rows the ferry?"}])
        tool = openai.OpenAI(base_url=f"{url}/v1", api_key=FULL_TOKEN, max_retries=0)
        assert [m.id for m in tool.models.list()][0] == "kb"
        assert tool.chat.completions.create(model="kb", messages=[{"role": "user", "content": "hi"}]).choices
        with httpx.Client(base_url=url) as http:
            as_game = {"Authorization": f"Bearer {NPC_TOKEN}"}
            as_tool = {"Authorization": f"Bearer {FULL_TOKEN}"}
            assert http.post("/npc/Maren/ask", json={"question": "Who rows the ferry?"}, headers=as_game).status_code == 200
            for method, path, body in [("POST", "/search", {"query": "tide"}), ("POST", "/ask", {"question": "tide"}),
                                       ("POST", "/ingest", {"paths": ["x"]}), ("GET", "/status", None)]:
                refused = http.request(method, path, json=body, headers=as_game)
                assert refused.status_code == 403, path
                assert refused.json()["error"]["code"] == "insufficient_scope"
            assert http.post("/search", json={"query": "tide"}, headers=as_tool).status_code == 200
            assert http.post("/npc/Maren/ask", json={"question": "hi"}, headers=as_tool).status_code == 200
            assert http.post("/npc/Maren/ask", json={"question": "hi"}).status_code == 401


@pytest.mark.parametrize("variable, value", [("KB_API_TOKEN", "x"), ("KB_API_TOKEN", ""),
                                             ("KB_API_TOKEN", " " * 20), ("KB_NPC_TOKEN", "short-npc-token")])
def test_a_blank_or_short_token_is_refused_beyond_loopback(corpora_kb, monkeypatch, captured_uvicorn,
                                                            variable, value):
    other = "KB_NPC_TOKEN" if variable == "KB_API_TOKEN" else "KB_API_TOKEN"
    monkeypatch.setenv(other, NPC_TOKEN)
    monkeypatch.setenv(variable, value)
    result = invoke("serve", "--host", "0.0.0.0", "--kb", corpora_kb)
    assert result.exit_code == 2 and captured_uvicorn == []
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {variable} is ") and "at least 16" in line
    assert invoke("serve", "--kb", corpora_kb).exit_code == 0  # on loopback a short token is the user's call


def test_bad_ingest_paths_are_400_and_no_reply_shows_a_server_path(corpora_kb, tmp_path):
    root = tmp_path / "drops"
    (root / "canon").mkdir(parents=True)
    (root / "canon" / "bell.md").write_text("# Bell\n\nThe bell of Greyhithe rings at dawn.\n")
    (root / "canon" / "broken.json").write_text("{not json")
    private = str(tmp_path)
    with running(create_app(settings_for(corpora_kb), token=None, roots=[root])) as url, \
            httpx.Client(base_url=url, timeout=60) as http:
        for path in ["canon/\x00bell.md", "x" * 5000, "y" * 300]:
            response = http.post("/ingest", json={"paths": [path]})
            assert response.status_code == 400, path[:20]
            assert response.json()["error"]["code"] == "invalid_path"
        report = http.post("/ingest", json={"paths": ["canon", "canon/gone.md"]})
        assert report.status_code == 200 and private not in report.text
        assert report.json()["added"] == ["bell.md"]
        assert {f["path"] for f in report.json()["failed"]} == {"broken.json", "canon/gone.md"}
        status = http.get("/status")
        assert status.json()["kb"] == corpora_kb.name and private not in status.text
        with write_lock(corpora_kb):
            locked = http.post("/ingest", json={"paths": ["canon"]})
        assert locked.status_code == 409 and private not in locked.text
        assert f"writing to {corpora_kb.name};" in locked.json()["error"]["message"]
    with running(create_app(settings_for(tmp_path / "nothing"), token=None)) as url:
        missing = httpx.post(f"{url}/search", json={"query": "bell"})
        assert missing.status_code == 503 and private not in missing.text


def test_an_error_mid_stream_does_not_show_a_server_path(store_copy, monkeypatch):
    def fail_after_a_token(self, question, on_token=None, **options):
        on_token("The")
        raise Unavailable(f"no knowledge base at {store_copy}; run `kb ingest PATH` first")

    monkeypatch.setattr(KnowledgeBase, "ask", fail_after_a_token)
    streaming_model = settings_for(store_copy, base_url="http://127.0.0.1:9/v1")  # only a model streams tokens
    with running(create_app(streaming_model, token=None)) as url:
        body = httpx.post(f"{url}/v1/chat/completions", json={"model": "kb", "stream": True,
                                                              "messages": [{"role": "user", "content": "hi"}]}).text
    assert '"content": "The"' in body and "no knowledge base at kb;" in body
    assert str(store_copy.parent) not in body


# -- ingest over HTTP ----------------------------------------------------------------------

def test_ingest_is_confined_to_the_roots(corpora_kb, tmp_path):
    root = tmp_path / "drops"
    (root / "inside").mkdir(parents=True)
    (root / "inside" / "note.md").write_text("# Note\n\nA note inside the root.\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nNot for the server.\n")
    (root / "escape").symlink_to(outside)
    (root / "linked").mkdir()
    (root / "linked" / "secret.md").symlink_to(outside / "secret.md")
    with running(create_app(settings_for(corpora_kb), token=None, roots=[root])) as url, \
            httpx.Client(base_url=url) as http:
        for path in [str(outside), "../outside", "escape", "escape/secret.md", "/etc/passwd",
                     "linked", "."]:
            response = http.post("/ingest", json={"paths": [path]})
            assert response.status_code == 403, path
            assert response.json()["error"]["code"] == "path_not_allowed"
        report = http.post("/ingest", json={"paths": ["inside"]}).json()
        assert report["added"] == ["note.md"] and report["failed"] == []
    with running(create_app(settings_for(corpora_kb), token=None)) as url:
        response = httpx.post(f"{url}/ingest", json={"paths": [str(root)]})
        assert response.status_code == 403 and response.json()["error"]["code"] == "ingest_disabled"


def test_queries_keep_working_during_an_ingest_and_then_see_the_new_canon(corpora_kb, tmp_path):
    root = tmp_path / "drops"
    batch = root / "script-drop"
    for i in range(6):
        (batch / f"scene-{i:02d}.md").parent.mkdir(parents=True, exist_ok=True)
        (batch / f"scene-{i:02d}.md").write_text(
            f"# Scene {i}\n\nThe quay at Greyhithe, dawn {i}. Gulls over the nets and tarred boats.\n")
    (batch / "harbour-bell.md").write_text(f"# The harbour bell\n\n{NEW_CANON}\n")
    app = create_app(settings_for(corpora_kb), token=None, roots=[root])
    done = threading.Event()
    outcomes: list[tuple[int, bool]] = []

    def query_until_done(url):
        with httpx.Client(base_url=url, timeout=60) as http:
            while not done.is_set():
                response = http.post("/ask", json={"question": "Who is the ferrywoman of the Saltreach crossing?"})
                outcomes.append((response.status_code, "Maren" in response.json().get("answer", "")))

    with running(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        before = http.post("/search", json={"query": "harbour bell melted anchors Odo Varn"}).json()
        assert all("harbour-bell" not in r["source"] for r in before["results"])
        readers = [threading.Thread(target=query_until_done, args=(url,)) for _ in range(4)]
        for reader in readers:
            reader.start()
        try:
            report = http.post("/ingest", json={"paths": ["script-drop"]}).json()
        finally:
            done.set()
            for reader in readers:
                reader.join()
        assert len(report["added"]) == 7 and report["failed"] == []
        after = http.post("/search", json={"query": "harbour bell melted anchors Odo Varn", "k": 1}).json()
        answer = http.post("/ask", json={"question": "Who cast the harbour bell of Greyhithe?"}).json()
    assert len(outcomes) >= 4 and all(outcome == (200, True) for outcome in outcomes), outcomes[:5]
    assert after["results"][0]["source"] == "harbour-bell.md"
    assert "Odo Varn" in answer["answer"] and answer["citations"][0]["source"] == "harbour-bell.md"


def test_readers_see_a_whole_ingest_run_or_none_of_it(corpora_kb, tmp_path, monkeypatch):
    """While POST /ingest stages a drop file by file, every answer comes from the canon before it."""
    drop = tmp_path / "drops" / "tally"

    def write_drop(season: str, numbers) -> None:
        for n in numbers:
            (drop / f"tally-{n:02d}.md").write_text(
                f"# Tide tally {n}\n\nThe tide tally of log {n} was kept in the {season} ledger.\n")

    drop.mkdir(parents=True)
    write_drop("spring", range(6))
    seen: list[set[str]] = []

    def seasons(http) -> set[str]:
        found = http.post("/search", json={"query": "tide tally ledger", "k": 20, "mode": "bm25"}).json()
        return {r["text"].split(" the ")[-1].split()[0] for r in found["results"]
                if r["source"].startswith("tally-")}

    def ingest_watched(paths, settings, on_file=None):
        with httpx.Client(base_url=url, timeout=60) as reader:
            return real_ingest(paths, settings, on_file=lambda source: seen.append(seasons(reader)))

    real_ingest = kb_api.ingest
    app = create_app(settings_for(corpora_kb), token=None, roots=[drop.parent])
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        assert http.post("/ingest", json={"paths": ["tally"]}).json()["added"]
        before = http.get("/status").json()
        assert seasons(http) == {"spring"}
        write_drop("autumn", range(1, 8))  # five changed, two new
        (drop / "tally-00.md").unlink()     # one gone
        monkeypatch.setattr(kb_api, "ingest", ingest_watched)
        report = http.post("/ingest", json={"paths": ["tally"]}).json()
        after = http.get("/status").json()
        assert seasons(http) == {"autumn"}
    assert len(report["updated"]) == 5 and len(report["added"]) == 2 and report["removed"] == ["tally-00.md"]
    assert len(seen) == 7 and all(s == {"spring"} for s in seen), seen
    assert after["files"] == before["files"] + 1 and after["generation"] != before["generation"]


def worker_processes(parent: int) -> list[int]:
    """The pids of uvicorn's worker processes under ``parent`` (spawned; the resource tracker aside)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
            if int(fields[1]) == parent and b"spawn_main" in cmdline:
                found.append(int(stat.parent.name))
    return found


def process_runs(pid: int) -> bool:
    """Whether a process runs (an exited one whose parent is gone may stay a zombie, unreaped)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` (Linux's /proc/net/tcp; state 0A is LISTEN)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A")


def test_workers_answer_on_one_port_and_each_sees_an_ingest(corpora_kb, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "serve.log"  # shown if the test fails (a pipe nobody reads would fill and stall it)
    with log.open("w") as err:
        server = subprocess.Popen([sys.executable, "-c", "from kb.cli import main; main()", "serve", "--kb",
                                   str(corpora_kb), "--port", str(port), "--extractive", "--workers", "2"],
                                  stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    def ask(_) -> bool | str:
        try:
            reply = client.chat.completions.create(
                model="kb", messages=[{"role": "user", "content": "Who cast the harbour bell of Greyhithe?"}])
        except openai.APIError as exc:
            return str(exc)
        return "Odo Varn" in reply.choices[0].message.content

    try:
        deadline = time.monotonic() + 120
        # each worker listens on a socket of its own, which the kernel balances connections over
        # (on uvicorn's one shared socket, one idle worker was handed every kept-alive connection)
        while len(worker_processes(server.pid)) < 2 or listening_sockets(port) < 2 or not _answers(url):
            assert server.poll() is None and time.monotonic() < deadline, \
                f"kb serve --workers 2 did not start two listening workers ({listening_sockets(port)} listen)"
            time.sleep(0.2)
        (tmp_path / "harbour-bell.md").write_text(f"# The harbour bell\n\n{NEW_CANON}\n")
        assert invoke("ingest", tmp_path / "harbour-bell.md", "--kb", corpora_kb).exit_code == 0
        # a worker loads the new canon on its first request after the ingest, answering the requests
        # that come meanwhile from the canon before it; then every reply from either worker has it
        rounds = []
        with ThreadPoolExecutor(8) as pool:
            while time.monotonic() < deadline + 60 and not (rounds and all(r is True for r in rounds[-1])):
                rounds.append(list(pool.map(ask, range(8))))
        assert len(worker_processes(server.pid)) == 2
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert all(r is True for r in rounds[-1]), (rounds[-3:], log.read_text()[-4000:])


def test_workers_stop_when_their_server_is_killed(corpora_kb):
    """SIGKILL gives `kb serve` no chance to stop its workers: they notice and free the port themselves."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", "from kb.cli import main; main()", "serve", "--kb",
                               str(corpora_kb), "--port", str(port), "--extractive", "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while listening_sockets(port) < 2:
            assert server.poll() is None and time.monotonic() < deadline, "kb serve --workers 2 did not start"
            time.sleep(0.2)
        workers = worker_processes(server.pid)
        assert len(workers) == 2
    finally:
        server.kill()
        server.wait(timeout=30)
    deadline = time.monotonic() + 30
    while listening_sockets(port) or any(map(process_runs, workers)):
        assert time.monotonic() < deadline, f"workers left running: {workers}, {listening_sockets(port)} listening"
        time.sleep(0.2)


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    return False


def test_a_repeated_quoted_request_is_answered_from_memory_until_the_canon_changes(corpora_kb, tmp_path,
                                                                                    monkeypatch):
    computed: list[str] = []
    for cls in (kb_api.KnowledgeBase, kb_api.NPC):
        def counted(self, question, *args, _ask=cls.ask, **kwargs):
            computed.append(question)
            return _ask(self, question, *args, **kwargs)
        monkeypatch.setattr(cls, "ask", counted)
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "harbour-bell.md").write_text(f"# The harbour bell\n\n{NEW_CANON}\n")
    bell = [{"role": "user", "content": "Who cast the harbour bell of Greyhithe?"}]
    ferry = [{"role": "user", "content": "Is this the ferry to Greyhithe?"},
             {"role": "assistant", "content": "Only ferry there is."},
             {"role": "user", "content": "Who keeps the Orrin Light?"}]
    with running(create_app(settings_for(corpora_kb), token=None, roots=[tmp_path])) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        def chat(model, messages, state=None):
            reply = client.chat.completions.create(model=model, messages=messages, extra_body={"state": state})
            return reply.choices[0].message.content, reply.model_extra["citations"]

        maren = [chat("npc:Maren", ferry, {"chapter": 1}) for _ in range(3)]
        assert len(computed) == 1 and maren[0] == maren[1] == maren[2]
        chat("npc:Maren", ferry, {"chapter": 1, "flags": {"paid_fare": True}})  # another state
        chat("npc:Maren", ferry[2:], {"chapter": 1})  # the question without the turns before it
        same = httpx.post(f"{url}/npc/Maren/ask", json={"messages": ferry, "state": {"chapter": 1}}).json()
        assert len(computed) == 3 and (same["answer"], same["citations"]) == maren[0]
        before = [chat("kb", bell) for _ in range(2)]
        assert len(computed) == 4 and "Odo Varn" not in before[0][0]
        assert httpx.post(f"{url}/ingest", json={"paths": ["drop"]}).json()["added"] == ["harbour-bell.md"]
        after = chat("kb", bell)
    assert len(computed) == 5 and "Odo Varn" in after[0]


def test_a_running_server_finds_by_meaning_what_another_process_ingested(corpora_kb, tmp_path):
    (tmp_path / "harbour-bell.md").write_text(f"# The harbour bell\n\n{NEW_CANON}\n")
    query = {"query": "Who made the bell from old ship anchors?", "mode": "dense", "k": 3}
    with running(create_app(settings_for(corpora_kb), token=None)) as url, httpx.Client(base_url=url) as http:
        assert all(r["source"] != "harbour-bell.md" for r in http.post("/search", json=query).json()["results"])
        subprocess.run([sys.executable, "-c", "from kb.cli import main; main()", "ingest", str(tmp_path),
                        "--kb", str(corpora_kb)], check=True, capture_output=True)
        time.sleep(0.2)  # past the server's trust in its last read of the store's generation
        http.post("/search", json=query)  # the first request after the change may load it meanwhile
        found = http.post("/search", json=query).json()["results"]
    assert found[0]["source"] == "harbour-bell.md", found
