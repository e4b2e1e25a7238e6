"""Another process's small write, searched beside the vector index loaded before it (kb/catch_up.py).

The writer here is a second KnowledgeBase of the test's process: it opens the store afresh, as another
process would, so the first one's loaded index lacks its vectors.
"""

from __future__ import annotations

import numpy as np
import pytest

import kb.catch_up
import kb.sync
from kb import KnowledgeBase, Settings
from kb.catch_up import CaughtUp
from kb.store import Store, written
from kb.store.written import written_path
from tests.test_api import write_world

ROWS = {f"k{n}": f"The {word} keeper tends gate {n}" for n, word in enumerate(
    ["lantern", "salt", "rope", "kiln", "bell", "net", "tide", "reed"])}
QUERIES = ["lantern keeper", "bell gate", "keeper who sings of whales", "reed", "herons at dawn"]


def _table(rows: dict[str, str]) -> str:
    return "key,en\n" + "".join(f"{key},{text}\n" for key, text in rows.items())


SHIPPED_RATIO = kb.catch_up.EMBED_CHARS_PER_CHUNK


@pytest.fixture(autouse=True)
def embedding_here_is_cheap(monkeypatch):
    """A store of a few chunks opens afresh in no time, so it would always be opened afresh: not here."""
    monkeypatch.setattr(kb.catch_up, "EMBED_CHARS_PER_CHUNK", 1e6)


@pytest.fixture
def served(tmp_path, fake_embedder) -> KnowledgeBase:
    """A knowledge base that has searched once (its vector index loaded), as a running server has."""
    world = write_world(tmp_path / "world", {"barks.csv": _table(ROWS),
                                             "herons.md": "# Herons\n\nThe old woman feeds the herons at dawn.\n"})
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(world)])
    other = KnowledgeBase.open(tmp_path / "kb", kb.settings)
    other.ingest([str(world)])  # the writer below opens the store afresh: so does this, and the index is on disk
    assert kb.search("lantern keeper", k=1, mode="dense")
    return kb


def _write_elsewhere(kb: KnowledgeBase, tmp_path, rows: dict[str, str]) -> None:
    write_world(tmp_path / "world", {"barks.csv": _table(rows)})
    KnowledgeBase.open(kb.settings.kb_dir, kb.settings).ingest([str(tmp_path / "world")])


def _ranked(kb: KnowledgeBase, **filters) -> dict[str, list[tuple[str, float]]]:
    """Every chunk's cosine to each query (k is more than the chunks there are; ties in any order)."""
    return {q: sorted((h.id, round(h.cosine, 5)) for h in kb.search(q, k=20, mode="dense", **filters))
            for q in QUERIES}


def _as_opened_afresh(kb: KnowledgeBase, **filters) -> dict[str, list[tuple[str, float]]]:
    """What a knowledge base that loads the store's index now ranks: a handle on the copy the writer opened."""
    return _ranked(KnowledgeBase.open(kb.settings.kb_dir, kb.settings), **filters)


def test_an_edited_row_is_searched_beside_the_loaded_index_as_a_fresh_open_would(served, tmp_path):
    _write_elsewhere(served, tmp_path, {**ROWS, "k4": "The bell keeper sings of whales at gate 4"})
    found = served.search("keeper who sings of whales", k=1, mode="dense")
    store = served.store
    assert isinstance(store, CaughtUp)
    assert len(store.embedded) == 1 and not store.to_loaded and len(store.gone) == 1  # the other rows kept their ids
    assert found[0].text == "k4: The bell keeper sings of whales at gate 4"
    assert _ranked(served) == _as_opened_afresh(served)
    every = {h.text for q in QUERIES for h in served.search(q, k=10, mode="dense")}
    assert "k4: The bell keeper tends gate 4" not in every and "k5: The net keeper tends gate 5" in every


def test_a_filtered_search_names_renamed_chunks_by_the_ids_the_loaded_index_holds(served, tmp_path, monkeypatch):
    monkeypatch.setattr(kb.sync, "MAX_ORIGINS", 0)  # the table written again whole: every chunk under a new id
    _write_elsewhere(served, tmp_path, {**ROWS, "k4": "The bell keeper sings of whales at gate 4"})
    where = {"source": "barks.csv"}
    first = _ranked(served, where=where)  # chromadb ranks a filtered set first; later searches rank it here
    assert isinstance(served.store, CaughtUp)
    assert first == _ranked(served, where=where) == _as_opened_afresh(served, where=where)
    assert any(cid in served.store.to_loaded for cid, _ in first["reed"])  # renamed chunks, still ranked


def test_edits_one_after_another_are_kept_beside_the_same_index(served, tmp_path):
    edited = {**ROWS, "k4": "The bell keeper sings of whales at gate 4"}
    _write_elsewhere(served, tmp_path, edited)
    served.search("bell", k=1)
    client = served.store.client
    edited = {**edited, "k4": "The bell keeper hums at gate 4", "k8": "The reed keeper sings of whales"}
    _write_elsewhere(served, tmp_path, edited)
    assert served.search("keeper who sings of whales", k=1, mode="dense")[0].text == \
        "k8: The reed keeper sings of whales"
    store = served.store
    assert store.client is client and len(store.embedded) == 2 and len(store.gone) == 1
    assert _ranked(served) == _as_opened_afresh(served)


