"""Which files an ingest reads: hidden files, unsupported types, .kbignore, NPC cards."""

from __future__ import annotations

import os

from ingest.discover import discover


def test_walk_skips_hidden_ignored_and_unsupported(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "notes.md").write_text("# hidden\n")
    (tmp_path / ".draft.md").write_text("# hidden too\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "qa.md").write_text("# ignored folder\n")
    (tmp_path / "README.md").write_text("# ignored file\n")
    (tmp_path / "npcs").mkdir()
    (tmp_path / "npcs" / "mara.yaml").write_text("name: Mara\n")
    (tmp_path / "lore.md").write_text("# Lore\n")
    (tmp_path / "map.png").write_bytes(b"\x89PNG")
    (tmp_path / "settings.yaml").write_text("a: 1\n")
    (tmp_path / ".kbignore").write_text("# comment\nREADME.md\neval/\n")

    found, skipped, missing = discover([str(tmp_path)])

    assert [(f.source, f.kind) for f in found] == [("lore.md", "canon"), ("npcs/mara.yaml", "card")]
    assert sorted(p for p, _ in skipped) == ["map.png", "settings.yaml"]
    assert all("unsupported file type" in why for _, why in skipped)
    assert missing == []


def test_missing_path_is_reported_and_a_named_file_is_read(tmp_path):
    (tmp_path / "one.txt").write_text("text\n")
    found, _, missing = discover([str(tmp_path / "one.txt"), str(tmp_path / "nope")])
    assert [f.source for f in found] == ["one.txt"]
    assert missing == [(str(tmp_path / "nope"), "path does not exist")]


def test_a_named_path_that_is_neither_file_nor_folder_is_an_error(tmp_path):
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    found, _, failed = discover([str(fifo)])
    assert found == [] and failed == [(str(fifo), "not a regular file or a folder")]


def test_an_unreadable_kbignore_fails_its_folder_rather_than_ingesting_what_it_excludes(tmp_path):
    (tmp_path / "secret.md").write_text("# Secret\n")
    (tmp_path / ".kbignore").write_bytes(b"\xff\xfesecret.md\n")
    found, _, failed = discover([str(tmp_path)])
    assert found == []
    assert failed == [(f"{tmp_path}/.kbignore", ".kbignore is not UTF-8 (bad byte at offset 0)")]
