"""The BM25 postings on disk: data only, kept current file by file, rebuilt whenever unreadable."""

from __future__ import annotations

import pickle
import sqlite3
import threading
from pathlib import Path

import pytest

from ingest.discover import file_key
from kb import KnowledgeBase, Settings
from kb import postings as postings_module
from kb.postings import APPLICATION_ID, Postings, index_path
from kb.retrieve import Corpus
from kb.store import FileRecord, Store
from tests.conftest import invoke_json
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


def test_a_server_sees_another_writers_change_on_its_next_search(world, tmp_path):
    kb, root = world
    writer = reopened(kb)
    (root / "ferry.md").write_text("# Ferry\n\nThe ferry to Saltreach was raised by Ondra.\n", encoding="utf-8")
    writer.ingest([str(root)])
    assert kb.search("Ondra", k=1, mode="bm25")[0].source == "ferry.md"


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
        db.execute("UPDATE files SET terms = x'0102', metas = 'not json'")
    assert reopened(kb).search("Saltreach ferry", k=1, mode="bm25")[0].source == "ferry.md"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 4")
    assert reopened(kb).search("Saltreach ferry", k=1, mode="bm25")[0].source == "ferry.md"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA user_version").fetchone()[0] > 4


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
    """The old indexes were bm25s; its scores (and so every rank) are kept to the last bit, built or updated."""
    import bm25s
    import numpy as np

    from kb.lexical import tokens_and_pairs
    from kb.retrieve import Field

    texts = ["The old woman fed the herons.", "Herons, herons and more herons by the old mill.",
             "旧港的灯塔在风暴中熄灭了", "", "The mill woman sold flour to the old woman of the fens.",
             "An old woman and an old mill: herons everywhere.", "港的灯塔"]
    counted = [tokens_and_pairs(text) for text in texts]
    postings = Postings(None)
    with postings.db:
        ids = postings._term_ids({t for terms, pairs in counted for t in terms + pairs})

    def rows(docs, first=0):
        return np.array([(first + n, ids[t], doc.count(t)) for n, doc in enumerate(docs) for t in dict.fromkeys(doc)],
                        dtype=np.int32).reshape(-1, 3)

    compared = 0
    for field in (0, 1):
        docs = [tokens[field] for tokens in counted]
        built = Field.build([rows(docs[:3]), rows(docs[3:], first=3)], np.array([len(d) for d in docs]))
        keep = np.array([True, False, True, True, True])  # the first five, less the second, plus the last two
        first = Field.build([rows(docs[:5])], np.array([len(d) for d in docs[:5]]))
        updated = first.updated(keep, np.cumsum(keep) - 1, rows(docs[5:], first=4),
                                np.array([len(d) for d in docs[5:]]))
        for mine, theirs in ((built, docs), (updated, [docs[0], *docs[2:]])):
            reference = bm25s.BM25()
            reference.index(theirs, show_progress=False)
            for query in (["heron"], ["old", "woman", "old"], ["港的", "heron"], ["old_woman"], ["mill_woman"]):
                query = [t for t in query if t in reference.vocab_dict]
                if query:
                    assert np.array_equal(mine.scores([ids[t] for t in query]), reference.get_scores(query))
                    compared += 1
    assert compared == 10


def test_stopwords_are_spacys_without_importing_spacy():
    from spacy.lang.en.stop_words import STOP_WORDS
    from spacy.lang.zh.stop_words import STOP_WORDS as ZH_STOP_WORDS

    from kb.lexical import spacy_stop_words

    assert spacy_stop_words("en") == frozenset(STOP_WORDS)
    assert spacy_stop_words("zh") == frozenset(ZH_STOP_WORDS)


def test_a_server_reloads_only_the_changed_files_and_ranks_as_a_fresh_process(world, monkeypatch):
    from kb.retrieve import Corpus

    kb, root = world
    kb.search("herons")  # the server has its corpus
    (root / "kilns.md").write_text("# Kilns\n\nThe old kiln woman fires Glimmerware for the heron keeper.\n",
                                   encoding="utf-8")
    (root / "herons.md").unlink()
    (root / "mill.md").write_text("# Mill\n\nThe old woman of the mill grinds flour for the ferry.\n",
                                  encoding="utf-8")
    reopened(kb).ingest([str(root)])

    def no_full_read(*args):
        raise AssertionError("read every file again")

    with monkeypatch.context() as patch:
        patch.setattr(Corpus, "read", no_full_read)
        served = kb.corpus
    fresh = reopened(kb).corpus
    assert served.ids == fresh.ids and served.texts == fresh.texts and served.files == fresh.files
    for query in ("old woman", "heron kiln Glimmerware", "ferry flour mill", "Saltreach"):
        assert ([(h.id, h.score) for h in kb.search(query, k=5, mode="bm25")]
                == [(h.id, h.score) for h in reopened(kb).search(query, k=5, mode="bm25")])
    assert served.idf("woman") == fresh.idf("woman")


