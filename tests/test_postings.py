"""The BM25 postings on disk: data only, kept current file by file, rebuilt whenever unreadable."""

from __future__ import annotations

import pickle
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from ingest.discover import file_key
from kb import KnowledgeBase, Settings, api, postings_batch
from kb import postings as postings_module
from kb import retrieve as retrieve_module
from kb.lexical import query_tokens, word_pairs
from kb.parse_worker import run_bounded
from kb.postings import APPLICATION_ID, FileChunks, Postings, index_path
from kb.retrieve import Corpus, search
from kb.store import FileRecord, Store
from kb.store import store as store_module
from tests.conftest import invoke_json
from tests.dying_worker import closes_its_pipe_then_exits
from tests.test_api import write_world


@pytest.fixture
def world(tmp_path, fake_embedder):
    """A small world ingested and searched once (so its postings are on disk); the kb and the folder."""
    root = write_world(tmp_path / "world")
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(root)])
    assert reopened(kb).search("Saltreach ferry", k=1, mode="bm25")[0].source == "ferry.md"
    return kb, root


def reopened(kb: KnowledgeBase) -> KnowledgeBase:
    """The same store as a new process sees it: nothing loaded yet."""
    return KnowledgeBase.open(kb.settings.kb_dir, kb.settings)


def file_rows(path: Path) -> dict[str, tuple]:
    with sqlite3.connect(path) as db:
        return {key: (version, seq) for key, version, seq in db.execute("SELECT key, version, seq FROM files")}


class Payload:
    """Unpickling this touches a file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_reopened_store_reindexes_nothing(world):
    kb, _ = world
    store = reopened(kb).store
    assert Postings(index_path(store)).update(store) == 0


def test_postings_in_line_with_the_stores_generation_read_no_file_records(world, monkeypatch):
    """Reading 10,000 file records was 0.67 s of a fresh process's open at a million chunks."""
    kb, root = world
    store = reopened(kb).store
    monkeypatch.setattr(store, "files", lambda: pytest.fail("the file records were read"))
    assert Postings(index_path(store)).update(store) == 0
    (root / "ferry.md").write_text("# Ferry\n\nThe ferry to Saltreach was raised by Ondra.\n", encoding="utf-8")
    reopened(kb).ingest([str(root)])
    read = []
    monkeypatch.setattr(store, "files", lambda: read.append(1) or Store.files(store))
    assert reopened(kb).search("Ondra", k=1, mode="bm25")[0].source == "ferry.md"
    assert Postings(index_path(store)).update(store) == 0 and read == []


def test_postings_behind_by_a_few_files_read_only_those_the_stores_log_of_moves_lists(world, tmp_path, monkeypatch):
    """A replica behind another writer's edit read all 10,000 file records at a million chunks: 0.53-0.87 s of
    the 2.0-3.3 s before it saw the edit."""
    kb, root = world
    store = reopened(kb).store
    behind = tmp_path / "behind.sqlite3"
    with sqlite3.connect(index_path(store)) as db, sqlite3.connect(behind) as copy:
        db.backup(copy)  # the postings as a replica holds them, in line with the store's generation now
    (root / "ferry.md").write_text("# Ferry\n\nThe ferry to Saltreach was raised by Ondra.\n", encoding="utf-8")
    reopened(kb).ingest([str(root)])
    reopened(kb).forget([str(root / "herons.md")])
    store = reopened(kb).store
    monkeypatch.setattr(store, "files", lambda: pytest.fail("the file records were read"))
    assert Postings(behind).update(store) == 2
    assert file_rows(behind) == file_rows(index_path(store))
    assert search_of(behind, store, "Ondra") == search_of(index_path(store), store, "Ondra")


def search_of(path: Path, store: Store, query: str) -> list[tuple[str, float]]:
    """A BM25 search of the postings at ``path``: each hit's id and score."""
    return [(hit.id, hit.score) for hit in search(store, Corpus(Postings(path).snapshot()), query, k=3, mode="bm25")]


class Killed(Exception):
    """The process stopped here."""


def kill(*_):
    raise Killed


@pytest.fixture
def edited_after_records_were_read(world):
    """An update that reads the file records, then ferry.md edited and ingested (the index brought in line):
    the kb, that update's store (its records as they were) and the index's path."""
    kb, root = world
    stale = reopened(kb).store
    records = stale.files()
    (root / "ferry.md").write_text("# Ferry\n\nThe ferry to Saltreach was raised by Ondra.\n", encoding="utf-8")
    reopened(kb).ingest([str(root)])
    stale.files = lambda: records
    return kb, stale, index_path(stale)


def test_an_update_killed_after_writing_an_older_state_leaves_no_generation_to_trust(
        edited_after_records_were_read, monkeypatch):
    kb, stale, path = edited_after_records_were_read
    store = reopened(kb).store
    assert Postings(path).update(store) == 0  # the ingest's own update recorded its generation
    older = Postings(path)
    monkeypatch.setattr(older, "_synced", lambda: None)  # it began before the ingest's generation
    monkeypatch.setattr(older, "_record", kill)
    with pytest.raises(Killed):
        older.update(stale)  # ferry.md as it was, written over the ingest's
    assert Postings(path).update(store) == 1  # read again, and ferry.md brought back in line
    assert reopened(kb).search("Ondra", k=1, mode="bm25")[0].source == "ferry.md"