def test_a_removed_file_leaves_answers(served, tmp_path):
    (tmp_path / "world" / "herons.md").unlink()
    KnowledgeBase.open(served.settings.kb_dir, served.settings).ingest([str(tmp_path / "world")])
    assert "herons.md" not in {h.source for h in served.search("herons at dawn", k=10, mode="dense")}
    assert isinstance(served.store, CaughtUp) and len(served.store.gone) == 1
    every = served.corpus.ids  # the loaded index holds one more, which takes no place among them
    assert sorted(cid for cid, _ in served.store.dense_query("herons at dawn", len(every))) == sorted(every)
    assert _ranked(served) == _as_opened_afresh(served)


def test_a_write_whose_vectors_its_writer_kept_is_kept_beside_with_them(served, tmp_path, monkeypatch):
    """Embedding the new passages again was most of the 2.3-2.5 s a server took to find a 100-section file."""
    monkeypatch.setattr(kb.catch_up, "EMBED_CHARS_PER_CHUNK", 0)  # nothing may be embedded here
    loaded = served.store.client
    _write_elsewhere(served, tmp_path, {**ROWS, "k4": "The bell keeper sings of whales at gate 4"})
    monkeypatch.setattr(Store, "embed_passages", lambda *_: pytest.fail("a passage was embedded again"))
    assert served.search("keeper who sings of whales", k=1, mode="dense")[0].text.startswith("k4: The bell keeper sings")
    assert isinstance(served.store, CaughtUp) and served.store.client is loaded and len(served.store.embedded) == 1
    assert _ranked(served) == _as_opened_afresh(served)


@pytest.mark.parametrize("kept", ["missing", "damaged"])
def test_more_change_than_is_kept_beside_opens_the_store_afresh(served, tmp_path, monkeypatch, kept):
    monkeypatch.setattr(kb.catch_up, "EMBED_CHARS_PER_CHUNK", 0)
    loaded = served.store.client
    _write_elsewhere(served, tmp_path, {**ROWS, "k4": "The bell keeper sings of whales at gate 4"})
    _lose_the_kept_vectors(served, kept)
    assert served.search("keeper who sings of whales", k=1, mode="dense")[0].text.startswith("k4: The bell keeper sings")
    assert not isinstance(served.store, CaughtUp) and served.store.client is not loaded
    assert _ranked(served) == _as_opened_afresh(served)


def _lose_the_kept_vectors(kb: KnowledgeBase, how: str) -> None:
    """The writer's kept vectors (kb/store/written.py) gone, or the file holding them not SQLite."""
    path = written_path(kb.settings.kb_dir)
    assert path.exists()
    if how == "missing":
        path.unlink()
    else:
        path.write_bytes(b"not a database" * 100)


def test_a_small_store_is_opened_afresh_where_that_costs_less_than_embedding_here(served, tmp_path, monkeypatch):
    monkeypatch.setattr(kb.catch_up, "EMBED_CHARS_PER_CHUNK", SHIPPED_RATIO)
    _write_elsewhere(served, tmp_path, {**ROWS, "k4": "The bell keeper sings of whales at gate 4"})
    _lose_the_kept_vectors(served, "missing")
    assert served.search("keeper who sings of whales", k=1, mode="dense")[0].text.startswith("k4: The bell keeper sings")
    assert not isinstance(served.store, CaughtUp)


def test_the_vectors_kept_are_the_newest_and_a_damaged_file_starts_again(tmp_path, monkeypatch):
    monkeypatch.setattr(written, "KEPT", 3)
    unit = {f"c{n}": np.full(4, n, dtype=np.float32) for n in range(5)}
    written.record(tmp_path, dict(list(unit.items())[:2]))
    written.record(tmp_path, dict(list(unit.items())[2:]))
    found = written.read(tmp_path, list(unit), 4)
    assert sorted(found) == ["c2", "c3", "c4"] and (found["c3"] == unit["c3"]).all()
    assert written.read(tmp_path, list(unit), 8) == {}  # another model's dimension
    written_path(tmp_path).write_bytes(b"not a database" * 100)
    assert written.read(tmp_path, list(unit), 4) == {}
    written.record(tmp_path, {"c0": unit["c0"]})  # fails, and lets the damaged file go
    written.record(tmp_path, {"c1": unit["c1"]})
    assert list(written.read(tmp_path, list(unit), 4)) == ["c1"]


def test_a_run_of_more_chunks_than_are_kept_keeps_none(served, tmp_path, monkeypatch):
    monkeypatch.setattr(written, "KEPT", len(ROWS) - 1)
    written_path(served.settings.kb_dir).unlink()
    monkeypatch.setattr(kb.sync, "MAX_ORIGINS", 0)  # each edit writes the table again whole
    _write_elsewhere(served, tmp_path, {**ROWS, "k4": "The bell keeper sings of whales at gate 4"})
    assert not written_path(served.settings.kb_dir).exists()
    monkeypatch.setattr(written, "KEPT", len(ROWS))
    _write_elsewhere(served, tmp_path, {**ROWS, "k4": "The bell keeper hums at gate 4"})
    assert len(written.read(served.settings.kb_dir, served.corpus.ids, 64)) == len(ROWS)
