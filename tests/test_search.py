"""`kb search` on the sample world: the JSON contract, the three modes, --where filters and -k."""

from __future__ import annotations

import re
from pathlib import Path, PurePath

import pytest

from kb.retrieve import fuse
from kb.store import Store
from tests.conftest import CORPORA_PATHS, invoke, invoke_json

CAPITAL = "What is the capital of the Corrandine Shallows?"


def search(kb_dir, query, *args):
    result, data = invoke_json("search", query, "--kb", kb_dir, *args)
    assert result.exit_code == 0, result.output
    assert set(data) == {"query", "results"}
    assert data["query"] == query
    return data["results"]


def test_search_json_contract(corpora_kb):
    results = search(corpora_kb, CAPITAL)
    assert len(results) == 5  # the default k
    ids, texts, metas = Store(corpora_kb).all_chunks()
    stored = dict(zip(ids, zip(texts, metas)))
    for hit in results:
        assert set(hit) == {"id", "text", "score", "source", "metadata"}
        assert isinstance(hit["score"], float)
        assert isinstance(hit["text"], str) and hit["text"]
        assert hit["id"] in stored
        assert (hit["text"], hit["metadata"]) == stored[hit["id"]]
        assert hit["source"] == hit["metadata"]["source"]
        for key in ("lang", "chunk_index", "hash", "ingested_at"):
            assert key in hit["metadata"]
        assert {"title", "scene", "node", "knot"} & set(hit["metadata"])  # where it came from
    assert len({hit["id"] for hit in results}) == 5


def name(hit: dict) -> str:
    """The file name of a hit's source (the fixture may name corpora/ or its subfolders)."""
    return PurePath(hit["source"]).name


def test_sources_are_relative_to_each_named_folder(corpora_kb):
    sources = {meta["source"] for meta in Store(corpora_kb).all_chunks()[2]}
    assert len(sources) > 20
    for source in sources:
        assert not PurePath(source).is_absolute()
        assert sum((Path(folder) / source).is_file() for folder in CORPORA_PATHS) == 1, source
    assert any(PurePath(s).parts[-2:] == ("zh", "zh-overview.md") for s in sources)


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_every_mode_ranks_the_overview_first_for_the_capital(corpora_kb, mode):
    results = search(corpora_kb, CAPITAL, "--mode", mode)
    assert name(results[0]) == "corrandine-overview.md"
    assert results[0]["metadata"]["title"] == "The Corrandine Shallows > At a glance"
    assert "Greyhithe" in results[0]["text"]
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)


def test_bm25_finds_a_rare_name_and_scores_nothing_it_lacks(corpora_kb):
    results = search(corpora_kb, "Hallowmere", "--mode", "bm25", "-k", "50")
    assert results and all("hallowmere" in (h["text"] + h["metadata"].get("title", "")).lower()
                           for h in results)
    assert "history-of-the-tidecount.md" in {name(h) for h in results}
    assert all(h["score"] > 0 for h in results)
    assert search(corpora_kb, "xylophone quasar", "--mode", "bm25") == []


def test_dense_mode_crosses_languages(corpora_kb):
    results = search(corpora_kb, "潮汐节在哪一个月开始？", "--mode", "dense", "-k", "10")
    assert len(results) == 10
    assert any(name(h).startswith("zh-") for h in results[:3])
    assert all(-1.0 <= h["score"] <= 1.0 for h in results)


@pytest.mark.parametrize("k", ["1", "3", "12"])
def test_k_sets_the_number_of_results(corpora_kb, k):
    assert len(search(corpora_kb, "tideglass kilns", "-k", k)) == int(k)


def test_k_outside_its_range_is_a_usage_error(corpora_kb):
    assert invoke("search", "tideglass", "-k", "0", "--kb", corpora_kb).exit_code == 2