def test_an_update_does_not_record_its_generation_over_rows_another_wrote_meanwhile(
        edited_after_records_were_read, monkeypatch):
    kb, stale, path = edited_after_records_were_read
    for name in path.parent.glob(f"{path.name}*"):  # so the newer update has everything to write
        name.unlink()
    newer, store = Postings(path), reopened(kb).store
    record = newer._record

    def an_older_update_writes_first(*args):
        older = Postings(path)
        monkeypatch.setattr(older, "_record", kill)
        with pytest.raises(Killed):
            older.update(stale)
        record(*args)

    monkeypatch.setattr(newer, "_record", an_older_update_writes_first)
    assert newer.update(store) == 4
    assert Postings(path).update(store) == 1
    assert reopened(kb).search("Ondra", k=1, mode="bm25")[0].source == "ferry.md"


def test_a_changed_file_touches_only_its_own_postings(world):
    kb, root = world
    path = index_path(kb.store)
    before = file_rows(path)
    (root / "kilns.md").write_text("# Kilns\n\nThe kiln keeper fires Glimmerware pots.\n", encoding="utf-8")
    (root / "herons.md").unlink()
    kb.ingest([str(root)])

    hits = reopened(kb).search("Glimmerware", k=1, mode="bm25")
    assert [hit.source for hit in hits] == ["kilns.md"]
    after = file_rows(path)
    assert file_key(root / "herons.md") not in after
    assert {key for key in after if after[key] != before.get(key)} == {file_key(root / "kilns.md")}
    assert reopened(kb).search("herons", mode="bm25") == []


QUESTIONS = ["old woman", "grey herons at dawn", "the kilns fire", "ferry to Saltreach", "storm", "Ondra raised"]


def all_scores(corpus: Corpus) -> list[dict[str, float]]:
    """Each of QUESTIONS' BM25 scores, every chunk scoring, by chunk id (indexes number chunks their own way)."""
    found = []
    for question in QUESTIONS:
        ranked = corpus.bm25_ranking(question, None, corpus.size)
        found.append(dict(zip(corpus.ids_at([pos for pos, _ in ranked]), [score for _, score in ranked])))
    return found


def test_files_written_together_share_rows_and_score_as_if_written_alone(world, tmp_path, monkeypatch):
    kb, _ = world
    with sqlite3.connect(index_path(kb.store)) as db:
        grouped = db.execute("SELECT count(DISTINCT first), count(*) FROM grouped").fetchone()
        rows = db.execute("SELECT count(*) FROM postings").fetchone()[0]
    monkeypatch.setattr(postings_module, "GROUP_CHUNKS", 0)
    alone = Postings(tmp_path / "alone.sqlite")
    alone.update(kb.store)
    with sqlite3.connect(alone.path) as db:
        assert db.execute("SELECT count(*) FROM grouped").fetchone()[0] == 0
        assert rows < db.execute("SELECT count(*) FROM postings").fetchone()[0]
    assert grouped == (1, len(file_rows(index_path(kb.store))))
    assert all_scores(reopened(kb).corpus) == all_scores(Corpus(alone.snapshot()))


def table_sizes(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("postings", "recent")}


def test_small_changes_write_their_rows_apart_until_a_large_one_moves_them(world, tmp_path, monkeypatch):
    """After the first build, a change of fewer than APART_CHUNKS chunks writes its postings rows to ``recent``
    (and one of them leaves its group there); a large change moves them into the main table first. Scores stay
    those of a build from nothing throughout."""
    kb, root = world
    path = index_path(kb.store)
    built = table_sizes(path)
    assert built["postings"] and not built["recent"]
    for name in ("tollhouse.md", "weir.md"):  # two new files: a group of their own
        (root / name).write_text(f"# {name}\n\nOndra raised the {name[:-3]} at Saltreach.\n", encoding="utf-8")
    kb.ingest([str(root)])
    (root / "tollhouse.md").write_text("# Tollhouse\n\nThe tollhouse burned off the Fellstack.\n",
                                        encoding="utf-8")
    kb.ingest([str(root)])
    changed = table_sizes(path)
    assert changed["postings"] == built["postings"] and changed["recent"]

    def fresh_scores():
        fresh = Postings(tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}.sqlite")
        fresh.update(kb.store)
        return all_scores(Corpus(fresh.snapshot()))

    assert all_scores(reopened(kb).corpus) == fresh_scores()
    assert kb.search("Fellstack tollhouse", k=1, mode="bm25")[0].source == "tollhouse.md"
    monkeypatch.setattr(postings_module, "APART_CHUNKS", 1)  # the next change is a large one
    (root / "reeds.md").write_text("# Reeds\n\nHerons nest in the reeds.\n", encoding="utf-8")
    kb.ingest([str(root)])
    assert table_sizes(path)["recent"] == 0
    assert all_scores(reopened(kb).corpus) == fresh_scores()


SECTIONS = {f"{place}.md": "".join(f"# {place.title()}\n\n## {part}\n\nThe {word} of {place} was {part} {word}.\n\n"
                                   for part, word in [("old", "ferry"), ("grey", "herons"), ("storm", "kiln")])
            for place in ["saltreach", "fens", "kilnside", "dawnmoor"]}