def test_a_term_lookup_does_not_wait_for_a_reload_writing(world):
    kb, _ = world
    postings = Postings(index_path(kb.store))
    known = postings.lookup(["ferri", "saltreach"])
    found = []
    with postings._lock, postings.db:  # a reload mid-write: its lock held, its transaction open
        postings.db.execute("INSERT INTO vocabulary (term) VALUES ('zzunpublished')")
        lookup = threading.Thread(target=lambda: found.append(postings.lookup(["ferri", "zzunpublished"])))
        lookup.start()
        lookup.join(timeout=30)
        answered_while_writing = not lookup.is_alive()
    lookup.join()
    assert answered_while_writing
    assert found == [{"ferri": known["ferri"]}]  # the last commit: the write in progress is not seen


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


def test_a_first_build_writes_files_while_it_still_scans_the_store(tmp_path, fake_embedder, monkeypatch):
    """The scan hands each file on once its chunks are seen, so a first build never holds the whole canon."""
    store = many_files_store(tmp_path, fake_embedder, files=8)
    monkeypatch.setattr(postings_module, "FULL_SCAN_FILES", 4)  # more changed than this: one scan of the store
    scanned, scanned_at_write = [], []
    scan = store.scan_chunks

    def counted_scan(batch=5000):
        for row in scan(batch=4):
            scanned.append(row)
            yield row

    monkeypatch.setattr(store, "scan_chunks", counted_scan)
    monkeypatch.setattr(postings_module, "WRITE_BATCH_CHUNKS", 3)
    write = Postings._write
    monkeypatch.setattr(Postings, "_write", lambda self, batch: (scanned_at_write.append(len(scanned)),
                                                                 write(self, batch)))
    built = Postings(None)
    assert built.update(store) == 8
    assert len(scanned) == 24 and scanned_at_write[0] < 8

    monkeypatch.setattr(postings_module, "FULL_SCAN_FILES", 1000)  # the same files read one at a time
    one_by_one = Postings(None)
    one_by_one.update(store)
    for loaded in (built.load(), one_by_one.load()):
        assert loaded.ids == [cid for cid, _, _ in scanned] and loaded.texts == [text for _, text, _ in scanned]
    assert built.listing() == one_by_one.listing()


def test_a_loaded_files_chunks_share_their_equal_metadata_strings(tmp_path, fake_embedder):
    store = many_files_store(tmp_path, fake_embedder, files=2)
    corpus = Corpus.load(store, Postings(None))
    first, second, other = corpus.metas[0], corpus.metas[1], corpus.metas[3]
    assert first["source"] is second["source"] and first["title"] is second["title"]
    assert first["source"] != other["source"]
    assert corpus.metas == store.all_chunks()[2]


def test_a_field_works_its_counts_back_exactly_from_what_it_keeps():
    """A field keeps no counts: an update works them back, and ranks as a field built afresh, to the bit."""
    import numpy as np

    from kb.retrieve import Field

    rng = np.random.default_rng(5)
    chunk_terms = np.sort(rng.choice(400 * 50, 3000, replace=False))  # distinct (chunk, term), in chunk order
    counts = rng.integers(1, 4, len(chunk_terms))
    counts[:6] = [1, 2, 7, 300, 5000, 65537]
    rows = np.stack([chunk_terms // 50, chunk_terms % 50, counts], axis=1).astype(np.int32)
    lengths = np.bincount(rows[:, 0], weights=rows[:, 2], minlength=400).astype(np.int64) + 1
    field = Field.build([rows.copy()], lengths)
    grouped = rows[np.lexsort((rows[:, 0], rows[:, 1]))]
    assert np.array_equal(field.counts(), grouped[:, 2].astype(np.float32))

    keep = np.arange(400) % 3 != 0
    updated = field.updated(keep, np.cumsum(keep) - 1, np.zeros((0, 3), dtype=np.int32), np.zeros(0))
    kept = rows[keep[rows[:, 0]]].copy()
    kept[:, 0] = (np.cumsum(keep) - 1)[kept[:, 0]]
    afresh = Field.build([kept], lengths[keep])
    for term in range(50):
        assert np.array_equal(updated.scores([term]), afresh.scores([term]))
