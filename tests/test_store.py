"""The store over time: the incremental cycle, an ingest killed halfway, the write lock, the model record."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from chromadb.api.shared_system_client import SharedSystemClient

from kb import KnowledgeBase, Settings
from kb.store import FileRecord, Run, Store, write_lock
from kb.store import store as store_module
from kb.store.embed import LoreEmbedding
from tests.conftest import invoke, invoke_json

STATUS_KEYS = {"kb": str, "files": int, "cards": int, "chunks": int, "model": str,
               "store_bytes": int, "last_ingest": str}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def canon(root: Path) -> Path:
    write(root / "herons.md", """
        # Herons
        Grey herons nest in the reed beds of Mirewood.

        # Feeding
        They hunt eels at the turn of the tide.
        """)
    write(root / "kilns.txt", "The kilns of Cinderholm burn black sand day and night.\n")
    write(root / "sub" / "lighthouse.md", "# The Orrin Light\nThe Orrin Light guards the Fellstack cliffs.\n")
    return root


def chunk_rows(kb_dir: Path) -> dict[str, dict]:
    """Every visible chunk id -> its metadata."""
    ids, _, metas = Store(kb_dir).all_chunks()
    return dict(zip(ids, metas))


def by_source(rows: dict[str, dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for cid, meta in rows.items():
        out.setdefault(meta["source"], set()).add(cid)
    return out


def assert_consistent(kb_dir: Path) -> dict[str, FileRecord]:
    """Every stored chunk is one its manifest file holds, and each file's are all there; no run left."""
    SharedSystemClient.clear_system_cache()  # another process wrote: read the directory afresh
    store = Store(kb_dir)
    files = store.files()
    ids, _, metas = zip(*store.scan_chunks()) if store.count() else ((), (), ())
    for meta in metas:
        assert meta["file_key"] in files, f"orphan chunk of {meta['source']}"
    assert store.count() == len(ids) == sum(r.chunks for r in files.values())
    for record in files.values():
        assert {cid for cid, meta in zip(ids, metas) if meta["file_key"] == record.key} == set(record.chunk_ids()), \
            f"stale or missing chunks of {record.source}"
    assert store.manifest.get(where={"kind": {"$in": ["staged", "run"]}})["ids"] == []
    # the vector index holds exactly the same rows
    assert sorted(cid for cid, _ in store.dense_query("herons", store.count())) == sorted(ids)
    return files


@pytest.fixture
def embed_calls(monkeypatch) -> list[int]:
    """How many passages each embedding call was given (spying on the real embedder)."""
    calls: list[int] = []
    original = LoreEmbedding.__call__

    def spy(self, input):
        calls.append(len(input))
        return original(self, input)

    monkeypatch.setattr(LoreEmbedding, "__call__", spy)
    return calls


# --- the incremental cycle -----------------------------------------------------


def test_add_unchanged_change_delete_forget(tmp_path, kb_dir, embed_calls):
    docs = canon(tmp_path / "docs")

    # add
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    assert sorted(report["added"]) == ["herons.md", "kilns.txt", "sub/lighthouse.md"]
    assert report["chunks"] == 4 and sum(embed_calls) == 4
    first = chunk_rows(kb_dir)
    first_files = {r.source: r for r in Store(kb_dir).files().values()}
    assert {s: len(ids) for s, ids in by_source(first).items()} == {
        "herons.md": 2, "kilns.txt": 1, "sub/lighthouse.md": 1}

    # run again: nothing changed, nothing re-embedded, nothing rewritten
    embed_calls.clear()
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0
    assert sorted(report["unchanged"]) == ["herons.md", "kilns.txt", "sub/lighthouse.md"]
    assert report["added"] == report["updated"] == report["removed"] == []
    assert report["chunks"] == 4
    assert embed_calls == []
    assert chunk_rows(kb_dir) == first  # same ids, same ingested_at
    assert {r.source: r for r in Store(kb_dir).files().values()} == first_files

    # change one file: its old chunks go, its new ones come, the others stay as they were
    write(docs / "herons.md", "# Herons\nGrey herons now nest on the Saltreach mudflats.\n")
    embed_calls.clear()
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0
    assert report["updated"] == ["herons.md"]
    assert sorted(report["unchanged"]) == ["kilns.txt", "sub/lighthouse.md"]
    assert report["chunks"] == 3 and embed_calls == [1]
    second = chunk_rows(kb_dir)
    old, new = by_source(first), by_source(second)
    assert not (old["herons.md"] & set(second))
    assert [second[cid]["title"] for cid in new["herons.md"]] == ["Herons"]
    assert new["kilns.txt"] == old["kilns.txt"] and new["sub/lighthouse.md"] == old["sub/lighthouse.md"]
    _, found = invoke_json("search", "herons nest", "--kb", kb_dir, "--mode", "bm25")
    assert [r["text"] for r in found["results"] if r["source"] == "herons.md"] == [
        "Grey herons now nest on the Saltreach mudflats."]
    assert_consistent(kb_dir)

    # delete a file from the folder: removed on the next run
    (docs / "sub" / "lighthouse.md").unlink()
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0
    assert report["removed"] == ["sub/lighthouse.md"]
    assert report["chunks"] == 2
    assert set(by_source(chunk_rows(kb_dir))) == {"herons.md", "kilns.txt"}
    _, status = invoke_json("status", "--kb", kb_dir)
    assert (status["files"], status["chunks"]) == (2, 2)

    # forget on request: gone from the store and from status, the file itself untouched
    result, forgotten = invoke_json("forget", docs / "kilns.txt", "--kb", kb_dir)
    assert result.exit_code == 0
    assert forgotten == {"removed": ["kilns.txt"]}
    assert (docs / "kilns.txt").exists()
    _, status = invoke_json("status", "--kb", kb_dir)
    assert (status["files"], status["chunks"]) == (1, 1)
    _, found = invoke_json("search", "kilns black sand", "--kb", kb_dir)
    assert all(r["source"] != "kilns.txt" for r in found["results"])
    assert_consistent(kb_dir)

    # forgetting a folder forgets everything under it
    _, forgotten = invoke_json("forget", docs, "--kb", kb_dir)
    assert forgotten == {"removed": ["herons.md"]}
    _, status = invoke_json("status", "--kb", kb_dir)
    assert (status["files"], status["chunks"]) == (0, 0)


