"""The store on both backends: a local directory, and a real Chroma server (`chroma run`) on 127.0.0.1.

The same incremental cycle and search run against each; then two "machines"
(two KB directories, fresh settings) share one server, and the second one
re-embeds nothing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kb.postings import Postings
from kb.retrieve import Corpus
from kb.store import FileRecord, Store
from tests.conftest import invoke, invoke_json


def _chroma_executable() -> str | None:
    beside_python = Path(sys.executable).parent / "chroma"  # `make test` runs the venv's python, PATH may lack it
    return str(beside_python) if beside_python.exists() else shutil.which("chroma")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real Chroma server on a free 127.0.0.1 port, its data in a temp dir; stopped at the end."""
    exe = _chroma_executable()
    if exe is None:
        pytest.skip("the `chroma` executable (installed by the chromadb package) was not found; "
                    "server-backend tests skipped")
    data = tmp_path_factory.mktemp("chroma-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(data / "server.log", "wb") as log:
        proc = subprocess.Popen([exe, "run", "--path", str(data / "db"), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`chroma run` exited with {proc.returncode}:\n"
                            f"{(data / 'server.log').read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"`chroma run` did not answer its heartbeat at {url} within 60 s")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wipe(url: str) -> None:
    """Every test starts from an empty server (tests share one server per session)."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    host, port = url.rsplit("//", 1)[1].split(":")
    client = chromadb.HttpClient(host=host, port=int(port),
                                 settings=ChromaSettings(anonymized_telemetry=False))
    for collection in client.list_collections():
        client.delete_collection(collection.name)


@pytest.fixture(params=["local", "server"])
def backend(request, kb_dir) -> list[str]:
    """The CLI options that put this test's knowledge base on the backend."""
    if request.param == "local":
        return ["--kb", kb_dir]
    url = request.getfixturevalue("chroma_server")
    _wipe(url)
    return ["--kb", kb_dir, "--chroma-url", url]


def _open(backend: list[str]) -> Store:
    url = backend[backend.index("--chroma-url") + 1] if "--chroma-url" in backend else None
    return Store(Path(backend[1]), url)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def lore(tmp_path) -> Path:
    folder = tmp_path / "lore"
    write(folder / "lighthouse.md", "---\nchapter: 1\nregion: Fellstack\n---\n# The Orrin Light\n\n"
          "The Orrin Light burns whale oil and is tended by a keeper named Sefa.\n")
    write(folder / "kilns.md", "---\nchapter: 2\nregion: Cinderholm\n---\n# The Kilns\n\n"
          "The kilns of Cinderholm fire tideglass for three days and nights.\n")
    write(folder / "ferry.md", "# The Ferry\n\nMaren rows the ferry Patience across the Saltreach.\n")
    return folder


def test_incremental_cycle(backend, lore):
    result, report = invoke_json("ingest", lore, *backend)
    assert result.exit_code == 0, result.output
    assert sorted(report["added"]) == ["ferry.md", "kilns.md", "lighthouse.md"]
    chunks = report["chunks"]
    assert chunks >= 3

    _, report = invoke_json("ingest", lore, *backend)
    assert report["added"] == report["updated"] == report["removed"] == []
    assert sorted(report["unchanged"]) == ["ferry.md", "kilns.md", "lighthouse.md"]
    assert report["chunks"] == chunks

    write(lore / "lighthouse.md", "# The Orrin Light\n\nThe Orrin Light now burns seal fat.\n")
    _, report = invoke_json("ingest", lore, *backend)
    assert report["updated"] == ["lighthouse.md"] and report["chunks"] == chunks
    _, found = invoke_json("search", "what does the Orrin Light burn", "-k", "1", *backend)
    assert "seal fat" in found["results"][0]["text"]
    _, everything = invoke_json("search", "whale oil", "-k", "20", *backend)
    assert not any("whale oil" in r["text"] for r in everything["results"])

    (lore / "kilns.md").unlink()
    _, report = invoke_json("ingest", lore, *backend)
    assert report["removed"] == ["kilns.md"] and report["chunks"] == chunks - 1

    result, forgotten = invoke_json("forget", lore / "ferry.md", *backend)
    assert result.exit_code == 0 and forgotten["removed"] == ["ferry.md"]
    _, status = invoke_json("status", *backend)
    assert status["files"] == 1 and status["chunks"] == chunks - 2
    _, found = invoke_json("search", "ferry Patience Saltreach", "-k", "5", *backend)
    assert all(r["source"] == "lighthouse.md" for r in found["results"])


def test_search_modes_and_filters(backend, lore):
    invoke_json("ingest", lore, *backend)
    for mode in ("hybrid", "dense", "bm25"):
        result, found = invoke_json("search", "who tends the lighthouse keeper", "--mode", mode, *backend)
        assert result.exit_code == 0
        assert found["results"][0]["source"] == "lighthouse.md", mode
    _, found = invoke_json("search", "tideglass kilns", "--where", "chapter=1", *backend)
    assert found["results"] and all(r["metadata"]["chapter"] == 1 for r in found["results"])
    result, answer = invoke_json("ask", "Who rows the ferry?", *backend)
    assert result.exit_code == 0 and "Maren" in answer["answer"]
    assert answer["citations"][0]["source"] == "ferry.md"


def test_a_replica_behind_an_ingest_reads_only_the_files_the_log_of_moves_lists(backend, lore, tmp_path, monkeypatch):
    invoke_json("ingest", lore, *backend)
    replica = Postings(tmp_path / "replica.sqlite")  # another machine's postings of the shared store
    assert replica.update(_open(backend)) == 3
    write(lore / "lighthouse.md", "# The Orrin Light\n\nThe Orrin Light now burns seal fat.\n")
    (lore / "kilns.md").unlink()
    invoke_json("ingest", lore, *backend)
    store = _open(backend)
    monkeypatch.setattr(store, "files", lambda: pytest.fail("every file record was read"))
    assert replica.update(store) == 2
    corpus = Corpus(replica.snapshot())
    texts = [text for key, _, _ in corpus.files for _, text, _ in corpus.file_chunks(key)]
    assert any("seal fat" in text for text in texts) and not any("tideglass" in text for text in texts)


def test_an_edited_row_is_written_alone_and_a_replica_reads_its_table_in_order(backend, lore, tmp_path):
    rows = [f"ui.bell_{n},Bell {n},Cloche {n}\n" for n in range(12)]
    write(lore / "bells.csv", "key,en,fr\n" + "".join(rows))
    invoke_json("ingest", lore, *backend)
    before = set(_open(backend).canon.get(include=[])["ids"])
    replica = Postings(tmp_path / "replica.sqlite")
    replica.update(_open(backend))
    rows[5] = "ui.bell_5,Bell 5,Cloche du port\n"
    write(lore / "bells.csv", "key,en,fr\n" + "".join(rows))

    _, report = invoke_json("ingest", lore, *backend)

    store = _open(backend)
    assert report["updated"] == ["bells.csv"] and len(set(store.canon.get(include=[])["ids"]) - before) == 1
    assert replica.update(store) == 1
    corpus = Corpus(replica.snapshot())
    [key] = [key for key, _, _ in corpus.files if store.files()[key].source == "bells.csv"]
    texts = [text for _, text, _ in corpus.file_chunks(key)]
    assert texts == [f"ui.bell_{n}: {line.split(',')[lang].strip()}" for n, line in enumerate(rows) for lang in (1, 2)]


def test_an_unpublished_run_is_cleaned_up_only_when_abandoned(backend, lore):
    """A run not yet published on a shared server may be another machine's ingest in progress."""
    invoke_json("ingest", lore, *backend)
    store = _open(backend)
    record = next(r for r in store.files().values() if r.source == "ferry.md")
    run = store.begin_run()
    run.put(FileRecord(**{**vars(record), "hash": "new"}), [f"{record.key}-half-0"], ["half written"],
            [{"file_key": record.key, "file_hash": "new", "source": "ferry.md"}],
            store.embed_passages(["half written"]))
    other = _open(backend)
    if "--chroma-url" in backend:
        assert other.repair() == 0  # a fresh run: someone may be writing it right now
        assert other.canon.get(ids=[f"{record.key}-half-0"])["ids"]
        assert other.repair(stale_after=0) == 1
    else:
        assert other.repair() == 1  # the write lock says nobody else is writing
    assert not other.canon.get(ids=[f"{record.key}-half-0"])["ids"]
    assert other.files()[record.key].hash == record.hash


def test_second_machine_reembeds_nothing(chroma_server, lore, tmp_path, monkeypatch):
    _wipe(chroma_server)
    machine_a = ["--kb", tmp_path / "a-kb", "--chroma-url", chroma_server]
    machine_b = ["--kb", tmp_path / "b-kb", "--chroma-url", chroma_server]
    _, report = invoke_json("ingest", lore, *machine_a)
    assert len(report["added"]) == 3

    embedded = []
    original = Store.embed_passages
    monkeypatch.setattr(Store, "embed_passages",
                        lambda self, texts: embedded.extend(texts) or original(self, texts))
    result, report = invoke_json("ingest", lore, *machine_b)
    assert result.exit_code == 0
    assert sorted(report["unchanged"]) == ["ferry.md", "kilns.md", "lighthouse.md"]
    assert report["added"] == report["updated"] == report["removed"] == []
    assert embedded == []
    assert not (tmp_path / "b-kb").exists()  # nothing of the store lives on machine B

    _, answer = invoke_json("ask", "Who rows the ferry?", *machine_b)
    assert "Maren" in answer["answer"]
    _, status_a = invoke_json("status", *machine_a)
    _, status_b = invoke_json("status", *machine_b)
    assert status_a["chunks"] == status_b["chunks"] == report["chunks"]
    assert status_b["kb"] == chroma_server and status_b["store_bytes"] is None


def test_unreachable_server_is_one_line(kb_dir):
    result = invoke("status", "--kb", kb_dir, "--chroma-url", f"http://127.0.0.1:{_free_port()}")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the Chroma server at http://127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1
