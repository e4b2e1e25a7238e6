"""A local store's postings built beside the ingest that writes its chunks (kb/first_build.py)."""

from __future__ import annotations

import os

import pytest

from kb import KnowledgeBase, Settings
from kb.errors import KBError
from kb.postings import Postings, index_path, local_index_path
from kb.retrieve import Corpus
from kb.store import store as store_module
from tests.test_api import WORLD, write_world
from tests.test_postings import all_scores, reopened, table_rows

SECTIONS = "# Harbour log\n\n## Dawn\n\nThe gulls wake the pier.\n\n## Noon\n\n{noon}\n\n## Dusk\n\nLanterns line the quay.\n"


@pytest.fixture
def store_reads(monkeypatch) -> list[list[str]]:
    """The files each postings update reads back from the store, by source."""
    reads, read = [], Postings._read

    def watched(store, records):
        reads.append(sorted(record.source for record in records.values()))
        return read(store, records)

    monkeypatch.setattr(Postings, "_read", staticmethod(watched))
    return reads


def building_files(kb: KnowledgeBase) -> list[str]:
    return sorted(path.name for path in (kb.settings.kb_dir / "cache").glob("*.building*"))


def built_from_the_store(kb: KnowledgeBase, tmp_path) -> Postings:
    """The index a reader builds from the whole store, to compare with."""
    built = Postings(tmp_path / "from-store.sqlite")
    built.update(reopened(kb).store)
    return built


def test_a_first_ingest_builds_the_postings_from_the_chunks_it_writes_as_a_reader_would_from_the_store(
        tmp_path, fake_embedder, store_reads):
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(write_world(tmp_path / "world", {**WORLD, "harbour.md": SECTIONS.format(noon="Nets dry.")}))])
    assert store_reads == []  # no chunk read back: the ingest's own were indexed
    store = reopened(kb).store
    assert Postings(index_path(store)).update(store) == 0  # every file's version as the store holds it
    assert table_rows(index_path(store)) == table_rows(built_from_the_store(kb, tmp_path).path)
    assert building_files(kb) == []


def test_files_the_build_did_not_see_are_read_from_the_store_after_it(tmp_path, fake_embedder, store_reads):
    """The index deleted, an ingest writes a file edited whole and one edited in one of its three chunks: only
    the first is built beside (the other's version keeps chunks this ingest does not write); the update after
    reads the rest, and every score is as a build from the store gives."""
    root = write_world(tmp_path / "world", {**WORLD, "harbour.md": SECTIONS.format(noon="Nets dry.")})
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(root)])
    for path in (kb.settings.kb_dir / "cache").glob("bm25.sqlite*"):
        path.unlink()
    (root / "harbour.md").write_text(SECTIONS.format(noon="The ferry keeper mends herons' nets."), encoding="utf-8")
    (root / "kilns.md").write_text("# Kilns\n\nThe kiln keeper fires Glimmerware pots.\n", encoding="utf-8")
    store_reads.clear()
    reopened(kb).ingest([str(root)])
    assert store_reads == [sorted(["harbour.md", *(name for name in WORLD if name != "kilns.md")])]
    corpus = reopened(kb).corpus
    assert all_scores(corpus) == all_scores(Corpus(built_from_the_store(kb, tmp_path).snapshot()))
    assert reopened(kb).search("mends herons nets", k=1, mode="bm25")[0].source == "harbour.md"
    assert building_files(kb) == []


def test_a_failed_ingest_leaves_neither_an_index_nor_its_build(tmp_path, fake_embedder, monkeypatch):
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    root = write_world(tmp_path / "world")

    def full_disk(run):
        raise KBError("cannot write the knowledge base: disk full")

    with monkeypatch.context() as patch:
        patch.setattr(store_module.Run, "publish", full_disk)
        with pytest.raises(KBError, match="disk full"):
            kb.ingest([str(root)])
    assert not local_index_path(kb.settings.kb_dir).exists()
    assert building_files(kb) == []
    reopened(kb).ingest([str(root)])
    assert reopened(kb).search("Saltreach ferry", k=1, mode="bm25")[0].source == "ferry.md"


def test_an_index_a_reader_made_meanwhile_is_kept_and_brought_up_to_date(tmp_path, fake_embedder):
    """A server that opened the new store mid-ingest holds its index open: the build is not put in its place."""
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    index = local_index_path(kb.settings.kb_dir)
    opened = []

    def a_reader_opens_it(source):
        if not opened:
            opened.append(Postings(index))

    kb.ingest([str(write_world(tmp_path / "world"))], on_file=a_reader_opens_it)
    assert os.stat(index).st_ino == os.stat(opened[0].path).st_ino and opened[0].path == index
    store = reopened(kb).store
    assert Postings(index).update(store) == 0
    assert all_scores(reopened(kb).corpus) == all_scores(Corpus(built_from_the_store(kb, tmp_path).snapshot()))
    assert building_files(kb) == []


def test_a_build_that_fails_beside_is_done_after_the_ingest(tmp_path, fake_embedder, monkeypatch, caplog):
    def failing(self, files):
        next(iter(files))
        raise OSError("no space left on device")

    monkeypatch.setattr(Postings, "add", failing)
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(write_world(tmp_path / "world"))])
    assert "building it beside failed (OSError: no space left on device)" in caplog.text
    assert reopened(kb).search("Saltreach ferry", k=1, mode="bm25")[0].source == "ferry.md"
    assert building_files(kb) == []


def test_a_file_version_names_its_time_as_the_store_gives_it_back(tmp_path, fake_embedder):
    """chromadb returned some ingest times a digit off in the 16th place: a version built beside named
    another time than the store's, and was indexed a second time."""
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(write_world(tmp_path / "world"))])
    for record in reopened(kb).store.files().values():
        assert record.ingested_at == round(record.ingested_at, 3)
