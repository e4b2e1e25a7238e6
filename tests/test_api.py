"""The front door on a small world each test writes, embedded by the deterministic fake model."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path

import pytest

import kb as public
import kb.api as api
import kb.catch_up
from ingest.tokens import count_tokens
from kb import ConfigError, KnowledgeBase, NotFound, RetrievalConfig, Settings, Unavailable
from kb.context import FENCE_TOKENS, pack
from kb.retrieve import Hit, fuse
from kb.store import written
from tests.conftest import invoke

WORLD = {
    "herons.md": "# Herons\n\nThe old woman of the fens feeds the grey herons at dawn.\n",
    "kilns.md": "# Kilns\n\nThe woman who tends the kilns is old and sat by the fire.\n",
    "ferry.md": "---\nchapter: 3\n---\n# Ferry\n\nThe ferry to Saltreach sank in the storm of 412.\n",
    "npcs/pip.yaml": "name: Pip\nrole: ferry hand\npersona: cheerful\nspeaker: Pip\nknows:\n  chapter: 2\n",
}


def write_world(root: Path, files: dict[str, str] = WORLD) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def another_handle_ingests(kb: KnowledgeBase, folder: Path, word: str = "Glimmerware") -> None:
    """A kilns.md naming ``word`` ingested through a second handle on ``kb``'s store: a write ``kb`` did not make."""
    write_world(folder, {"kilns.md": f"# Kilns\n\nThe kiln keeper fires {word} pots.\n"})
    KnowledgeBase.open(kb.settings.kb_dir, kb.settings).ingest([str(folder)])


@pytest.fixture
def world_kb(tmp_path, fake_embedder) -> KnowledgeBase:
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    report = kb.ingest([str(write_world(tmp_path / "world"))])
    assert report.failed == [] and len(report.added) == len(WORLD)
    return kb


def test_open_does_not_create_anything(tmp_path):
    kb = KnowledgeBase.open(tmp_path / "nowhere")
    with pytest.raises(Unavailable, match="no knowledge base"):
        kb.search("herons")
    assert not (tmp_path / "nowhere").exists()


def test_search_ranks_the_file_that_holds_the_rare_word(world_kb):
    for mode in ("bm25", "dense", "hybrid"):
        hits = world_kb.search("Saltreach ferry", k=2, mode=mode)
        assert hits and hits[0].source == "ferry.md", mode


def test_hits_carry_the_cosine_the_dense_ranking_saw(world_kb):
    """The relevance check reuses these instead of querying the store again, so they must be the store's."""
    hits = world_kb.search("Saltreach ferry", k=3, mode="hybrid")
    fresh = dict(world_kb.store.dense_query("Saltreach ferry", 3, [h.id for h in hits]))
    assert all(h.cosine == pytest.approx(1.0 - fresh[h.id], abs=1e-6) for h in hits)
    assert all(h.cosine is None for h in world_kb.search("Saltreach ferry", k=3, mode="bm25"))


def test_where_and_npc_limits_filter_before_ranking(world_kb):
    assert [h.source for h in world_kb.search("ferry storm", where={"chapter": 3})] == ["ferry.md"]
    assert "ferry.md" not in [h.source for h in world_kb.search("ferry storm", limits={"chapter": 2})]
    # the card's limit is the NPC's: Pip (chapter 2) never sees the chapter-3 ferry
    pip = world_kb.npc("pip")
    assert pip.name == "Pip"
    assert all(c.hit.source != "ferry.md" for c in pip.ask("What sank the ferry?", extractive=True).citations)


def test_an_unknown_npc_lists_the_known_ones(world_kb):
    with pytest.raises(NotFound, match="known NPCs: Pip"):
        world_kb.npc("Nessa")


def test_word_pairs_break_a_tie_only_when_their_weight_is_on(world_kb):
    question = "old woman"
    with_pairs = {h.source: h.score for h in world_kb.search(question, k=2, mode="bm25")}
    assert with_pairs["herons.md"] > with_pairs["kilns.md"]  # "old woman" in a row beats the words apart
    plain = world_kb.with_retrieval(replace(RetrievalConfig(), pair_weight=0.0))
    without = {h.source: h.score for h in plain.search(question, k=2, mode="bm25")}
    assert without["herons.md"] < with_pairs["herons.md"]
    assert world_kb.settings.retrieval.pair_weight == 0.5  # the view did not change the original