@pytest.mark.parametrize("gone", sorted(SECTIONS))
def test_a_file_leaving_its_group_leaves_the_others_scored_as_if_written_alone(tmp_path, fake_embedder, monkeypatch,
                                                                               gone):
    root = write_world(tmp_path / "world", SECTIONS)
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(root)])
    assert reopened(kb).corpus.size == 3 * len(SECTIONS)
    (root / gone).unlink()
    edited = sorted(set(SECTIONS) - {gone})[1]
    (root / edited).write_text("# Edited\n\nOndra raised the ferry.\n", encoding="utf-8")
    kb.ingest([str(root)])
    with sqlite3.connect(index_path(kb.store)) as db:  # the two files left share the first ingest's rows
        assert db.execute("SELECT count(*) FROM grouped GROUP BY first").fetchall() == [(2,)]
    corpus = reopened(kb).corpus
    monkeypatch.setattr(postings_module, "GROUP_CHUNKS", 0)
    alone = Postings(tmp_path / "alone.sqlite")
    alone.update(kb.store)
    assert all_scores(corpus) == all_scores(Corpus(alone.snapshot()))
    assert all(all_scores(corpus)[i] for i in (0, 1, 5))


def group_rows(path: Path) -> dict[tuple[int, int], bytes]:
    """Every postings row of the write groups, by (term, group)."""
    with sqlite3.connect(path) as db:
        return {(term, seq): rows for term, seq, rows in db.execute(
            "SELECT term, seq, rows FROM postings WHERE seq IN (SELECT first FROM grouped)")}


def test_a_member_leaving_its_group_rewrites_none_of_its_rows_and_the_last_takes_them_all(tmp_path, fake_embedder):
    """Taking an edited file's chunks out of its group's rows took 0.7-0.85 s at a million prose chunks."""
    root = write_world(tmp_path / "world", SECTIONS)
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(root)])
    path = index_path(kb.store)
    written = group_rows(path)
    assert len({seq for _, seq in written}) == 1
    edited, *others = sorted(SECTIONS)
    (root / edited).write_text("# Edited\n\nOndra raised the ferry.\n", encoding="utf-8")
    kb.ingest([str(root)])
    assert group_rows(path) == written
    assert reopened(kb).search("Ondra ferry", k=1, mode="bm25")[0].source == edited
    for name in others:
        (root / name).unlink()
    kb.ingest([str(root)])
    assert group_rows(path) == {}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM departed").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM postings WHERE seq NOT IN (SELECT seq FROM files)").fetchone() == (0,)
    assert [hit.source for hit in reopened(kb).search("ferry herons kiln", k=5, mode="bm25")] == [edited]


def test_chunks_past_gaps_in_several_groups_score_where_they_are(tmp_path, fake_embedder, monkeypatch):
    monkeypatch.setattr(postings_module, "GROUP_CHUNKS", 9)  # three files of three chunks a group
    places = {f"{place}{n}.md": text for n in (1, 2) for place, text in zip("abc", SECTIONS.values())}
    root = write_world(tmp_path / "world", places)
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(root)])
    path = index_path(kb.store)
    with sqlite3.connect(path) as db:
        groups = db.execute("SELECT grouped.first, files.key FROM grouped JOIN files ON files.seq = grouped.seq "
                            "ORDER BY grouped.seq").fetchall()
    assert [first for first, _ in groups] == [groups[0][0]] * 3 + [groups[3][0]] * 3
    middles = {groups[1][1], groups[4][1]}
    for name in places:
        if file_key(root / name) in middles:
            (root / name).unlink()
    kb.ingest([str(root)])
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM grouped GROUP BY first").fetchall() == [(2,), (2,)]
    monkeypatch.setattr(postings_module, "GROUP_CHUNKS", 0)
    alone = Postings(tmp_path / "alone.sqlite")
    alone.update(kb.store)
    assert all_scores(reopened(kb).corpus) == all_scores(Corpus(alone.snapshot()))


def test_an_index_from_before_write_groups_is_kept_and_changed_file_by_file(world, tmp_path, monkeypatch):
    kb, root = world
    path = index_path(kb.store)
    monkeypatch.setattr(postings_module, "GROUP_CHUNKS", 0)
    older = Postings(path)
    older.reset()
    older.update(kb.store)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE grouped")  # as an index written before them was
    before = file_rows(path)
    monkeypatch.setattr(postings_module, "GROUP_CHUNKS", 1_000)
    (root / "ferry.md").write_text("# Ferry\n\nThe ferry to Saltreach was raised by Ondra.\n", encoding="utf-8")
    kb.ingest([str(root)])
    corpus = reopened(kb).corpus
    after = file_rows(path)
    assert {key for key in after if after[key] != before.get(key)} == {file_key(root / "ferry.md")}
    alone = Postings(tmp_path / "alone.sqlite")
    alone.update(kb.store)
    assert all_scores(corpus) == all_scores(Corpus(alone.snapshot()))


