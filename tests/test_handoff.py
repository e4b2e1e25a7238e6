"""`kb search` and `kb ask --json` hand off to a running `kb serve` on the same knowledge base, else answer in process."""

from __future__ import annotations

import json
import os
from urllib.parse import urlparse

import pytest

import kb.cli
from kb import KnowledgeBase, Settings
from kb.handoff import SERVE_FILE, announced, running_server
from kb.server import create_app
from tests.conftest import invoke_json
from tests.test_api import write_world
from tests.test_server import running


@pytest.fixture
def world_settings(tmp_path, fake_embedder) -> Settings:
    settings = Settings(kb_dir=tmp_path / "kb", chroma_url=None, api_key=None, base_url=None,
                        embed_model=fake_embedder)
    KnowledgeBase(settings).ingest([str(write_world(tmp_path / "world"))])
    return settings


def in_process(monkeypatch):
    """Make answering in this process fail, so a passing command proves the server answered."""
    def refuse(*args, **kwargs):
        raise AssertionError("answered in process")

    monkeypatch.setattr(kb.cli, "open_kb", refuse)


def test_search_and_ask_go_to_the_running_server(world_settings, monkeypatch):
    expected = [h.to_json() for h in KnowledgeBase(world_settings).search("Saltreach ferry", k=2)]
    with running(create_app(world_settings)) as url:
        address = urlparse(url)
        with announced(world_settings, address.hostname, address.port, extractive=False):
            in_process(monkeypatch)
            result, data = invoke_json("search", "Saltreach ferry", "-k", 2, "--kb", world_settings.kb_dir)
            assert result.exit_code == 0, result.output
            assert data == {"query": "Saltreach ferry", "results": expected}
            result, data = invoke_json("ask", "Where did the ferry sink?", "--kb", world_settings.kb_dir)
            assert result.exit_code == 0, result.output
            assert data["mode"] == "extractive" and data["citations"][0]["source"] == "ferry.md"
        assert not (world_settings.kb_dir / SERVE_FILE).exists()


def test_a_server_that_is_gone_or_elsewhere_is_not_used(world_settings, tmp_path):
    expected = [h.to_json() for h in KnowledgeBase(world_settings).search("Saltreach ferry", k=2)]
    with running(create_app(world_settings)) as url:
        port = urlparse(url).port
    with announced(world_settings, "127.0.0.1", port, extractive=False):  # nothing listens there now
        assert running_server(world_settings) is not None
        result, data = invoke_json("search", "Saltreach ferry", "-k", 2, "--kb", world_settings.kb_dir)
        assert result.exit_code == 0, result.output
        assert data["results"] == expected
    path = world_settings.kb_dir / SERVE_FILE
    record = {"url": f"http://127.0.0.1:{port}", "pid": os.getpid(), "answers": {}}
    for stale in ({**record, "kb": str(tmp_path / "another")}, {**record, "kb": str(world_settings.kb_dir.resolve()),
                                                                 "pid": 2**22 + 1}, "not json"):
        path.write_text(json.dumps(stale) if isinstance(stale, dict) else stale, encoding="utf-8")
        assert running_server(world_settings) is None


def test_a_server_that_answers_otherwise_keeps_ask_in_process(world_settings, monkeypatch):
    with running(create_app(world_settings)) as url:
        address = urlparse(url)
        llm_settings = Settings(**{**vars(world_settings), "base_url": "http://127.0.0.1:9/v1"})
        with announced(llm_settings, address.hostname, address.port, extractive=False):
            in_process(monkeypatch)
            with pytest.raises(AssertionError, match="in process"):
                invoke_json("ask", "Where did the ferry sink?", "--kb", world_settings.kb_dir)
            result, data = invoke_json("ask", "Where did the ferry sink?", "--extractive", "--kb",
                                       world_settings.kb_dir)
            assert result.exit_code == 0 and data["mode"] == "extractive"