def test_where_chapter_keeps_only_that_chapter_and_still_fills_k(corpora_kb):
    """Filters apply before ranking: k results from that chapter, not the top k then filtered."""
    for mode in ("hybrid", "dense"):
        results = search(corpora_kb, "Kessel Glass", "--where", "chapter=2", "-k", "6", "--mode", mode)
        assert len(results) == 6, mode
        assert all(hit["metadata"]["chapter"] == 2 for hit in results), mode
    lexical = search(corpora_kb, "Kessel Glass", "--where", "chapter=2", "-k", "50", "--mode", "bm25")
    assert lexical and all(hit["metadata"]["chapter"] == 2 for hit in lexical)
    assert all({"kessel", "glass"} & set(re.findall(r"[a-z]+", (hit["text"] + " " + hit["metadata"].get("title", "")).lower()))
               for hit in lexical)


def test_where_speaker_matches_inside_a_list(corpora_kb):
    results = search(corpora_kb, "glass", "--where", "speaker=Dace", "-k", "10")
    assert [name(h) for h in results] == ["smuggler-talk.json"]
    assert isinstance(results[0]["metadata"]["speaker"], list)
    assert "Dace" in results[0]["metadata"]["speaker"]
    wren = search(corpora_kb, "lighthouse", "--where", "speaker=Wren", "-k", "20", "--mode", "dense")
    spoken_by_wren = [m for m in Store(corpora_kb).all_chunks()[2] if "Wren" in m.get("speaker", [])]
    assert len(wren) == len(spoken_by_wren) > 0  # every chunk in which Wren speaks, and no other
    assert all("Wren" in h["metadata"]["speaker"] for h in wren)


def test_several_where_filters_must_all_hold(corpora_kb):
    results = search(corpora_kb, "glass", "--where", "speaker=Wren", "--where", "region=Mirewood", "-k", "20")
    assert results
    for hit in results:
        assert "Wren" in hit["metadata"]["speaker"] and hit["metadata"]["region"] == "Mirewood"
    assert search(corpora_kb, "glass", "--where", "chapter=99") == []
    assert search(corpora_kb, "glass", "--where", "no_such_key=1") == []


def test_a_where_without_an_equals_sign_is_a_usage_error(corpora_kb):
    result = invoke("search", "glass", "--where", "chapter", "--kb", corpora_kb)
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.stderr


def test_search_prints_sources_and_text_without_json(corpora_kb):
    result = invoke("search", CAPITAL, "-k", "2", "--kb", corpora_kb)
    assert result.exit_code == 0
    first = result.stdout.splitlines()[0]
    assert first.startswith("1. ") and "corrandine-overview.md" in first
    assert "Greyhithe" in result.stdout
    assert "3." not in result.stdout


def test_chinese_question_words_do_not_outrank_the_name_asked_about(kb_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "chatter.txt").write_text("这是什么？那是什么？你在说什么？为什么？\n", encoding="utf-8")
    (docs / "banjie.txt").write_text("班杰出生于海港，后来成为演员。\n", encoding="utf-8")
    (docs / "harbour.txt").write_text("海港是一座城市。\n", encoding="utf-8")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    for mode in ("bm25", "hybrid"):
        results = search(kb_dir, "班杰是什么？", "--mode", mode)
        assert name(results[0]) == "banjie.txt", mode
    assert [name(h) for h in search(kb_dir, "班杰是什么？", "--mode", "bm25")] == ["banjie.txt"]



def test_fusion_keeps_the_weakest_word_match_above_chunks_without_the_words():
    bm25 = [(0, 4.0), (1, 1.0)]  # chunk 1 is the weakest BM25 match
    dense = [(2, 0.6), (0, 0.5), (1, 0.2)]  # chunk 2 has none of the words but the best cosine
    lengths = [100, 100, 100]
    for weight in (0.0, 0.1):
        ranked = [pos for pos, _ in fuse(bm25, dense, weight, cross_lingual=set(), lengths=lengths)]
        assert ranked == [0, 1, 2], weight