def test_fusion_gives_other_language_chunks_their_own_lane():
    bm25 = [(0, 4.0), (1, 2.0)]
    dense = [(2, 0.9), (0, 0.5), (1, 0.1)]
    config = RetrievalConfig(dense_weight={"en": 0.0, "zh": 0.1})
    ranked = dict(fuse(bm25, dense, 0.0, cross_lingual={2}, lengths=[40, 40, 40], config=config))
    assert ranked[0] == 1.0 and ranked[1] == 0.5
    assert ranked[2] == pytest.approx(config.cross_lingual_weight)  # its cosine is the best, min-max 1.0


def test_fusion_scales_down_short_chunks():
    ranked = dict(fuse([(0, 1.0), (1, 1.0)], [], 0.0, set(), lengths=[5, 40]))
    assert ranked[1] == 1.0 and ranked[0] == pytest.approx((5 / 20) ** 0.5)


def test_pack_keeps_rank_order_within_the_budget_and_always_the_first():
    long, short = "word " * 400, "a short line"
    hits = [Hit(str(i), text, 1.0 - i / 10, {"source": f"{i}.md"}) for i, text in enumerate([long, short, long])]
    packed = pack(hits, budget_tokens=count_tokens(long) + count_tokens(short) + 2 * FENCE_TOKENS)
    assert [c.hit.id for c in packed] == ["0", "1"] and [c.n for c in packed] == [1, 2]
    assert [c.hit.id for c in pack(hits[2:], budget_tokens=10)] == ["2"]


def test_ask_quotes_the_sentence_that_holds_the_answer(world_kb):
    answer = world_kb.ask("When did the ferry to Saltreach sink?", extractive=True)
    assert "412" in answer.answer and answer.mode == "extractive"
    assert answer.citations[0].hit.source == "ferry.md"


def test_status_counts_what_was_ingested_reading_the_file_records_once(world_kb, monkeypatch):
    reads, files = [], world_kb.store.files
    monkeypatch.setattr(world_kb.store, "files", lambda: (reads.append(1), files())[1])
    status = world_kb.status()
    assert reads == [1]  # 0.67 s each at a million chunks
    assert (status["files"], status["cards"]) == (3, 1)
    assert status["chunks"] == len(world_kb.corpus.ids) == 3


def test_a_reload_that_fails_keeps_answering_from_the_canon_loaded_before(world_kb, tmp_path, monkeypatch, caplog):
    """A server whose reload fails (a store caught mid-write) answers from what it had, then tries again."""
    from kb.retrieve import Corpus

    assert [h.source for h in world_kb.search("ferry", k=1, mode="bm25")] == ["ferry.md"]
    load = Corpus.load
    monkeypatch.setattr(Corpus, "load", classmethod(_torn))
    another_handle_ingests(world_kb, tmp_path / "more")
    assert [h.source for h in world_kb.search("ferry", k=1, mode="bm25")] == ["ferry.md"]
    assert world_kb.search("Glimmerware", mode="bm25") == []
    assert "loading the store's new state failed (OSError: torn file)" in caplog.text
    monkeypatch.setattr(Corpus, "load", load)
    monkeypatch.setattr(world_kb._shared, "retry_at", 0.0)  # RELOAD_RETRY_S is over
    assert [h.source for h in world_kb.search("Glimmerware", mode="bm25")] == ["kilns.md"]


def _torn(cls, *args):
    raise OSError("torn file")


def test_a_slow_reload_goes_on_behind_searches_that_answer_from_the_canon_before(world_kb, tmp_path, monkeypatch):
    """Opening a million-chunk store afresh takes seconds: a search waits RELOAD_WAIT_S for it, no longer."""
    from kb.retrieve import Corpus

    monkeypatch.setattr(api, "RELOAD_WAIT_S", 0.05)
    assert [h.source for h in world_kb.search("ferry", k=1, mode="bm25")] == ["ferry.md"]
    release, load = threading.Event(), Corpus.load
    monkeypatch.setattr(Corpus, "load", classmethod(lambda cls, *args: (release.wait(10), load(*args))[1]))
    another_handle_ingests(world_kb, tmp_path / "more")
    assert world_kb.search("Glimmerware", mode="bm25") == []  # the reload waits on ``release``
    reloading = world_kb._shared.reloading
    release.set()
    assert reloading is not None and reloading.wait(10)
    assert [h.source for h in world_kb.search("Glimmerware", mode="bm25")] == ["kilns.md"]