def page_size(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA page_size").fetchone()[0]


def test_a_new_index_has_large_pages_and_one_built_with_small_pages_is_kept(world, monkeypatch):
    kb, root = world
    path = index_path(kb.store)
    assert page_size(path) == postings_module.PAGE_SIZE == 65_536
    with monkeypatch.context() as small:
        small.setattr(postings_module, "PAGE_SIZE", 4_096)
        older = Postings(path)
        older.reset()
        older.update(kb.store)
    before = file_rows(path)
    (root / "ferry.md").write_text("# Ferry\n\nThe ferry to Saltreach was raised by Ondra.\n", encoding="utf-8")
    kb.ingest([str(root)])
    assert reopened(kb).search("Ondra raised", k=1, mode="bm25")[0].source == "ferry.md"
    after = file_rows(path)
    assert page_size(path) == 4_096
    assert {key for key in after if after[key] != before.get(key)} == {file_key(root / "ferry.md")}


def test_an_edited_file_works_out_again_only_the_chunks_whose_text_changed(tmp_path, fake_embedder, monkeypatch):
    """A 10,000-row loc table with one row edited spent 0.35 s counting tokens and analysing sentences again."""
    rows = {f"k{n}": f"The {word} keeper tends gate {n}." for n, word in enumerate(["salt", "rope", "kiln", "bell"])}
    table = lambda rows: "key,en\n" + "".join(f"{k},{v}\n" for k, v in rows.items())  # noqa: E731
    root = write_world(tmp_path / "world", {"barks.csv": table(rows)})
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(root)])
    kb.corpus  # noqa: B018 - the postings are built
    analysed = []
    analyse = postings_batch.stored_analysis
    monkeypatch.setattr(postings_batch, "stored_analysis", lambda text: analysed.append(text) or analyse(text))
    write_world(root, {"barks.csv": table({**rows, "k2": "The kiln keeper sings at gate 2."})})
    kb.ingest([str(root)])
    assert analysed == ["k2: The kiln keeper sings at gate 2."]  # a loc row's text starts with its key
    fresh = Postings(tmp_path / "rebuilt.sqlite")
    fresh.update(kb.store)
    ids = kb.corpus.ids
    assert kb.corpus.worked_out(ids) == Corpus(fresh.snapshot()).worked_out(ids)


def test_a_server_sees_another_writers_change_on_its_next_search(world, tmp_path):
    kb, root = world
    writer = reopened(kb)
    (root / "ferry.md").write_text("# Ferry\n\nThe ferry to Saltreach was raised by Ondra.\n", encoding="utf-8")
    writer.ingest([str(root)])
    assert kb.search("Ondra", k=1, mode="bm25")[0].source == "ferry.md"


def test_an_ingest_by_a_process_that_serves_nothing_leaves_the_postings_on_disk_current(world):
    """`kb ingest` indexes its change itself, so a server only loads it."""
    kb, root = world
    (root / "ferry.md").write_text("# Ferry\n\nThe ferry to Saltreach was raised by Ondra.\n", encoding="utf-8")
    reopened(kb).ingest([str(root)])
    store = reopened(kb).store
    assert Postings(index_path(store)).update(store) == 0
    reopened(kb).forget([str(root / "herons.md")])
    assert Postings(index_path(store)).update(store) == 0


def test_a_first_ingest_leaves_the_postings_built_for_its_first_reader(tmp_path, fake_embedder):
    """A new store's first search opens the postings; it does not build them (254 s at a million rows)."""
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(write_world(tmp_path / "world"))])
    store = reopened(kb).store
    assert Postings(index_path(store)).update(store) == 0
    assert reopened(kb).search("herons", k=1, mode="bm25")[0].source == "herons.md"


@pytest.mark.parametrize("content", [b"", b"garbage " * 100, b"SQLite format 3\x00" + b"\xff" * 200])
def test_an_unreadable_index_is_rebuilt(world, content):
    kb, _ = world
    path = index_path(kb.store)
    for suffix in ("", "-wal", "-shm"):  # a new file, as a writer of the cache directory would leave it
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.write_bytes(content)
    assert reopened(kb).search("Saltreach ferry", k=1, mode="bm25")[0].source == "ferry.md"
    assert file_rows(path)  # rebuilt in our format


def test_an_index_of_an_older_format_or_damaged_rows_is_rebuilt(world):
    kb, _ = world
    path = index_path(kb.store)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE files SET lengths = x'0102'")
    assert reopened(kb).search("Saltreach ferry", k=1, mode="bm25")[0].source == "ferry.md"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 4")
    assert reopened(kb).search("Saltreach ferry", k=1, mode="bm25")[0].source == "ferry.md"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA user_version").fetchone()[0] > 4


@pytest.mark.parametrize("damage", ["UPDATE postings SET n = n + 1", "UPDATE postings SET seq = seq + 1000"])
def test_a_damaged_postings_row_fails_the_query_that_reads_it(world, damage):
    kb, _ = world
    with sqlite3.connect(index_path(kb.store)) as db:
        db.execute(damage)
    corpus = reopened(kb).corpus
    with pytest.raises(ValueError):
        corpus.bm25_ranking("Saltreach ferry", None, 5)


def test_a_pickle_planted_in_the_cache_is_never_loaded(world, tmp_path):
    kb, _ = world
    marker = tmp_path / "code-ran"
    cache = kb.settings.kb_dir / "cache"
    generation = kb.store.generation()
    for name in (f"corpus-v4-{generation}.pkl", f"corpus-v3-{generation}.pkl"):
        (cache / name).write_bytes(pickle.dumps(Payload(marker)))
    result, data = invoke_json("search", "Saltreach ferry", "--kb", kb.settings.kb_dir, "--mode", "bm25")
    assert result.exit_code == 0, result.output
    assert data["results"][0]["source"] == "ferry.md"
    assert not marker.exists()


