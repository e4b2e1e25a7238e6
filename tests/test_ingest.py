"""`kb ingest`: the JSON contract, sources relative to the named folder, and every kind of bad input.

Each bad input must give one line on stderr naming the file and the reason, be
listed under `failed` in --json, leave the other files ingested and what was
stored before intact, and make the exit status 1.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from kb.api import KnowledgeBase
from kb.store import Store
from tests.conftest import invoke, invoke_json

REPORT_KEYS = {"added", "updated", "unchanged", "removed", "failed", "chunks"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def good_folder(root: Path) -> Path:
    write(root / "herons.md", "---\nregion: Mirewood\n---\n# Herons\n\nGrey herons nest in the reed beds.\n")
    write(root / "kilns.txt", "The kilns of Cinderholm burn black sand.\n")
    return root


def stored_sources(kb_dir: Path) -> dict[str, int]:
    """source -> number of visible chunks."""
    counts: dict[str, int] = {}
    for meta in Store(kb_dir).all_chunks()[2]:
        counts[meta["source"]] = counts.get(meta["source"], 0) + 1
    return counts


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# --- the contract --------------------------------------------------------------


def test_ingest_json_report_has_the_contract_keys_and_types(tmp_path, kb_dir):
    docs = good_folder(tmp_path / "docs")
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    assert REPORT_KEYS <= set(report)
    assert sorted(report["added"]) == ["herons.md", "kilns.txt"]
    assert report["updated"] == report["unchanged"] == report["removed"] == report["failed"] == []
    assert isinstance(report["chunks"], int) and report["chunks"] == 2
    assert result.stderr == ""


def test_sources_are_relative_to_the_named_folder(tmp_path, kb_dir):
    docs = tmp_path / "canon"
    write(docs / "world" / "regions" / "fens.md", "Reeds and herons.\n")
    write(docs / "top.txt", "Top-level note.\n")
    write(docs / ".hidden.md", "never ingested\n")
    write(docs / ".git" / "config.md", "never ingested\n")
    write(docs / "art" / "map.png", "not text")
    single = write(tmp_path / "elsewhere" / "loose.md", "A loose note about tides.\n")
    result, report = invoke_json("ingest", docs, single, "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    assert sorted(report["added"]) == ["loose.md", "top.txt", "world/regions/fens.md"]
    assert report["skipped"] == [{"path": "art/map.png", "reason": "unsupported file type '.png'"}]
    assert stored_sources(kb_dir) == {"loose.md": 1, "top.txt": 1, "world/regions/fens.md": 1}
    _, found = invoke_json("search", "herons", "--kb", kb_dir, "--mode", "bm25")
    assert found["results"][0]["source"] == "world/regions/fens.md"


def test_a_file_named_twice_is_ingested_once(tmp_path, kb_dir):
    docs = good_folder(tmp_path / "docs")
    result, report = invoke_json("ingest", docs, docs / "kilns.txt", docs, "--kb", kb_dir)
    assert result.exit_code == 0
    assert sorted(report["added"]) == ["herons.md", "kilns.txt"]
    assert report["chunks"] == 2


def test_ingest_table_without_json(tmp_path, kb_dir):
    result = invoke("ingest", good_folder(tmp_path / "docs"), "--kb", kb_dir)
    assert result.exit_code == 0
    assert "added" in result.stdout and "chunks in store" in result.stdout


def test_ingest_needs_a_path():
    assert invoke("ingest").exit_code == 2


# --- bad input -----------------------------------------------------------------


def test_every_bad_file_is_named_and_the_rest_is_ingested(tmp_path, kb_dir):
    docs = good_folder(tmp_path / "docs")
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ngarbage\n%%EOF\n")
    (docs / "noise.md").write_bytes(random.Random(7).randbytes(4096))
    (docs / "latin1.txt").write_bytes("Le héron gris traverse la rivière.".encode("latin-1"))
    (docs / "gbk.md").write_bytes("潮汐玻璃保存声音。".encode("gbk"))
    (docs / "empty.md").write_bytes(b"")
    (docs / "blank.txt").write_bytes(b"\n \n\t\n")
    with open(docs / "huge.txt", "wb") as fh:  # one 50 MB line
        fh.truncate(50 * 1024 * 1024)
        fh.seek(0)
        fh.write(b"x" * 1024)
    missing = tmp_path / "no-such-folder"

    result, report = invoke_json("ingest", docs, missing, "--kb", kb_dir)

    assert result.exit_code == 1
    assert sorted(report["added"]) == ["herons.md", "kilns.txt"]
    assert report["chunks"] == 2
    errors = {f["path"]: f["error"] for f in report["failed"]}
    assert sorted(errors) == sorted([str(missing), "blank.txt", "corrupt.pdf", "empty.md", "gbk.md",
                                     "huge.txt", "latin1.txt", "noise.md"])
    assert errors[str(missing)] == "path does not exist"
    assert "corrupt or unreadable PDF" in errors["corrupt.pdf"]
    assert "binary" in errors["noise.md"]
    assert "not UTF-8" in errors["latin1.txt"] and "not UTF-8" in errors["gbk.md"]
    assert errors["empty.md"] == errors["blank.txt"] == "file is empty"
    assert "50.0 MB" in errors["huge.txt"] and "20 MB limit" in errors["huge.txt"]
    assert "KB_MAX_FILE_MB" in errors["huge.txt"]
    # one line on stderr per failure, naming the file and the reason
    lines = error_lines(result)
    assert len(lines) == len(errors)
    for path, reason in errors.items():
        assert f"error: {path}: {reason}" in lines
    assert stored_sources(kb_dir) == {"herons.md": 1, "kilns.txt": 1}


def test_size_limit_follows_kb_max_file_mb(tmp_path, kb_dir, monkeypatch):
    docs = good_folder(tmp_path / "docs")
    write(docs / "long.txt", "The tide comes in. " * 120_000)  # about 2.2 MB
    monkeypatch.setenv("KB_MAX_FILE_MB", "1")
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 1
    assert [f["path"] for f in report["failed"]] == ["long.txt"]
    assert "over the 1 MB limit" in report["failed"][0]["error"]


def test_a_file_that_turns_bad_keeps_what_it_stored_before(tmp_path, kb_dir):
    docs = good_folder(tmp_path / "docs")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    before = Store(kb_dir).all_chunks()
    (docs / "herons.md").write_bytes(b"\x00\x01\x02 binary now")
    (docs / "kilns.txt").write_bytes(b"")

    result, report = invoke_json("ingest", docs, "--kb", kb_dir)

    assert result.exit_code == 1
    assert sorted(f["path"] for f in report["failed"]) == ["herons.md", "kilns.txt"]
    assert report["removed"] == [] and report["updated"] == []
    assert Store(kb_dir).all_chunks() == before
    _, found = invoke_json("search", "herons reed beds", "--kb", kb_dir, "--mode", "bm25")
    assert found["results"][0]["text"] == "Grey herons nest in the reed beds."


def test_a_file_name_that_is_not_utf8_is_named_and_the_rest_is_ingested(tmp_path, kb_dir):
    docs = good_folder(tmp_path / "docs")
    (Path(os.fsdecode(bytes(docs) + b"/bad\xffname.md"))).write_text("Reeds.\n")
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 1
    assert sorted(report["added"]) == ["herons.md", "kilns.txt"]
    assert report["failed"] == [{"path": "bad\\xffname.md", "error": "file name is not valid UTF-8; rename the file"}]
    assert error_lines(result) == ["error: bad\\xffname.md: file name is not valid UTF-8; rename the file"]


def test_a_parser_crash_on_one_file_does_not_stop_the_others(tmp_path, kb_dir):
    docs = good_folder(tmp_path / "docs")
    (docs / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 1
    assert sorted(report["added"]) == ["herons.md", "kilns.txt"]
    assert [f["path"] for f in report["failed"]] == ["deep.json"]
    assert report["failed"][0]["error"].startswith("cannot parse (RecursionError")
    assert error_lines(result)[0].startswith("error: deep.json: ")


def test_a_store_path_under_a_file_fails_with_one_line(tmp_path):
    docs = good_folder(tmp_path / "docs")
    blocker = write(tmp_path / "not-a-dir", "I am a file")
    kb_dir = blocker / "kb"
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 1
    assert report["added"] == []
    assert [f["path"] for f in report["failed"]] == [str(kb_dir)]
    lines = error_lines(result)
    assert len(lines) == 1 and str(kb_dir) in lines[0] and "Not a directory" in lines[0]
    # without --json: the same one line, no traceback
    plain = invoke("ingest", docs, "--kb", kb_dir)
    assert plain.exit_code == 1 and error_lines(plain) == lines
    assert "Traceback" not in plain.output


@contextlib.contextmanager
def unprivileged():
    """Run as `nobody` for a while when the tests run as root, where chmod stops no writes."""
    if os.geteuid() != 0:
        yield
        return
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root, where chmod does not stop writes, and there is no 'nobody' user")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_a_read_only_store_fails_with_one_line_and_loses_nothing():
    base = Path(tempfile.mkdtemp(prefix="lore-kb-ro-"))
    try:
        docs = good_folder(base / "docs")
        kb_dir = base / "kb"
        assert invoke("ingest", docs / "herons.md", "--kb", kb_dir).exit_code == 0
        before = Store(kb_dir).all_chunks()
        for path in [base, *base.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)

        with unprivileged():
            result, report = invoke_json("ingest", docs, "--kb", kb_dir)

        assert result.exit_code == 1
        assert report["added"] == []
        assert [f["path"] for f in report["failed"]] == [str(kb_dir)]
        lines = error_lines(result)
        assert len(lines) == 1 and str(kb_dir) in lines[0] and "Permission denied" in lines[0]
        assert Store(kb_dir).all_chunks() == before
    finally:
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(base, ignore_errors=True)


def test_a_file_deleted_between_discovery_and_read_is_a_failed_entry(tmp_path, kb_dir):
    docs = good_folder(tmp_path / "docs")
    write(docs / "wrens.md", "# Wrens\n\nWrens nest in the thatch.\n")

    def delete_kilns_once_herons_is_in(source):  # discovery is over: kilns.txt is already listed
        if source == "herons.md":
            (docs / "kilns.txt").unlink()

    report = KnowledgeBase.open(kb_dir).ingest([docs], on_file=delete_kilns_once_herons_is_in)

    assert report.added == ["herons.md", "wrens.md"]
    assert report.failed == [{"path": "kilns.txt", "error": "cannot read file: No such file or directory"}]
    assert stored_sources(kb_dir) == {"herons.md": 1, "wrens.md": 1}


def test_an_unreadable_subfolder_is_a_failed_entry_and_keeps_what_it_stored():
    base = Path(tempfile.mkdtemp(prefix="lore-kb-unreadable-"))
    base.chmod(0o777)  # `nobody` (when the tests run as root) writes the store here
    docs = good_folder(base / "docs")
    write(docs / "reeds" / "bend.md", "# Reeds\n\nReeds bend low in the east wind.\n")
    kb_dir = base / "kb"
    try:
        with unprivileged():
            assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
        before = stored_sources(kb_dir)
        write(docs / "wrens.md", "# Wrens\n\nWrens nest in the thatch.\n")  # after reeds/ in the walk
        (docs / "reeds").chmod(0)

        with unprivileged():
            result, report = invoke_json("ingest", docs, "--kb", kb_dir)

        assert result.exit_code == 1, result.output
        assert report["added"] == ["wrens.md"] and report["removed"] == []
        [failure] = report["failed"]
        assert failure == {"path": "reeds", "error": "cannot read folder: Permission denied"}
        assert error_lines(result) == [f"error: reeds: {failure['error']}"]
        assert stored_sources(kb_dir) == {**before, "wrens.md": 1}
    finally:
        (docs / "reeds").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