@pytest.fixture
def opened_afresh(monkeypatch):
    """Another handle's change is not kept beside the loaded vector index (kb/catch_up.py), so a reload opens the
    store afresh: nothing may be embedded here, and the writer keeps no vectors for it (kb/store/written.py)."""
    monkeypatch.setattr(kb.catch_up, "EMBED_CHARS_PER_CHUNK", 0)
    monkeypatch.setattr(written, "KEPT", 0)


def test_the_store_a_reload_replaced_is_freed_with_its_vector_index(world_kb, tmp_path, monkeypatch, opened_afresh):
    """chromadb's objects hold one another in cycles: each reload after another process's write kept a copy of
    the vector index (8.1 GB after three at a million chunks) until a full collection."""
    monkeypatch.setattr(api, "FREE_REPLACED_S", 0.3)  # once the reload's own frames have let it go
    world_kb.search("ferry", k=1)
    replaced = weakref.ref(world_kb.store.client._server)  # the API object that holds chromadb's native index
    another_handle_ingests(world_kb, tmp_path / "more")
    gc.disable()  # no collection but the one a reload asks for
    try:
        assert [h.source for h in world_kb.search("Glimmerware", k=1, mode="bm25")] == ["kilns.md"]
        deadline = time.monotonic() + 10
        while replaced() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gc.enable()
    assert replaced() is None


@pytest.mark.parametrize(("load_beside_max", "freed_first"), [(10**9, False), (0, True)])
def test_a_large_store_lets_the_replaced_vector_index_go_before_loading_the_new_one(
        world_kb, tmp_path, monkeypatch, opened_afresh, load_beside_max, freed_first):
    """Two copies of a million chunks' vector index peaked a server at 5.3 GB: above LOAD_BESIDE_MAX_CHUNKS a reload
    that opens the store afresh frees the index it replaces before it loads the new one."""
    from kb.store import Store

    monkeypatch.setattr(api, "LOAD_BESIDE_MAX_CHUNKS", load_beside_max)
    monkeypatch.setattr(api, "FREE_REPLACED_S", 60)  # no timer frees it within this test
    world_kb.search("ferry", k=1)
    replaced = weakref.ref(world_kb.store.client._server)
    freed_at_load, dense_query = [], Store.dense_query

    def spied(store, query, *args, **kwargs):
        if query == "load the vector index":
            freed_at_load.append(replaced() is None)
        return dense_query(store, query, *args, **kwargs)

    monkeypatch.setattr(Store, "dense_query", spied)
    another_handle_ingests(world_kb, tmp_path / "more")
    gc.disable()  # no collection but the one a reload does itself
    try:
        assert [h.source for h in world_kb.search("Glimmerware", k=1, mode="hybrid")] == ["kilns.md"]
    finally:
        gc.enable()
    assert freed_at_load == [freed_first]


@pytest.mark.parametrize("load_beside_max", [10**9, 0])
def test_a_reload_hands_the_replaced_vector_index_heap_back_once_it_is_freed(
        world_kb, tmp_path, monkeypatch, opened_afresh, load_beside_max):
    """glibc keeps freed heap for reuse: at a million prose chunks a server held 566 MB of the index a reload
    replaced until it was handed back, and peaked over 4 GB."""
    monkeypatch.setattr(api, "LOAD_BESIDE_MAX_CHUNKS", load_beside_max)
    monkeypatch.setattr(api, "FREE_REPLACED_S", 0.3)
    world_kb.search("ferry", k=1)
    replaced = weakref.ref(world_kb.store.client._server)
    freed_at_return = []
    monkeypatch.setattr(api, "return_freed_memory", lambda: freed_at_return.append(replaced() is None))
    another_handle_ingests(world_kb, tmp_path / "more")
    gc.disable()  # no collection but the ones a reload does itself
    try:
        assert [h.source for h in world_kb.search("Glimmerware", k=1, mode="hybrid")] == ["kilns.md"]
        deadline = time.monotonic() + 10
        while True not in freed_at_return and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gc.enable()
    assert True in freed_at_return