def test_scores_are_those_bm25s_gave():
    """The old indexes were bm25s; its scores (and so every rank) are kept to the last bit, read from disk,
    after a file is replaced as well as after a first build."""
    import bm25s
    import numpy as np

    from kb.lexical import tokens_and_pairs

    texts = ["The old woman fed the herons.", "Herons, herons and more herons by the old mill.",
             "旧港的灯塔在风暴中熄灭了", "", "The mill woman sold flour to the old woman of the fens.",
             "An old woman and an old mill: herons everywhere.", "港的灯塔"]

    def file(key, version, chunks):
        return FileChunks(key, version, [f"{key}-{version}-{i}" for i in range(len(chunks))], chunks,
                          [{} for _ in chunks])

    postings = Postings(None)
    postings._add([file("a", "1", texts[:3]), file("b", "1", texts[3:])])
    built = Corpus(postings.snapshot())
    postings._add([file("a", "2", texts[5:] + texts[:1])])  # a replaced: b, then a's new version
    updated = Corpus(postings.snapshot())
    compared = 0
    for corpus, indexed in ((built, texts), (updated, texts[3:] + texts[5:] + texts[:1])):
        assert [text for _, text, _ in corpus.chunks()] == indexed
        for field, mine in enumerate((corpus.terms, corpus.pairs)):
            docs = [tokens_and_pairs(f"\n{text}")[field] for text in indexed]
            reference = bm25s.BM25()
            reference.index(docs, show_progress=False)
            for query in (["heron"], ["old", "woman", "old"], ["港的", "heron"], ["old_woman"], ["mill_woman"]):
                query = [t for t in query if t in reference.vocab_dict]
                if query:
                    ids = [corpus._term_ids(query)[t] for t in query]
                    scores = mine.scores(ids, corpus._weights(dict.fromkeys(ids, mine)))
                    assert np.array_equal(scores, reference.get_scores(query))
                    compared += 1
    assert compared == 10
    # a ranking adds the word pairs' sums at pair_weight to the terms', float32 throughout
    question, indexed = "The old woman fed herons by the old mill", texts[3:] + texts[5:] + texts[:1]
    expected = np.zeros(len(indexed), dtype=np.float32)
    for field, (asked, weight) in enumerate([(query_tokens(question), 1.0), (word_pairs(question), 0.5)]):
        reference = bm25s.BM25()
        reference.index([tokens_and_pairs(f"\n{text}")[field] for text in indexed], show_progress=False)
        expected = expected + np.float32(weight) * reference.get_scores([t for t in asked if t in reference.vocab_dict])
    ranked = updated.bm25_ranking(question, None, len(indexed))
    assert {pos: score for pos, score in ranked} == {pos: float(expected[pos]) for pos in np.flatnonzero(expected)}


def watched_reads(monkeypatch) -> tuple[list, list]:
    """Every (table, column) a new SQLite connection's statements read, and every statement it runs."""
    reads, statements = [], []
    connect = sqlite3.connect

    def authorize(action, table, column, *_):
        if action == sqlite3.SQLITE_READ:
            reads.append((table, column))
        return sqlite3.SQLITE_OK

    def watched(*args, **kwargs):
        db = connect(*args, **kwargs)
        db.set_authorizer(authorize)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(sqlite3, "connect", watched)
    return reads, statements


def test_an_open_reads_no_posting_text_or_metadata_and_a_search_only_its_own_terms(world, monkeypatch):
    kb, _ = world
    reads, statements = watched_reads(monkeypatch)
    corpus = reopened(kb).corpus
    assert ("files", "lengths") in reads
    assert not {column for table, column in reads} & {"terms", "pairs", "texts", "metas"}  # the old files rows
    assert not {column for table, column in reads if table in ("postings", "chunks")}

    statements.clear()
    hits = search(kb.store, corpus, query := "old Saltreach ferry", k=1, mode="bm25")
    assert hits[0].source == "ferry.md" and "Saltreach" in hits[0].text
    read = [s for s in statements if "FROM postings WHERE term IN" in s]
    asked = {int(n) for s in read for n in re.search(r"IN \(([^)]*)\)", s).group(1).split(",")}
    with sqlite3.connect(index_path(kb.store)) as db:
        terms = {term for (term,) in db.execute(f"SELECT term FROM vocabulary WHERE id IN ({','.join(map(str, asked))})")}
    assert {"saltreach", "ferri"} <= terms <= set(query_tokens(query)) | set(word_pairs(query))


def test_a_search_filtered_to_a_few_chunks_reads_only_their_ids(world, monkeypatch):
    kb, _ = world
    reads, statements = watched_reads(monkeypatch)
    served = reopened(kb)
    for _ in range(2):  # the first search of a filter asks chromadb, the second ranks the set's vectors
        assert [hit.source for hit in served.search("ferry", k=2, mode="dense", where={"source": "ferry.md"})] \
            == ["ferry.md"]
    assert not [s for s in statements if s.startswith("SELECT id FROM chunks WHERE key")]  # every id, file by file


def test_a_reload_reads_again_only_the_changed_files_metadata(world, monkeypatch):
    """A filter's mask needs every chunk's metadata: a server reads it once, then only a changed file's."""
    kb, root = world
    assert kb.search("ferry", k=1, mode="bm25", where={"lang": "en"})[0].source == "ferry.md"
    (root / "kilns.md").write_text("# Kilns\n\nThe kiln keeper fires Glimmerware pots.\n", encoding="utf-8")
    reopened(kb).ingest([str(root)])
    reads, statements = watched_reads(monkeypatch)
    assert kb.search("Glimmerware", k=1, mode="bm25", where={"lang": "en"})[0].source == "kilns.md"
    read = [s for s in statements if s.startswith("SELECT meta FROM chunks")]
    assert len(read) == 1 and file_key(root / "kilns.md") in read[0]
    assert kb.corpus.metas() == reopened(kb).corpus.metas()