def test_a_file_updated_on_its_own_is_still_removed_when_gone_from_its_folder(tmp_path, kb_dir):
    docs = canon(tmp_path / "docs")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    write(docs / "kilns.txt", "The kilns were rebuilt.\n")
    _, report = invoke_json("ingest", docs / "kilns.txt", "--kb", kb_dir)
    assert report["updated"] == ["kilns.txt"]
    (docs / "kilns.txt").unlink()
    _, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert report["removed"] == ["kilns.txt"]
    assert report["chunks"] == 3
    assert_consistent(kb_dir)


def test_files_outside_the_named_folder_are_not_removed(tmp_path, kb_dir):
    docs = canon(tmp_path / "docs")
    other = write(tmp_path / "other" / "tides.md", "Tides turn twice a day.\n")
    assert invoke("ingest", docs, other, "--kb", kb_dir).exit_code == 0
    other.unlink()
    _, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert report["removed"] == []  # only a run naming that file's folder may drop it
    _, report = invoke_json("ingest", docs, other.parent, "--kb", kb_dir)
    assert report["removed"] == ["tides.md"]


def test_status_json_contract(tmp_path, kb_dir):
    assert invoke("ingest", canon(tmp_path / "docs"), "--kb", kb_dir).exit_code == 0
    result, status = invoke_json("status", "--kb", kb_dir)
    assert result.exit_code == 0
    for key, kind in STATUS_KEYS.items():
        assert isinstance(status[key], kind), key
    assert (status["files"], status["cards"], status["chunks"]) == (3, 0, 4)
    assert status["model"] == "use-multilingual-v3"
    assert status["store_bytes"] > 0
    assert status["kb"] == str(kb_dir)
    plain = invoke("status", "--kb", kb_dir)
    assert plain.exit_code == 0 and "use-multilingual-v3" in plain.stdout


def test_status_and_forget_without_a_store_fail_with_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    for args in (["status"], ["search", "herons"], ["ask", "herons?"], ["forget", tmp_path]):
        result = invoke(*args, "--kb", missing)
        assert result.exit_code == 1
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and str(missing) in line and "kb ingest" in line
        assert not missing.exists()  # a mistyped --kb is not left behind as an empty store


# --- an ingest killed halfway ----------------------------------------------------

# Runs the real `kb` CLI in a child process that SIGKILLs itself when a store step
# is entered for the (after+1)-th time: a crash at an exact point of the write protocol.
CRASH_DRIVER = textwrap.dedent("""
    import os, signal, sys
    import kb.store
    from kb.cli import cli

    step, after = sys.argv[1], int(sys.argv[2])
    original = getattr(kb.store.Store, step)
    entered = 0

    def crash_on_entry(self, *args, **kwargs):
        global entered
        entered += 1
        if entered > after:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    setattr(kb.store.Store, step, crash_on_entry)
    cli(sys.argv[3:])
""")


