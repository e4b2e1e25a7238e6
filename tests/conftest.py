"""Fixtures: every test gets its own knowledge base directory and a clean environment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from filelock import FileLock

import kb.api
from kb.cli import cli
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT / "corpora"
CORPORA_PATHS = [str(CORPORA)]  # corpora/.kbignore keeps its README and question sets out


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No key, no base URL, no KB_DIR from the machine leaks into a test."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "KB_DIR", "KB_CHROMA_URL", "KB_EMBED_MODEL",
                 "KB_MODEL", "KB_API_TOKEN", "KB_NPC_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def reloads_awaited(monkeypatch):
    """A search that finds the store changed waits for the new canon, as it does for a small store on a
    quiet machine; tests/test_api.py checks the reload that goes on behind searches."""
    monkeypatch.setattr(kb.api, "RELOAD_WAIT_S", 60.0)


@pytest.fixture
def kb_dir(tmp_path) -> Path:
    """An empty knowledge base directory of the test's own."""
    return tmp_path / "kb"


def invoke(*args):
    """Run the real `kb` CLI in-process; returns click's Result."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def invoke_json(*args):
    """Run `kb ... --json` and parse stdout (which must hold exactly one JSON document)."""
    result = invoke(*args, "--json")
    return result, json.loads(result.stdout)


def run_folder(tmp_path_factory, worker_id) -> Path:
    """The run's temporary folder, which xdist's workers share (each has its own folder below it)."""
    root = tmp_path_factory.getbasetemp()
    return root if worker_id == "master" else root.parent


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory, worker_id):
    """The model cache (kb/store/model_cache.py) goes to the run's folder, never the user's; CLI subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(run_folder(tmp_path_factory, worker_id) / "cache"))
        yield


@pytest.fixture(scope="session")
def _corpora_kb(tmp_path_factory, worker_id) -> Path:
    """The sample world ingested once per run: xdist's workers share it (a lock lets one build it)."""
    root = run_folder(tmp_path_factory, worker_id)
    path, done = root / "corpora" / "kb", root / "corpora" / "done"
    with FileLock(root / "corpora.lock"):
        if not done.exists():
            # in a process of its own, which closes every file when it ends: tests copy this store, and a
            # copy taken while chromadb still held it open in this process could catch a write half done
            result = subprocess.run([sys.executable, "-c", "from kb.cli import main; main()", "ingest",
                                     *CORPORA_PATHS, "--kb", str(path)], capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            done.touch()
    return path


@pytest.fixture
def corpora_kb(_corpora_kb, tmp_path) -> Path:
    """A copy, for this test alone, of a store holding the sample world (ingested once per session)."""
    path = tmp_path / "corpora-kb"
    shutil.copytree(_corpora_kb, path)
    return path


@pytest.fixture
def fake_openai():
    """A running OpenAI-compatible stand-in on 127.0.0.1 that records what it receives."""
    with FakeOpenAI() as api:
        yield api


@pytest.fixture
def fake_embedder(monkeypatch) -> str:
    """Register the hashed-words model (tests/fake_embedder.py) for this test; its name."""
    from kb.store import embed
    from tests.fake_embedder import NAME, HashedWords

    monkeypatch.setitem(embed.MODELS, NAME, HashedWords)
    return NAME