def test_postings_read_again_come_from_memory_with_the_same_scores(world, monkeypatch):
    """A corpus keeps the postings it read last: a common term is a row per file, read once per corpus."""
    kb, _ = world
    first = [(h.id, h.score) for h in kb.search("old Saltreach ferry herons", k=5, mode="bm25")]
    monkeypatch.setattr(kb.corpus._snapshot, "postings", _refuse_read)
    assert [(h.id, h.score) for h in kb.search("old Saltreach ferry herons", k=5, mode="bm25")] == first


def _refuse_read(*args, **kwargs):
    raise AssertionError("postings read before were read from disk again")


# Twelve files of three sections: "harbor" in every chunk, "lantern" in every other file's, "kestrel" in one.
HARBOR = {f"quay{n}.md": "".join(f"# Berth{n}\n\n## {part}\n\nThe harbor {extra} {part} quay{n}.\n\n"
                                  for part in ("north", "south", "east"))
          .replace("north quay0", "north quay0 kestrel")
          for n in range(12) for extra in ["lantern" if n % 2 else "wall"]}


@pytest.fixture
def harbor(tmp_path, fake_embedder, monkeypatch):
    """HARBOR ingested in write groups of two files, reopened as a new server would be; its KnowledgeBase."""
    monkeypatch.setattr(postings_module, "GROUP_CHUNKS", 6)
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    kb.ingest([str(write_world(tmp_path / "world", HARBOR))])
    monkeypatch.setattr(retrieve_module, "SAMPLED_GROUPS", 3)  # of six
    monkeypatch.setattr(retrieve_module, "KEEP_AHEAD_MIN_CHUNKS", 10)
    return reopened(kb)


def test_a_warmed_server_has_its_commonest_terms_postings_before_the_first_question(harbor, monkeypatch):
    """A fresh server's first new questions read their common words' postings: 2.4-2.9x dense at a million chunks."""
    cold = {word: [(hit.id, hit.score) for hit in reopened(harbor).search(word, k=40, mode="bm25")]
            for word in ("harbor lantern", "kestrel")}
    harbor.warm()
    read = []
    monkeypatch.setattr(harbor.corpus._snapshot, "postings", lambda term_ids: read.append(term_ids) or {})
    assert [(hit.id, hit.score) for hit in harbor.search("harbor lantern", k=40, mode="bm25")] == cold["harbor lantern"]
    assert read == []
    assert harbor.search("kestrel", k=40, mode="bm25") == [] and len(read) == 1  # held by one chunk: not read ahead


def test_a_reload_reads_again_the_terms_most_chunks_hold_that_the_corpus_before_kept(harbor, tmp_path, monkeypatch):
    """"harbor" (every chunk) and "lantern" (half) are kept as a score per chunk: after a change, the next corpus
    reads them in a thread before a question asks for them; "kestrel" (one chunk) is left to its question."""
    question = "harbor lantern kestrel"
    harbor.search(question, k=40, mode="bm25")
    write_world(tmp_path / "world", {"quay12.md": "# Berth12\n\nA lantern on the harbor.\n"})
    reopened(harbor).ingest([str(tmp_path / "world")])
    assert harbor.search("Berth12", k=1, mode="bm25")[0].source == "quay12.md"  # reloaded
    for thread in threading.enumerate():
        if thread.name == "kb-read-common":
            thread.join()
    ids = harbor.corpus._term_ids(["harbor", "lantern", "kestrel"])
    assert set(harbor.corpus._weights_read._kept) & set(ids.values()) == {ids["harbor"], ids["lantern"]}
    fresh = [(hit.id, hit.score) for hit in reopened(harbor).search("harbor lantern", k=40, mode="bm25")]
    monkeypatch.setattr(harbor.corpus._snapshot, "postings", _refuse_read)
    assert [(hit.id, hit.score) for hit in harbor.search("harbor lantern", k=40, mode="bm25")] == fresh