def crash_ingest(step: str, after: int, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", CRASH_DRIVER, step, str(after), "ingest",
                           *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc


def test_ingest_killed_from_outside_mid_run_is_completed_by_the_next_run(tmp_path, kb_dir):
    """An unpatched `kb ingest` SIGKILLed wherever it happens to be once a run has staged files."""
    embed_calls: list[int] = []
    docs = tmp_path / "docs"
    files = 200  # a run stages them in several writes: at most STAGE_BATCH_FILES (100) files a write

    def drop(version: str) -> None:
        for n in range(files):
            write(docs / f"log-{n:02}.md", f"# Log {n}\nOn day {n} of {version} the tide rose {n % 7} feet.\n\n"
                  f"## Notes\nThe heron count was {n * 3}.\n")

    drop("spring")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    old = {meta["source"]: text for _, text, meta in zip(*Store(kb_dir).all_chunks()) if "tide" in text}
    drop("autumn")
    writer = subprocess.Popen([str(Path(sys.executable).with_name("kb")), "ingest", str(docs),
                               "--kb", str(kb_dir), "--json"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sqlite_file = kb_dir / "chroma" / "chroma.sqlite3"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and writer.poll() is None:
            if _staged_rows(sqlite_file) >= 2:  # a file or two in
                break
            time.sleep(0.02)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"

    # before any repair, readers see the previous ingest whole: no file of the killed run
    SharedSystemClient.clear_system_cache()
    store = Store(kb_dir)
    staged = _staged_rows(sqlite_file)
    assert 0 < staged < files
    ids, texts, metas = store.all_chunks()
    assert len(ids) == 2 * files and store.status()["chunks"] == 2 * files <= store.count()
    staged_whole = [m for m in store.manifest.get(where={"kind": "staged"}, include=["metadatas"])["metadatas"]
                    if len(store.canon.get(ids=(named := FileRecord.from_meta({**m, "kind": "canon"}).chunk_ids()),
                                           include=[])["ids"]) == len(named)]
    assert {meta["source"]: text for text, meta in zip(texts, metas) if "tide" in text} == old
    with pytest.MonkeyPatch.context() as patch:
        original = Store.embed_passages
        patch.setattr(Store, "embed_passages", lambda self, texts: embed_calls.append(len(texts)) or original(self, texts))
        result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    assert len(report["updated"]) == files and report["chunks"] == 2 * files
    # the rerun picks up where the killed one stopped: a file it staged whole is not embedded again, and of
    # the others only the changed chunk is (the other keeps its stored vector)
    assert sum(embed_calls) == files - len(staged_whole)
    assert len(assert_consistent(kb_dir)) == files
    assert all("autumn" in text for text in Store(kb_dir).all_chunks()[1] if "tide" in text)


def _staged_rows(sqlite_file: Path) -> int:
    """How many files the running ingest has staged so far (read-only peek; 0 while the file is being made)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{sqlite_file}?mode=ro", uri=True, timeout=0.1)) as db:
            return db.execute("select count(*) from embedding_metadata where key = 'kind' "
                              "and string_value = 'staged'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_ingest_killed_after_the_commit_but_before_cleanup(tmp_path, kb_dir):
    docs = canon(tmp_path / "docs")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    old_ids = by_source(chunk_rows(kb_dir))["herons.md"]
    write(docs / "herons.md", "# Herons\nHerons left Mirewood for the Saltreach mudflats.\n")

    crash_ingest("_delete_chunks", 0, docs, "--kb", kb_dir)

    SharedSystemClient.clear_system_cache()
    store = Store(kb_dir)
    assert store.count() == 5  # two old herons chunks, one new one, the two other files
    # readers already see only the committed version
    _, found = invoke_json("search", "herons", "--kb", kb_dir, "--mode", "bm25", "-k", "10")
    assert [r["text"] for r in found["results"] if r["source"] == "herons.md"] == [
        "Herons left Mirewood for the Saltreach mudflats."]

    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0
    assert sorted(report["unchanged"]) == ["herons.md", "kilns.txt", "sub/lighthouse.md"]
    assert report["chunks"] == 3
    assert not old_ids & set(chunk_rows(kb_dir))
    assert_consistent(kb_dir)


def test_a_run_interrupted_before_its_commit_is_rolled_back(tmp_path, kb_dir):
    """The state staging exists for: a run's new chunks written, the run never published."""
    docs = canon(tmp_path / "docs")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    before = chunk_rows(kb_dir)
    store = Store(kb_dir)
    record = next(r for r in store.files().values() if r.source == "kilns.txt")
    half_hash = "f" * 64
    meta = {**next(m for m in before.values() if m["source"] == "kilns.txt"), "file_hash": half_hash}
    run = store.begin_run()
    run.put(FileRecord(**{**vars(record), "hash": half_hash}), [f"{record.key}-{half_hash[:12]}-0"],
            ["Half-written kilns text."], [meta], store.embed_passages(["Half-written kilns text."]))
    run.remove(next(r for r in store.files().values() if r.source == "herons.md").key)
    # the crash: no publish

    assert store.count() == 5
    assert chunk_rows(kb_dir) == before  # readers never see the unpublished run
    assert store.files()[record.key].hash == record.hash
    _, found = invoke_json("search", "half-written kilns", "--kb", kb_dir, "-k", "10")
    assert "Half-written kilns text." not in [r["text"] for r in found["results"]]

    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0
    assert sorted(report["unchanged"]) == ["herons.md", "kilns.txt", "sub/lighthouse.md"]
    assert report["chunks"] == 4
    assert chunk_rows(kb_dir) == before
    assert_consistent(kb_dir)


def test_a_files_chunks_are_written_while_the_next_file_is_embedded(tmp_path, kb_dir, monkeypatch):
    """chromadb indexing one file's chunks and the model embedding the next share the machine's cores."""
    docs = canon(tmp_path / "docs")
    embedded, next_embedded, overlapped = [], threading.Event(), []
    embed, write_chunks = Store.embed_passages, Run._write_chunks

    def embedding(self, texts):
        embedded.append(texts)
        if len(embedded) == 2:
            next_embedded.set()
        return embed(self, texts)

    def writing(self, *args):
        if not overlapped:  # the first file's chunks wait for the second file's embedding to begin
            overlapped.append(next_embedded.wait(30))
        return write_chunks(self, *args)

    monkeypatch.setattr(Store, "embed_passages", embedding)
    monkeypatch.setattr(Run, "_write_chunks", writing)
    monkeypatch.setattr(store_module, "STAGE_BATCH_FILES", 1)  # each file written as soon as it is staged
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    assert overlapped == [True] and len(embedded) == 3
    assert sorted(m["source"] for m in chunk_rows(kb_dir).values()) == [
        "herons.md", "herons.md", "kilns.txt", "sub/lighthouse.md"]
    assert_consistent(kb_dir)


def test_an_ingest_of_many_small_files_writes_them_in_a_few_batches(tmp_path, kb_dir, monkeypatch):
    """chromadb costs about 14 ms a write however small: a staged row and a chunk write per file were 31 of
    the 41 s an ingest of 1,000 one-chunk files took."""
    for n in range(25):
        write(tmp_path / "docs" / f"note-{n:02}.md", f"# Note {n}\nThe {n}th heron of Mirewood.\n")
    writes = []
    batch_write = Run._write
    monkeypatch.setattr(Run, "_write", lambda self, batch, first: (writes.append(len(batch)),
                                                                    batch_write(self, batch, first)))
    monkeypatch.setattr(store_module, "STAGE_BATCH_FILES", 10)
    monkeypatch.setattr(store_module, "STAGE_BATCH_S", 600.0)

    result, report = invoke_json("ingest", tmp_path / "docs", "--kb", kb_dir)
    assert result.exit_code == 0 and report["chunks"] == 25
    assert writes == [10, 10, 5]
    assert len(assert_consistent(kb_dir)) == 25


def test_a_chunk_write_that_fails_behind_the_ingest_publishes_nothing(tmp_path, kb_dir, monkeypatch):
    docs = canon(tmp_path / "docs")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    before = chunk_rows(kb_dir)
    write(docs / "herons.md", "# Herons\nHerons left Mirewood for the Saltreach mudflats.\n")
    write(docs / "tides.md", "# Tides\nThe spring tide floods the Saltreach causeway.\n")

    def full_disk(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Run, "_write_chunks", full_disk)
    with pytest.raises(OSError, match="No space left"):
        KnowledgeBase.open(kb_dir).ingest([str(docs)])
    assert chunk_rows(kb_dir) == before
    monkeypatch.undo()
    report = KnowledgeBase.open(kb_dir).ingest([str(docs)])
    assert report.updated == ["herons.md"] and report.added == ["tides.md"]
    assert_consistent(kb_dir)


def test_a_store_written_before_chunks_were_packed_is_read_and_updated_as_it_was(tmp_path, kb_dir):
    """Such a store holds each chunk's text as a chromadb document and its metadata as keys of their own."""
    docs = canon(tmp_path / "docs")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    store = Store(kb_dir)
    ids, texts, metas = store.all_chunks()
    vectors = dict(store.vectors(ids))
    store.canon.delete(ids=list(ids))
    store.canon.add(ids=list(ids), documents=list(texts), metadatas=list(metas),
                    embeddings=[vectors[cid] for cid in ids])
    held = store.canon.get(include=["documents", "metadatas"])  # (its floats' last digits come back changed)
    assert not any("chunk" in meta for meta in held["metadatas"])

    SharedSystemClient.clear_system_cache()
    assert sorted(zip(*Store(kb_dir).all_chunks())) == sorted(zip(held["ids"], held["documents"], held["metadatas"]))
    assert sorted(held["documents"]) == sorted(texts)
    _, found = invoke_json("search", "reed beds", "--kb", kb_dir, "--mode", "bm25", "-k", "1")
    assert found["results"][0]["text"] == "Grey herons nest in the reed beds of Mirewood."
    write(docs / "kilns.txt", "The kilns of Cinderholm went cold in the flood year.\n")
    _, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert report["updated"] == ["kilns.txt"]
    _, found = invoke_json("search", "kilns flood", "--kb", kb_dir, "--mode", "bm25", "-k", "1")
    assert found["results"][0]["text"] == "The kilns of Cinderholm went cold in the flood year."
    assert_consistent(kb_dir)


def test_a_run_killed_after_its_commit_is_seen_whole_and_finished_by_the_next_run(tmp_path, kb_dir):
    """Committed, but the file rows not yet copied from the staged ones: readers already see the new run."""
    docs = canon(tmp_path / "docs")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    write(docs / "herons.md", "# Herons\nHerons left Mirewood for the Saltreach mudflats.\n")
    (docs / "kilns.txt").unlink()
    write(docs / "tides.md", "# Tides\nThe spring tide floods the Saltreach causeway.\n")

    crash_ingest("_finish", 0, docs, "--kb", kb_dir)

    SharedSystemClient.clear_system_cache()
    assert sorted(m["source"] for m in chunk_rows(kb_dir).values()) == [
        "herons.md", "sub/lighthouse.md", "tides.md"]
    _, status = invoke_json("status", "--kb", kb_dir)
    assert status["files"] == 3 and status["chunks"] == 3
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0
    assert sorted(report["unchanged"]) == ["herons.md", "sub/lighthouse.md", "tides.md"]
    assert report["chunks"] == 3
    assert_consistent(kb_dir)


# --- the lock --------------------------------------------------------------------


def test_a_second_writer_fails_at_once_naming_the_store(tmp_path, kb_dir):
    docs = canon(tmp_path / "docs")
    assert invoke("ingest", docs / "kilns.txt", "--kb", kb_dir).exit_code == 0
    with write_lock(kb_dir):
        proc = subprocess.run([str(Path(sys.executable).with_name("kb")), "ingest", str(docs),
                               "--kb", str(kb_dir)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1  # returned while we still hold the lock: it did not wait for it
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ") and str(kb_dir) in lines[0]
        assert f"pid {os.getpid()}" in lines[0] and "another process" in lines[0]

        # in --json too, and readers are not blocked by a writer
        result, report = invoke_json("ingest", docs, "--kb", kb_dir)
        assert result.exit_code == 1
        assert report["failed"] == [{"path": str(kb_dir), "error": lines[0].removeprefix("error: ")}]
        assert invoke("search", "kilns", "--kb", kb_dir).exit_code == 0
        forget = invoke("forget", docs, "--kb", kb_dir)
        assert forget.exit_code == 1 and "another process" in forget.stderr

    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0
    assert sorted(report["added"]) == ["herons.md", "sub/lighthouse.md"]


def test_a_lock_left_by_a_killed_writer_does_not_block(tmp_path, kb_dir):
    docs = canon(tmp_path / "docs")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from kb.store import write_lock
        with write_lock({str(kb_dir)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = invoke("ingest", docs, "--kb", kb_dir)
        assert result.exit_code == 1 and f"pid {holder.pid}" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0


# --- the model record --------------------------------------------------------------


def test_a_store_refuses_another_embedding_model(tmp_path, kb_dir, monkeypatch):
    docs = canon(tmp_path / "docs")
    assert invoke("ingest", docs / "kilns.txt", "--kb", kb_dir).exit_code == 0
    before = chunk_rows(kb_dir)

    result, report = invoke_json("ingest", docs, "--kb", kb_dir, "--embed-model", "multilingual-e5-small")
    assert result.exit_code == 1
    assert report["added"] == []
    [failure] = report["failed"]
    expected = failure["error"]
    assert failure["path"] == str(kb_dir)
    assert str(kb_dir) in expected and "'use-multilingual-v3'" in expected and "'multilingual-e5-small'" in expected
    assert result.stderr.strip() == f"error: {expected}"

    monkeypatch.setenv("KB_EMBED_MODEL", "multilingual-e5-small")
    plain = invoke("ingest", docs, "--kb", kb_dir)
    assert plain.exit_code == 1 and plain.stderr.strip() == f"error: {expected}"
    monkeypatch.delenv("KB_EMBED_MODEL")

    assert chunk_rows(kb_dir) == before
    _, status = invoke_json("status", "--kb", kb_dir)
    assert status["model"] == "use-multilingual-v3"


def test_a_store_keeps_the_model_it_was_made_with(tmp_path, kb_dir):
    docs = canon(tmp_path / "docs")
    result = invoke("ingest", docs / "kilns.txt", "--kb", kb_dir, "--embed-model", "multilingual-e5-small")
    assert result.exit_code == 0, result.output
    _, report = invoke_json("ingest", docs, "--kb", kb_dir)  # no flag: the recorded model is used
    assert sorted(report["added"]) == ["herons.md", "sub/lighthouse.md"]
    _, status = invoke_json("status", "--kb", kb_dir)
    assert status["model"] == "multilingual-e5-small"
    assert Store(kb_dir).canon.metadata["dim"] == 384
    _, found = invoke_json("search", "lighthouse cliffs", "--kb", kb_dir, "--mode", "dense", "-k", "1")
    assert found["results"][0]["source"] == "sub/lighthouse.md"


def test_an_unknown_embedding_model_is_refused(tmp_path, kb_dir):
    result = invoke("ingest", canon(tmp_path / "docs"), "--kb", kb_dir, "--embed-model", "word2vec")
    assert result.exit_code == 1
    assert "unknown embedding model 'word2vec'" in result.stderr


def test_a_reader_asks_chromadb_for_the_generation_only_after_the_store_files_change(tmp_path, kb_dir, monkeypatch):
    """A server polls the generation often; while the store's files are as they were, it trusts what it read."""
    from kb import KnowledgeBase, api
    from kb.store import store as store_module

    root = canon(tmp_path / "canon")
    assert invoke("ingest", str(root), "--kb", str(kb_dir)).exit_code == 0
    monkeypatch.setattr(api, "GENERATION_POLL_S", 0.0)
    monkeypatch.setattr(api, "GENERATION_READ_S", 3600.0)
    monkeypatch.setattr(store_module, "RECENT_WRITE_S", 0.0)
    reader = KnowledgeBase.open(kb_dir)
    assert reader.search("kestrel", mode="bm25") == []
    reads = []
    read_generation = Store.generation
    monkeypatch.setattr(Store, "generation", lambda self: reads.append(self) or read_generation(self))
    for _ in range(5):
        assert reader.search("kestrel", mode="bm25") == []
    assert reads == []

    write(root / "kestrel.md", "# Kestrels\nA kestrel nests on the Orrin Light.\n")
    writer = subprocess.run([sys.executable, "-c", "from kb.cli import main; main()", "ingest", str(root),
                             "--kb", str(kb_dir)], capture_output=True, text=True, timeout=120)
    assert writer.returncode == 0, writer.stderr
    hits = reader.search("kestrel", mode="bm25")
    assert reads and [h.metadata["source"] for h in hits] == ["kestrel.md"]


def test_a_changed_loc_table_embeds_only_its_changed_rows(tmp_path, kb_dir, embed_calls):
    rows = [f"ui.item_{i},Item {i},Objet {i}\n" for i in range(20)]
    table = write(tmp_path / "docs" / "strings.csv", "key,en,fr\n" + "".join(rows))
    result, report = invoke_json("ingest", table.parent, "--kb", kb_dir)
    assert result.exit_code == 0 and report["chunks"] == 40 and sum(embed_calls) == 40
    before = stored_vectors(kb_dir)

    rows[7] = "ui.item_7,Item 7,Objet sept\n"
    write(table, "key,en,fr\n" + "".join(rows))
    LoreEmbedding._cache.clear()  # as a new process: no vectors kept from the first ingest
    embed_calls.clear()
    result, report = invoke_json("ingest", table.parent, "--kb", kb_dir)

    assert result.exit_code == 0 and report["updated"] == ["strings.csv"]
    assert embed_calls == [1]
    after = stored_vectors(kb_dir)
    assert set(after) == set(before)
    # a kept vector is the stored one (chromadb normalizes what it stores: equal within float rounding)
    assert [row for row in after if not np.allclose(after[row], before[row], atol=1e-6)] == [("ui.item_7", "fr")]
    assert np.allclose(after[("ui.item_7", "fr")], LoreEmbedding()(["ui.item_7\nui.item_7: Objet sept"])[0])
    assert_consistent(kb_dir)


def loc_table(path: Path, french: dict[int, str] | None = None) -> Path:
    """A 20-row loc table in English and French, with some rows' French replaced."""
    rows = [f"ui.item_{i},Item {i},{(french or {}).get(i, f'Objet {i}')}\n" for i in range(20)]
    return write(path, "key,en,fr\n" + "".join(rows))


def loc_ids(kb_dir: Path) -> dict[tuple[str, str], str]:
    """(loc key, language) -> the id of its visible chunk."""
    return {(meta["key"], meta["lang"]): cid for cid, meta in chunk_rows(kb_dir).items()}


def found_texts(kb_dir: Path, query: str) -> list[str]:
    _, found = invoke_json("search", query, "--kb", kb_dir, "--mode", "bm25", "-k", "40")
    return [r["text"] for r in found["results"]]


def written_here(record: FileRecord) -> int:
    """How many of its chunks a file version wrote itself (the others it keeps from the versions before)."""
    return sum(places for digest, places, _ in record.origins or [] if digest == record.hash)


def test_an_edited_loc_row_is_the_only_chunk_written_again(tmp_path, kb_dir):
    table = loc_table(tmp_path / "docs" / "strings.csv")
    assert invoke("ingest", table, "--kb", kb_dir).exit_code == 0
    before = loc_ids(kb_dir)
    loc_table(table, {7: "Objet sept"})

    result, report = invoke_json("ingest", table, "--kb", kb_dir)

    assert result.exit_code == 0 and report["updated"] == ["strings.csv"] and report["chunks"] == 40
    after = loc_ids(kb_dir)
    record = assert_consistent(kb_dir)[next(iter(Store(kb_dir).files()))]
    assert [row for row in after if after[row] != before[row]] == [("ui.item_7", "fr")]
    assert after[("ui.item_7", "fr")].split("-")[1] == record.hash[:12] != before[("ui.item_7", "fr")].split("-")[1]
    assert written_here(record) == 1 and record.chunks == 40
    assert Store(kb_dir).count() == 40  # the old row's chunk is gone
    assert "ui.item_7: Objet sept" in found_texts(kb_dir, "sept")
    assert not [text for text in found_texts(kb_dir, "objet 7") if text.endswith("Objet 7")]

    # edited again, then back: each state whole, its chunks those of the versions that wrote them
    loc_table(table, {7: "Objet sept", 12: "Objet douze"})
    assert invoke("ingest", table, "--kb", kb_dir).exit_code == 0
    again = loc_ids(kb_dir)
    assert sorted(row for row in again if again[row] != before[row]) == [("ui.item_12", "fr"), ("ui.item_7", "fr")]
    assert again[("ui.item_7", "fr")] == after[("ui.item_7", "fr")]  # kept from the version before
    assert_consistent(kb_dir)
    loc_table(table)
    result, report = invoke_json("ingest", table, "--kb", kb_dir)
    assert result.exit_code == 0 and report["updated"] == ["strings.csv"]
    assert loc_ids(kb_dir) == before
    assert Store(kb_dir).files()[record.key].origins is None
    assert_consistent(kb_dir)
    assert "ui.item_7: Objet 7" in found_texts(kb_dir, "objet 7")


def test_a_row_inserted_near_the_top_is_the_only_one_written_and_the_rows_below_keep_their_chunks(tmp_path, kb_dir):
    """The rows after it have moved: their chunks are kept, and read in their new places."""
    table = loc_table(tmp_path / "docs" / "strings.csv")
    assert invoke("ingest", table, "--kb", kb_dir).exit_code == 0
    before = loc_ids(kb_dir)
    lines = table.read_text().splitlines(keepends=True)
    write(table, "".join(lines[:3] + ["ui.new,New,Nouveau\n"] + lines[3:]))

    assert invoke("ingest", table, "--kb", kb_dir).exit_code == 0

    after = loc_ids(kb_dir)
    assert sorted(set(after) - set(before)) == [("ui.new", "en"), ("ui.new", "fr")]
    assert all(after[row] == cid for row, cid in before.items())
    record = assert_consistent(kb_dir)[next(iter(Store(kb_dir).files()))]
    assert written_here(record) == 2 and len(record.origins) == 3
    corpus = KnowledgeBase.open(kb_dir).corpus
    [(key, _, _)] = corpus.files
    placed = [(meta["chunk_index"], text) for _, text, meta in corpus.file_chunks(key)]
    assert placed[3:7] == [(3, "ui.item_1: Objet 1"), (4, "ui.new: New"), (5, "ui.new: Nouveau"), (6, "ui.item_2: Item 2")]
    assert [index for index, _ in placed] == list(range(42))
    assert "ui.new: Nouveau" in found_texts(kb_dir, "nouveau")


def test_a_run_editing_a_row_back_that_never_commits_leaves_the_published_rows_whole(tmp_path, kb_dir):
    """The row's old version shares its chunk ids with the chunks the file kept from it: rolling the run
    back deletes only the chunk it wrote."""
    table = loc_table(tmp_path / "docs" / "strings.csv")
    assert invoke("ingest", table, "--kb", kb_dir).exit_code == 0
    loc_table(table, {7: "Objet sept"})
    assert invoke("ingest", table, "--kb", kb_dir).exit_code == 0
    published = loc_ids(kb_dir)
    loc_table(table)

    crash_ingest("_upsert", 1, table, "--kb", kb_dir)  # killed as the run writes its one chunk, never committed
    SharedSystemClient.clear_system_cache()
    assert Store(kb_dir, create=True).repair() == 1

    assert loc_ids(kb_dir) == published
    assert_consistent(kb_dir)
    assert "ui.item_7: Objet sept" in found_texts(kb_dir, "sept")
    assert invoke("ingest", table, "--kb", kb_dir).exit_code == 0
    assert "ui.item_7: Objet 7" in found_texts(kb_dir, "objet 7")
    assert_consistent(kb_dir)


def stored_vectors(kb_dir: Path) -> dict[tuple[str, str], np.ndarray]:
    """(loc key, language) -> the stored vector of every chunk."""
    store = Store(kb_dir)
    ids, _, metas = store.all_chunks()
    vectors = dict(store.vectors(ids))
    return {(meta["key"], meta["lang"]): np.asarray(vectors[cid]) for cid, meta in zip(ids, metas)}


def test_a_loc_table_of_more_rows_than_chromadb_binds_in_one_read_is_ingested_and_searched(tmp_path, fake_embedder):
    """chromadb binds a read's ids as SQL variables (at most 32,766): one file's rows are read in pages."""
    rows = [f"ui.line_{i},Line {i},Ligne {i},Zeile {i},Linea {i},Riga {i}\n" for i in range(6_600)]
    table = write(tmp_path / "loc" / "strings.csv", "key,en,fr,de,es,it\n" + "".join(rows))
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    assert kb.ingest([str(table.parent)]).chunks == 33_000

    hits = KnowledgeBase.open(kb.settings.kb_dir, kb.settings).search("Zeile 6599", k=1, mode="bm25")
    assert [hit.metadata["key"] for hit in hits] == ["ui.line_6599"]


def record_of(i: int) -> FileRecord:
    return FileRecord(key=f"k{i:05d}", path=f"/lore/{i}.md", source=f"{i}.md", root="/lore", hash=f"{i:064x}",
                      kind="canon", chunks=0, ingested_at=1.0)


def test_a_committed_run_of_more_files_than_chromadb_upserts_at_once_is_finished(kb_dir):
    """Finishing a run copies its staged rows onto the file rows in upserts of 5,461 (chromadb's batch);
    one upsert of them all failed, at the publish and again at every repair after it."""
    store = Store(kb_dir, create=True)
    records = [record_of(i) for i in range(store.client.get_max_batch_size() + 1)]
    run = "r1"  # as Run.put and Run.publish leave a run that committed (written here in batches: 14 ms a row)
    staged = [{**r.to_meta(), "file_kind": r.kind, "removed": False, "kind": "staged", "run": run, "staged_at": 1.0}
              for r in records]
    write_manifest(store, [f"staged:{run}:{r.key}" for r in records], staged)
    write_manifest(store, [f"run:{run}"], [{"kind": "run", "run": run, "started_at": 1.0, "committed_at": 2.0}])

    assert store.repair() == 1
    reopened = Store(kb_dir)
    assert reopened.files() == {r.key: r for r in records}
    assert {m["kind"] for m in reopened.manifest.get(include=["metadatas"])["metadatas"]} == {"canon", "state", "change"}


def test_a_manifest_of_more_files_than_chromadb_reads_at_once_is_read_whole(kb_dir):
    """chromadb binds a read's ids as SQL variables (at most 32,766): the file rows are read in pages."""
    store = Store(kb_dir, create=True)
    records = [record_of(i) for i in range(32_800)]
    write_manifest(store, [f"file:{r.key}" for r in records], [r.to_meta() for r in records])

    assert Store(kb_dir).files() == {r.key: r for r in records}


def write_manifest(store: Store, ids: list[str], metas: list[dict]) -> None:
    """Manifest rows as the store's writers leave them, written in chromadb's largest batches."""
    batch = store.client.get_max_batch_size()
    for start in range(0, len(ids), batch):
        store.manifest.upsert(ids=ids[start:start + batch], embeddings=[[1.0]] * len(ids[start:start + batch]),
                              metadatas=metas[start:start + batch])


def test_stale_chunks_looked_for_a_few_files_at_a_time_are_all_dropped(tmp_path, kb_dir, monkeypatch):
    """A publish reads for old versions DROP_FILES files at a time (a filtered delete per file cost 80 ms at a
    million chunks); replaced and removed files in different reads lose their old chunks all the same."""
    docs = tmp_path / "docs"
    for n in range(5):
        write(docs / f"f{n}.md", f"# File {n}\nThe first telling of tide {n}.\n")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    for n in (0, 3):
        write(docs / f"f{n}.md", f"# File {n}\nThe second telling of tide {n}.\n")
    (docs / "f4.md").unlink()
    reads = []
    pages = store_module._pages
    monkeypatch.setattr(store_module, "_pages", lambda collection, where, *rest: reads.append(where) or
                        pages(collection, where, *rest))
    monkeypatch.setattr(store_module, "DROP_FILES", 2)
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0

    assert len([where for where in reads if "file_key" in (where or {})]) == 2  # f0, f3 and f4: two reads
    files = assert_consistent(kb_dir)
    assert sorted(record.source for record in files.values()) == [f"f{n}.md" for n in range(4)]
    texts = sorted(text for _, text, _ in Store(kb_dir).scan_chunks())
    assert texts == sorted([f"The first telling of tide {n}." for n in (1, 2)] +
                           [f"The second telling of tide {n}." for n in (0, 3)])


# --- the vector index on disk ----------------------------------------------------



def test_two_files_that_swap_texts_in_one_run_lose_their_old_chunks(tmp_path, kb_dir):
    """A publish tells a file's versions apart by the hash in its chunk ids, not by which hashes the run keeps:
    here each file's old version is the other's new one."""
    docs = tmp_path / "docs"
    write(docs / "east.md", "# Tide\nThe east tide runs cold.\n")
    write(docs / "west.md", "# Tide\nThe west tide runs warm.\n")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    write(docs / "east.md", "# Tide\nThe west tide runs warm.\n")
    write(docs / "west.md", "# Tide\nThe east tide runs cold.\n")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0

    assert_consistent(kb_dir)
    rows = by_source(chunk_rows(kb_dir))
    assert {source: len(ids) for source, ids in rows.items()} == {"east.md": 1, "west.md": 1}


def test_stale_chunks_whose_ids_name_no_version_are_dropped_by_their_metadata(tmp_path, kb_dir):
    """A chunk row that ingest/chunk.py did not name (a tool of the studio's own wrote it) is judged by its
    file key and hash, read from its metadata."""
    docs = tmp_path / "docs"
    write(docs / "east.md", "# Tide\nThe east tide runs cold.\n")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    store = Store(kb_dir)
    [(cid, text, meta)] = list(store.scan_chunks())
    store.canon.upsert(ids=["imported-by-hand"], embeddings=[store.vectors([cid])[0][1]],
                       metadatas=[store_module._packed(text, meta)])
    write(docs / "east.md", "# Tide\nThe east tide runs colder.\n")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0

    assert_consistent(kb_dir)
    assert [text for _, text, _ in Store(kb_dir).scan_chunks()] == ["The east tide runs colder."]

def test_an_ingest_leaves_the_vector_index_saved_for_the_next_process(tmp_path, kb_dir):
    """chromadb saved it every 1,000 writes, and each new process inserted the writes since into it again."""
    docs = canon(tmp_path / "docs")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    assert Store(kb_dir).unsaved_vectors() == 0
    write(docs / "kilns.txt", "The kilns of Cinderholm went cold in the flood year.\n")
    (docs / "herons.md").unlink()
    _, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert report["updated"] == ["kilns.txt"] and report["removed"] == ["herons.md"]
    assert Store(kb_dir).unsaved_vectors() == 0
    _, found = invoke_json("search", "kilns flood", "--kb", kb_dir, "--mode", "dense", "-k", "5")
    assert [hit["source"] for hit in found["results"]] == ["kilns.txt", "sub/lighthouse.md"]


@pytest.mark.parametrize("next_write", ["ingest", "forget"])
def test_a_store_made_before_saves_its_vector_index_from_its_next_write(tmp_path, kb_dir, next_write):
    docs = canon(tmp_path / "docs")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    # chromadb's default; tried again as kb does: its SQLite may still be busy with the ingest's write
    store_module._tried_again(Store(kb_dir).canon.modify, configuration={"hnsw": {"sync_threshold": 1000}})
    SharedSystemClient.clear_system_cache()  # a new process: its index loads with that setting
    store = Store(kb_dir)
    held = store.canon.get(limit=1, include=["embeddings", "metadatas"])
    store.canon.upsert(ids=held["ids"], embeddings=held["embeddings"], metadatas=held["metadatas"])  # as writes were
    assert store.unsaved_vectors() == 1

    if next_write == "ingest":
        write(docs / "kilns.txt", "The kilns of Cinderholm went cold in the flood year.\n")
        assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    else:
        assert invoke_json("forget", docs / "kilns.txt", "--kb", kb_dir)[1] == {"removed": ["kilns.txt"]}
    assert Store(kb_dir).unsaved_vectors() == 0
    assert Store(kb_dir).canon.configuration["hnsw"]["sync_threshold"] == 1


def test_a_process_loading_the_vector_index_while_a_writer_saves_it_loads_it_again(tmp_path, kb_dir):
    """chromadb 1.5.9 rewrites the index's id maps in place when a writer saves it, which a local store now does
    after every write: a process loading the index meanwhile read them half-written and failed."""
    assert invoke("ingest", canon(tmp_path / "docs"), "--kb", kb_dir).exit_code == 0
    store = Store(kb_dir)
    expected = store.dense_query("herons", 3)
    with contextlib.closing(sqlite3.connect(kb_dir / "chroma" / "chroma.sqlite3")) as db:
        (segment,) = db.execute("SELECT id FROM segments WHERE collection = ? AND scope = 'VECTOR'",
                                (str(store.canon.id),)).fetchone()
    id_maps = kb_dir / "chroma" / segment / "index_metadata.pickle"
    whole = id_maps.read_bytes()
    id_maps.write_bytes(whole[:len(whole) // 2])  # as a writer saving the index leaves them for a moment
    threading.Timer(0.25, id_maps.write_bytes, [whole]).start()
    SharedSystemClient.clear_system_cache()  # a new process's view: the index is loaded from disk
    assert Store(kb_dir).dense_query("herons", 3) == expected


def publish(store: Store, put: list[FileRecord] = (), removed: list[str] = ()) -> int:
    """Publish one run of file records (no chunks); the generation it leaves."""
    run = store.begin_run()
    for record in put:
        run.put(record, [], [], [], [])
    for key in removed:
        run.remove(key)
    run.publish()
    return store.generation()


def test_the_log_of_moves_lists_what_each_publish_made_visible_while_it_keeps_them(kb_dir, monkeypatch):
    store = Store(kb_dir, create=True)
    first, second, third = record_of(1), record_of(2), record_of(3)
    start = store.generation()
    after_one = publish(store, [first, second])
    after_two = publish(store, [third], removed=[first.key])
    assert store.changes(after_two, after_two) == {}
    assert store.changes(after_one, after_two) == {first.key: None, third.key: third}
    assert store.changes(start, after_two) == {first.key: None, second.key: second, third.key: third}
    monkeypatch.setattr(store_module, "CHANGES_KEPT", 4)  # each publish logs two moves
    after_three = publish(store, removed=[third.key])
    assert store.changes(after_one, after_three) == {first.key: None, third.key: None}
    assert store.changes(start, after_three) is None
    assert len(store.manifest.get(where={"kind": "change"})["ids"]) == 4


def test_the_log_cannot_say_what_two_writers_moving_on_from_one_generation_or_a_repair_made_visible(
        kb_dir, monkeypatch):
    store = Store(kb_dir, create=True)
    start = publish(store, [record_of(1)])
    publish(store, [record_of(2)])
    with monkeypatch.context() as both_read_it:
        both_read_it.setattr(store, "generation", lambda: start)  # a second writer read it before the first wrote
        store._bump_generation([])
    assert store.changes(start, store.generation()) is None
    after = store.generation()
    store._bump_generation()  # as a repair moves it, not knowing what the run it finished had staged
    assert store.changes(after, store.generation()) is None


def test_a_publish_of_more_files_than_a_move_lists_is_logged_unlisted(kb_dir, monkeypatch):
    monkeypatch.setattr(store_module, "CHANGES_LISTED_MAX", 1)
    store = Store(kb_dir, create=True)
    start = store.generation()
    one = publish(store, [record_of(1)])
    assert store.changes(start, one) == {record_of(1).key: record_of(1)}
    assert store.changes(one, publish(store, [record_of(2), record_of(3)])) is None
