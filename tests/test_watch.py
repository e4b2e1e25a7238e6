"""`kb ingest --watch`: files written, changed and deleted under a watched folder reach the store by themselves."""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import watchfiles

from kb import KBError, KnowledgeBase
from kb.store import write_lock
from kb.watch import Batch, CanonFilter, watch

KB_COMMAND = str(Path(sys.executable).parent / "kb")
PATIENCE_S = 120  # only so a broken watcher fails the test instead of hanging it; never a speed check


def write_atomically(path: Path, text: str) -> None:
    """Write as editors and git do (a hidden temp file renamed over the target): one event for the watcher."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def next_batch(batches: queue.Queue) -> Batch:
    batch = batches.get(timeout=PATIENCE_S)
    assert batch.error is None, batch.error
    return batch


@contextlib.contextmanager
def watching(kb: KnowledgeBase, folder: Path):
    """kb/watch.py's loop on ``folder`` in a thread; yields the queue its batches arrive on, then stops it."""
    batches: queue.Queue = queue.Queue()
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(kb, [str(folder)], stop, batches.put, 50))
    watcher.start()
    try:
        yield batches
    finally:
        stop.set()
        watcher.join(PATIENCE_S)
    assert not watcher.is_alive()
    assert batches.empty()  # hidden temp files and the store's own writes never made a batch


@pytest.fixture
def canon(tmp_path) -> Path:
    folder = tmp_path / "canon"
    folder.mkdir()
    write_atomically(folder / "harbour.md", "# The Harbour\nThe Saltreach ferry leaves at the third bell.\n")
    return folder


def test_a_watched_folder_is_ingested_updated_and_pruned(tmp_path, canon):
    kb = KnowledgeBase.open(tmp_path / "kb")
    with watching(kb, canon) as batches:
        first = next_batch(batches)
        assert first.report.added == ["harbour.md"]
        assert first.summary().endswith(f"added 1, updated 0, removed 0, failed 0  "
                                        f"({first.seconds:.2f} s, {first.report.chunks} chunks in store)")

        write_atomically(canon / "beacon.md", "# The Beacon\nThe beacon of Gull Point is lit at dusk.\n")
        added = next_batch(batches).report
        assert (added.added, added.updated, added.removed) == (["beacon.md"], [], [])
        assert added.unchanged == ["harbour.md"]
        assert kb.search("When is the beacon of Gull Point lit?", k=1)[0].source == "beacon.md"

        write_atomically(canon / "beacon.md", "# The Beacon\nThe beacon of Gull Point burns whale oil until dawn.\n")
        updated = next_batch(batches).report
        assert (updated.added, updated.updated, updated.removed) == ([], ["beacon.md"], [])
        assert "whale oil" in kb.search("What does the beacon burn?", k=1)[0].text

        (canon / "beacon.md").unlink()
        removed = next_batch(batches).report
        assert (removed.added, removed.updated, removed.removed) == ([], [], ["beacon.md"])
        assert {hit.source for hit in kb.search("beacon of Gull Point", k=5)} == {"harbour.md"}


def test_a_batch_that_meets_a_locked_store_is_retried(tmp_path, canon):
    kb = KnowledgeBase.open(tmp_path / "kb")
    with watching(kb, canon) as batches:
        next_batch(batches)
        with write_lock(tmp_path / "kb"):  # as another `kb ingest` would hold it
            write_atomically(canon / "beacon.md", "# The Beacon\nThe beacon of Gull Point is lit at dusk.\n")
            refused = batches.get(timeout=PATIENCE_S)
            assert refused.report is None and "is writing to" in refused.error
            assert refused.summary().endswith("(retrying)")
        # the same error is told once, however often it is retried; then the change goes in
        assert next_batch(batches).report.added == ["beacon.md"]


def test_the_filter_skips_the_store_and_hidden_paths(tmp_path):
    canon = tmp_path / "canon"
    keep = CanonFilter([canon], kb_dir=canon / "kbstore")
    assert keep(watchfiles.Change.modified, str(canon / "world" / "harbour.md"))
    assert not keep(watchfiles.Change.modified, str(canon / "kbstore" / "chroma.sqlite3"))
    assert not keep(watchfiles.Change.added, str(canon / "world" / ".harbour.md.swp"))
    assert not keep(watchfiles.Change.added, str(canon / ".git" / "index"))
    assert not keep(watchfiles.Change.modified, str(canon / "world" / "harbour.md~"))


def test_watching_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(KBError, match="cannot watch '.*nowhere': no such file or folder"):
        watch(KnowledgeBase.open(tmp_path / "kb"), [str(tmp_path / "nowhere")], threading.Event(), print)


def read_line(stream, deadline_s: float = PATIENCE_S) -> str:
    with selectors.DefaultSelector() as selector:  # not select(): the suite's open stores push fds past 1024
        selector.register(stream, selectors.EVENT_READ)
        assert selector.select(deadline_s), "no output from kb ingest --watch"
    return stream.readline()


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_ctrl_c_ends_the_watch_cleanly(tmp_path, canon):
    proc = subprocess.Popen([KB_COMMAND, "ingest", "--watch", str(canon), "--kb", str(tmp_path / "kb"),
                             "--debounce-ms", "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = read_line(proc.stdout)
        assert "added 1, updated 0, removed 0, failed 0" in first
        proc.send_signal(signal.SIGINT)
        assert proc.wait(PATIENCE_S) == 0
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    assert "watching" in stderr and "stopping after this batch" in stderr and "Traceback" not in stderr
    assert proc.stdout.read() == ""


def test_watch_refuses_json(tmp_path):
    from tests.conftest import invoke

    result = invoke("ingest", "--watch", tmp_path, "--json", "--kb", tmp_path / "kb")
    assert result.exit_code == 2 and "--json" in result.stderr