def test_the_postings_read_ahead_are_the_commonest_that_fit(harbor):
    corpus = harbor.corpus
    assert corpus.keep_common_terms(budget=corpus.size // 2) == 1  # "harbor", in every chunk, kept per chunk
    assert list(corpus._weights_read._kept) == [corpus._term_ids(["harbor"])["harbor"]]
    assert reopened(harbor).corpus.keep_common_terms(budget=corpus.size // 2 - 1) == 0


def test_a_loaded_corpus_answers_from_its_snapshot_while_the_postings_change(world):
    """A server keeps answering from the corpus it loaded while a reload (its own or another process's)
    rewrites the postings: the snapshot sees one committed state, not a half-written one."""
    kb, root = world
    corpus = kb.corpus
    before = [(h.id, h.text, h.score) for h in search(kb.store, corpus, "Saltreach ferry herons", k=5, mode="bm25")]
    (root / "ferry.md").write_text("# Ferry\n\nThe ferry to Saltreach was raised by Ondra.\n", encoding="utf-8")
    (root / "herons.md").unlink()
    writer = reopened(kb)
    writer.ingest([str(root)])
    assert writer.search("Ondra", k=1, mode="bm25")[0].source == "ferry.md"  # the postings are rewritten
    assert [(h.id, h.text, h.score) for h in search(kb.store, corpus, "Saltreach ferry herons", k=5, mode="bm25")] \
        == before
    assert search(kb.store, corpus, "Ondra", mode="bm25") == []
    assert kb.search("Ondra", k=1, mode="bm25")[0].source == "ferry.md"  # its next corpus sees the change


def test_stopwords_are_spacys_without_importing_spacy():
    from spacy.lang.en.stop_words import STOP_WORDS
    from spacy.lang.zh.stop_words import STOP_WORDS as ZH_STOP_WORDS

    from kb.lexical import spacy_stop_words

    assert spacy_stop_words("en") == frozenset(STOP_WORDS)
    assert spacy_stop_words("zh") == frozenset(ZH_STOP_WORDS)


def many_files_store(tmp_path, fake_embedder, files: int, chunks: int = 3) -> Store:
    """Files of a few chunks each, stored as ingest stores them."""
    store = Store(tmp_path / "many", model=fake_embedder, create=True)
    run = store.begin_run()
    for n in range(files):
        source = f"notes/file-{n:03d}.md"
        key, digest = file_key(Path("/notes") / source), f"{n:040x}"
        texts = [f"The ferry keeper {n} counts herons on pier {i}." for i in range(chunks)]
        metas = [{"title": f"Pier log {n}", "lang": "en", "source": source, "chunk_index": i, "file_key": key,
                  "file_hash": digest, "ingested_at": 1.0} for i in range(chunks)]
        record = FileRecord(key=key, path=f"/notes/{source}", source=source, root="/notes", hash=digest,
                            kind="canon", chunks=chunks, ingested_at=1.0)
        run.put(record, [f"{key}-{digest[:12]}-{i}" for i in range(chunks)], texts, metas,
                store.embed_passages(texts))
    run.publish()
    return store


def table_rows(path: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(path)
    return {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("files", "vocabulary", "postings", "chunks", "grouped")}


def built_here(tmp_path, store: Store) -> Postings:
    """The postings a build done all in this process writes, to compare a build in parts with."""
    here = Postings(tmp_path / "here.sqlite")
    here.update(store)
    return here


def test_a_large_build_works_out_its_batches_in_the_parse_worker_to_the_same_rows(tmp_path, fake_embedder,
                                                                                   monkeypatch):
    """From APART_CHUNKS chunks, each batch is tokenized and analysed in the parse worker while this process
    reads and writes; the tables come out as a build done here writes them."""
    store = many_files_store(tmp_path, fake_embedder, files=6)
    monkeypatch.setattr(postings_module, "WRITE_BATCH_CHUNKS", 3)  # a batch per file
    here = built_here(tmp_path, store)
    monkeypatch.setattr(postings_module, "APART_CHUNKS", 18)
    jobs, run_bounded = [], postings_module.run_bounded
    monkeypatch.setattr(postings_module, "run_bounded", lambda function, args, *rest: (
        jobs.append(function), run_bounded(function, args, *rest))[1])
    apart = Postings(tmp_path / "apart.sqlite")
    assert apart.update(store) == 6
    assert jobs == [postings_batch.prepared] * 6
    assert table_rows(apart.path) == table_rows(here.path)


def test_a_store_read_failing_mid_build_is_raised_and_the_next_update_finishes_the_build(tmp_path, fake_embedder,
                                                                                        monkeypatch):
    """A large build reads each batch from the store in a thread ahead of its writes; what that read raises
    reaches the caller, and the files written before it stay for the next update to complete."""
    store = many_files_store(tmp_path, fake_embedder, files=6)
    monkeypatch.setattr(postings_module, "WRITE_BATCH_CHUNKS", 3)  # a batch per file
    here = built_here(tmp_path, store)
    monkeypatch.setattr(postings_module, "APART_CHUNKS", 1)
    reads, file_chunks = [], store.file_chunks

    def failing_fourth(record):
        reads.append(threading.current_thread().name)
        if len(reads) == 4:
            raise sqlite3.OperationalError("disk I/O error")
        return file_chunks(record)

    monkeypatch.setattr(store, "file_chunks", failing_fourth)
    apart = Postings(tmp_path / "apart.sqlite")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        apart.update(store)
    assert all(name.startswith("kb-postings-read") for name in reads)
    written = len(table_rows(apart.path)["files"])
    assert 0 < written < 6
    monkeypatch.setattr(store, "file_chunks", file_chunks)
    assert apart.update(store) == 6 - written
    assert table_rows(apart.path) == table_rows(here.path)


def test_a_batch_the_parse_worker_fails_is_worked_out_here(tmp_path, fake_embedder, monkeypatch, caplog):
    store = many_files_store(tmp_path, fake_embedder, files=2)
    here = built_here(tmp_path, store)
    monkeypatch.setattr(postings_module, "APART_CHUNKS", 1)

    def worker_dies(function, args, source, timeout_s, memory_mb):
        return run_bounded(closes_its_pipe_then_exits, (3,), source, timeout_s, memory_mb)  # the real worker

    monkeypatch.setattr(postings_module, "run_bounded", worker_dies)
    apart = Postings(tmp_path / "apart.sqlite")
    assert apart.update(store) == 2
    assert "worked out a batch of postings in this process: " in caplog.text
    assert "parse process died (exit status 3)" in caplog.text
    assert table_rows(apart.path) == table_rows(here.path)


def test_a_first_build_writes_files_while_it_still_scans_the_store(tmp_path, fake_embedder, monkeypatch):
    """The scan hands each file on once its chunks are seen, so a first build never holds the whole canon."""
    store = many_files_store(tmp_path, fake_embedder, files=8)
    monkeypatch.setattr(postings_module, "FULL_SCAN_FILES", 4)  # more changed than this: one scan of the store
    scanned, scanned_at_write = [], []
    scan = store.scan_chunks
    monkeypatch.setattr(store_module, "LARGE_PAGE", 4)  # the scan reads four rows at a time

    def counted_scan():
        for row in scan():
            scanned.append(row)
            yield row

    monkeypatch.setattr(store, "scan_chunks", counted_scan)
    monkeypatch.setattr(postings_module, "WRITE_BATCH_CHUNKS", 3)
    write = Postings._write
    monkeypatch.setattr(Postings, "_write", lambda self, *batch: (scanned_at_write.append(len(scanned)),
                                                                  write(self, *batch)))
    built = Postings(None)
    assert built.update(store) == 8
    assert len(scanned) == 24 and scanned_at_write[0] < 8

    monkeypatch.setattr(postings_module, "FULL_SCAN_FILES", 1000)  # the same files read one at a time
    one_by_one = Postings(None)
    one_by_one.update(store)
    for corpus in (Corpus(built.snapshot()), Corpus(one_by_one.snapshot())):
        assert list(corpus.chunks()) == scanned
    assert built.snapshot().files == one_by_one.snapshot().files




def test_a_file_keeping_chunks_of_its_version_before_is_indexed_in_the_order_of_its_places(tmp_path, fake_embedder,
                                                                                         monkeypatch):
    """Its chunk written last is a scan's last, but its place is the middle one, as when read file by file."""
    store = many_files_store(tmp_path, fake_embedder, files=6)
    record = next(r for r in store.files().values() if r.source == "notes/file-000.md")
    _, texts, metas = store.file_chunks(record)
    digest = "e" * 40
    edited = FileRecord(**{**vars(record), "hash": digest, "origins": [[record.hash, 1, 0], [digest, 1, 1],
                                                                  [record.hash, 1, 2]]})
    text = "The ferry keeper 0 counts gulls on pier 1."
    run = store.begin_run()
    run.put(edited, [f"{record.key}-{digest[:12]}-1"], [text], [{**metas[1], "file_hash": digest}],
            store.embed_passages([text]))
    run.publish()
    assert store.file_chunks(edited)[1] == [texts[0], text, texts[2]]

    monkeypatch.setattr(postings_module, "FULL_SCAN_FILES", 4)
    scanned = Postings(None)
    assert scanned.update(store) == 6
    monkeypatch.setattr(postings_module, "FULL_SCAN_FILES", 1000)
    one_by_one = Postings(None)
    one_by_one.update(store)
    for corpus in (Corpus(scanned.snapshot()), Corpus(one_by_one.snapshot())):
        assert [text for _, text, meta in corpus.chunks() if meta["source"] == record.source] == \
            [texts[0], text, texts[2]]
    assert sorted(cid for cid, _, _ in Corpus(scanned.snapshot()).chunks()) == sorted(
        cid for file in store.files().values() for cid in file.chunk_ids())


def test_a_server_holding_its_corpus_lets_the_postings_log_start_over(world, monkeypatch):
    """A loaded corpus reads one committed state; once the previous one is let go, it begins its read
    again on a fully copied log, so a long-running server's log does not grow with every change."""
    kb, root = world
    monkeypatch.setattr(api, "GENERATION_POLL_S", 0.0)  # each call polls, as a busy server does
    log = index_path(kb.store).with_name("bm25.sqlite-wal")
    sizes = []
    for n in range(12):
        words = " ".join(f"change{n}word{i}" for i in range(400))
        (root / "ferry.md").write_text(f"# Ferry\n\nThe ferry sails. {words}\n", encoding="utf-8")
        reopened(kb).ingest([str(root)])
        assert kb.search(f"change{n}word7", k=1, mode="bm25")[0].source == "ferry.md"
        kb.search("ferry", k=1, mode="bm25")  # a later call, after the previous corpus is gone
        sizes.append(log.stat().st_size)
    # held from its first commit, the log grew by about a change's frames each time (12 changes: 13x)
    assert sizes[-1] < 2 * sizes[1], sizes


def test_a_reload_copies_the_postings_log_in_its_own_thread_and_a_poll_meanwhile_does_not_wait_for_it(
        world, monkeypatch):
    """Copied by the next search's poll, the log took that search 0.69 s at a million chunks."""
    kb, root = world
    kb.search("ferry", k=1)  # loaded: a server answering
    copied_by = []
    checkpoint = Postings.checkpoint
    monkeypatch.setattr(Postings, "checkpoint", lambda postings, wait=True: copied_by.append(
        (threading.current_thread().name, wait)) or checkpoint(postings, wait))
    (root / "ferry.md").write_text("# Ferry\n\nThe ferry to Saltreach was raised by Ondra.\n", encoding="utf-8")
    reopened(kb).ingest([str(root)])
    assert kb.search("Ondra", k=1, mode="bm25")[0].source == "ferry.md"
    for thread in threading.enumerate():
        if thread.name == "kb-reload":
            thread.join()
    assert copied_by == [("kb-reload", True)]

    postings = Postings(index_path(kb.store))
    snapshot = postings.snapshot()
    holding, release = threading.Event(), threading.Event()

    def write_meanwhile():  # another thread writing or copying the log
        with postings._lock:
            holding.set()
            release.wait(5)

    writer = threading.Thread(target=write_meanwhile)
    writer.start()
    holding.wait()
    snapshot.settle()
    settled_meanwhile = snapshot._settled
    release.set()
    writer.join()
    assert not settled_meanwhile
    snapshot.settle()
    assert snapshot._settled