def test_a_question_s_word_pair_outranks_the_same_words_apart(kb_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "phrase.txt").write_text("By the fire sat the old woman, mending nets.\n")
    (docs / "apart.txt").write_text("The woman said her house was old. Her neighbour, also a woman, "
                                    "thought the fence was old too.\n")
    (docs / "other.txt").write_text("Boats came home at dusk.\n")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0
    for mode in ("bm25", "hybrid"):
        assert name(search(kb_dir, "Who was the old woman?", "--mode", mode)[0]) == "phrase.txt", mode


def test_a_small_filtered_set_ranks_its_vectors_as_chromadb_does_and_follows_a_reingest(corpora_kb, monkeypatch):
    """Filtered dense search ranks the set's vectors in memory from its second search on (no chromadb
    query); same order as chromadb's."""
    from kb import KnowledgeBase

    kb = KnowledgeBase.open(corpora_kb)
    queries = ["Who keeps the lighthouse?", "Kessel Glass smuggling", "潮汐玻璃"]
    monkeypatch.setattr("kb.retrieve.EXACT_MAX_CHUNKS", 0)  # chromadb ranks every filtered set
    by_chromadb = [[h.id for h in kb.search(q, k=8, mode="dense", where={"chapter": 2})] for q in queries]
    monkeypatch.undo()
    kb.search("anything", mode="dense", where={"chapter": 2})  # the set's first search: chromadb still
    monkeypatch.setattr(kb.store.canon, "query", _refuse)
    assert [[h.id for h in kb.search(q, k=8, mode="dense", where={"chapter": 2})] for q in queries] == by_chromadb
    with pytest.raises(AssertionError, match="sent to chromadb"):  # a set searched for the first time
        kb.search(queries[0], k=8, mode="dense", where={"chapter": 1})
    monkeypatch.undo()

    Path(corpora_kb.parent / "new").mkdir()
    (corpora_kb.parent / "new" / "keeper.md").write_text(
        "---\nchapter: 2\n---\n# The new keeper\n\nThe lighthouse keeper now is Ilse Marrow.\n", encoding="utf-8")
    kb.ingest([str(corpora_kb.parent / "new")])
    hits = kb.search("Who keeps the lighthouse now?", k=3, mode="dense", where={"chapter": 2})
    assert any("Ilse Marrow" in h.text for h in hits)


def _refuse(*args, **kwargs):
    raise AssertionError("a small filtered set was sent to chromadb's query")


def test_hits_read_again_come_from_memory_with_the_same_text_and_metadata(corpora_kb, monkeypatch):
    """A corpus keeps the chunks it read last: a server's repeated hits skip SQLite and the JSON decode."""
    from kb import KnowledgeBase

    kb = KnowledgeBase.open(corpora_kb)
    first = kb.search("Who keeps the Orrin Light?", k=8)
    monkeypatch.setattr(kb.corpus._snapshot, "at", _refuse_read)
    again = kb.search("Who keeps the Orrin Light?", k=8)
    assert [(h.id, h.text, h.metadata) for h in again] == [(h.id, h.text, h.metadata) for h in first]
    again[0].metadata["source"] = "changed by one caller"
    assert kb.search("Who keeps the Orrin Light?", k=8)[0].metadata == first[0].metadata  # not by the next