def test_searches_from_many_threads_go_on_through_reloads_that_let_the_vector_index_go(
        world_kb, tmp_path, monkeypatch, opened_afresh):
    """While a reload lets the replaced index go and loads the next, searches wait for it, and none fails."""
    monkeypatch.setattr(api, "LOAD_BESIDE_MAX_CHUNKS", 0)
    let_go, collect = [], api._collect_until_gone
    monkeypatch.setattr(api, "_collect_until_gone", lambda *args: (let_go.append(1), collect(*args)))
    world_kb.search("ferry", k=1)
    failures, stop = [], threading.Event()

    def ask():
        while not stop.is_set():
            try:
                for mode in ("hybrid", "dense", "bm25"):
                    assert world_kb.search("the old woman and the ferry", k=2, mode=mode)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                failures.append(exc)

    askers = [threading.Thread(target=ask) for _ in range(4)]
    for asker in askers:
        asker.start()
    try:
        for n in range(3):
            another_handle_ingests(world_kb, tmp_path / f"more{n}", f"Glimmerware{n}")
            deadline = time.monotonic() + 20
            while not world_kb.search(f"Glimmerware{n}", k=1, mode="bm25") and time.monotonic() < deadline:
                time.sleep(0.05)  # the reload goes on behind the searches
            assert [h.source for h in world_kb.search(f"Glimmerware{n} pots", k=1, mode="hybrid")] == ["kilns.md"]
    finally:
        stop.set()
        for asker in askers:
            asker.join(20)
    assert failures == [] and not any(asker.is_alive() for asker in askers)
    assert len(let_go) >= 3  # each change's reload let the index go before loading the next


def test_a_search_after_another_writer_filled_an_empty_store_uses_the_store_its_corpus_came_through(
        tmp_path, fake_embedder):
    """A chromadb client that queried an empty collection fails once another process has added to it; the search
    that noticed the change read the store before the reload replaced it, and failed with it."""
    kb = KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    assert kb.ingest([str(write_world(tmp_path / "empty", {"blank.md": "\n"}))]).chunks == 0
    assert kb.search("ferry", mode="dense") == []
    KnowledgeBase.open(kb.settings.kb_dir, kb.settings).ingest([str(write_world(tmp_path / "world"))])
    assert "ferry.md" in [h.source for h in kb.search("ferry to Saltreach", mode="dense")]


def test_forget_removes_a_file_and_the_corpus_follows(world_kb, tmp_path):
    world_kb.corpus  # noqa: B018 - loaded before, so forget must refresh it
    assert world_kb.forget([str(tmp_path / "world" / "ferry.md")]) == ["ferry.md"]
    assert "ferry.md" not in {m["source"] for m in world_kb.corpus.metas()}


def test_a_write_by_another_handle_of_this_process_is_seen_on_the_next_call(world_kb, tmp_path, monkeypatch):
    """The store's generation is polled, but a write made in this process needs no poll to be seen."""
    from kb import api

    monkeypatch.setattr(api, "GENERATION_POLL_S", 3600.0)  # no poll falls due during this test
    assert world_kb.search("Glimmerware", mode="bm25") == []
    another_handle_ingests(world_kb, tmp_path / "more")
    assert [h.source for h in world_kb.search("Glimmerware", mode="bm25")] == ["kilns.md"]


@pytest.mark.parametrize("value, message", [("abc", "is not a whole number"), ("0", "must be at least")])
def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch, value, message):
    monkeypatch.setenv("KB_CHUNK_TOKENS", value)
    with pytest.raises(ConfigError, match=f"KB_CHUNK_TOKENS={value!r}|KB_CHUNK_TOKENS={value}"):
        Settings()
    result = invoke("search", "herons")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: KB_CHUNK_TOKENS") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_exported_error_maps_to_an_exit_code_and_an_http_status():
    errors = [getattr(public, n) for n in public.__all__ if isinstance(getattr(public, n), type)
              and issubclass(getattr(public, n), public.KBError)]
    assert len(errors) > 5
    for error in errors:
        assert error.exit_code in (1, 2) and 400 <= error.http_status < 600