def test_a_large_store_ranks_dense_in_a_thread_beside_bm25_and_fuses_the_same(corpora_kb, monkeypatch):
    import threading

    from kb import KnowledgeBase, retrieve

    kb = KnowledgeBase.open(corpora_kb)
    questions = [CAPITAL, "Who keeps the Orrin Light?", "Kessel Glass", "潮汐"]
    in_turn = [kb.search(q, k=8) for q in questions]
    ranked_in = {"dense": [], "bm25": []}
    dense_ranking, bm25_ranking = retrieve.dense_ranking, retrieve.Corpus.bm25_ranking

    def dense(*args):
        ranked_in["dense"].append(threading.current_thread().name)
        return dense_ranking(*args)

    def bm25(*args):
        ranked_in["bm25"].append(threading.current_thread().name)
        return bm25_ranking(*args)

    monkeypatch.setattr(retrieve, "dense_ranking", dense)
    monkeypatch.setattr(retrieve.Corpus, "bm25_ranking", bm25)
    monkeypatch.setattr(retrieve, "BESIDE_MIN_CHUNKS", 0)
    assert [kb.search(q, k=8) for q in questions] == in_turn
    assert len(ranked_in["dense"]) == 4 and all(name.startswith("kb-dense") for name in ranked_in["dense"])
    assert ranked_in["bm25"] == [threading.current_thread().name] * 4


def _refuse_read(*args, **kwargs):
    raise AssertionError("a chunk read before was read from disk again")


def test_recent_reads_only_what_it_does_not_keep_and_lets_the_oldest_go_by_weight():
    from kb.recent import Recent

    asked = []

    def read(keys):
        asked.append(keys)
        return {key: "x" * key for key in keys}

    kept = Recent(limit=5, weight=len)
    assert kept.get([1, 2], read) == {1: "x", 2: "xx"}
    assert kept.get([2, 3], read) == {2: "xx", 3: "xxx"}  # 1 + 2 + 3 > 5: 1 goes, the least recently used
    assert kept.get([1, 2, 3], read) == {1: "x", 2: "xx", 3: "xxx"}
    assert asked == [[1, 2], [3], [1]]


def test_a_filtered_set_whose_vectors_the_store_cannot_all_give_is_left_to_chromadb(corpora_kb, monkeypatch):
    """A chunk renamed beside a loaded index (kb/catch_up.py) has no vector to read: chromadb ranks the set."""
    from kb import KnowledgeBase

    kb = KnowledgeBase.open(corpora_kb)
    first = kb.search("glass", mode="dense", where={"chapter": 2})  # the set's first search: chromadb's
    asked = []
    monkeypatch.setattr(kb.store, "vectors", lambda ids: asked.append(ids) or [])
    assert first and kb.search("glass", mode="dense", where={"chapter": 2}) == first
    assert kb.search("glass", mode="dense", where={"chapter": 2}) == first
    assert len(asked) == 1  # asked once per corpus


@pytest.mark.parametrize("seed", range(20))
def test_the_best_bm25_scores_are_those_a_full_sort_gives_ties_by_position(seed):
    """Selection starts from the chunks of the rarest terms; any such start must give the full sort's top."""
    import numpy as np

    from kb.retrieve import Weighed, _best

    def held_by(docs: np.ndarray, per_chunk: bool) -> Weighed:
        """A term held by these chunks, kept either way (Field.weighed)."""
        if not per_chunk:
            return Weighed(len(docs), docs, np.ones(len(docs), dtype=np.float32))
        scores = np.zeros(5_000, dtype=np.float32)
        scores[docs] = 1.0
        return Weighed(len(docs), None, scores)

    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(5_000) * 4, 1).astype(np.float32)  # few distinct values: many ties
    scores[rng.random(5_000) < 0.5] = 0.0
    limit = int(rng.integers(1, 60))
    expected = sorted((i for i in range(5_000) if scores[i] > 0), key=lambda i: (-scores[i], i))[:limit]
    seeds = [rng.choice(5_000, int(rng.integers(0, 80)), replace=False) for _ in range(int(rng.integers(0, 4)))]
    if seed % 2:  # the best chunks themselves: the bound is then the limit-th best score, tied with others
        seeds.insert(0, np.array(expected))
    held = [held_by(docs, per_chunk=bool((seed // 2 + i) % 2)) for i, docs in enumerate(seeds)]
    assert _best(scores, limit, held).tolist() == expected
