"""`kb compact`: the vector index rebuilt without replaced vectors, answers unchanged, writes after it, a kill."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chromadb.api.shared_system_client import SharedSystemClient

from kb import KnowledgeBase, Settings
from kb.errors import KBError, StoreLocked
from kb.store import Store, embed, write_lock
from kb.store import compact as compact_module
from kb.store.compact import STAGING, saved_vectors, vector_index_dir
from tests.conftest import ROOT, invoke, invoke_json
from tests.fake_embedder import NAME, HashedWords

ROWS = 600  # two languages a row: 1,200 chunks


def write_table(folder: Path, draft: int) -> None:
    """A loc table whose every tenth row says which draft it is: each draft is a new file version, all its chunks
    new ids, the old ones' vectors left in the index."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"ui.line_{i},Line {i} of the harbour{' draft %d' % draft if i % 10 == 0 else ''},Ligne {i} du port\n"
            for i in range(ROWS)]
    (folder / "strings.csv").write_text("key,en,fr\n" + "".join(rows), encoding="utf-8")


@pytest.fixture(scope="module")
def _edited(tmp_path_factory) -> Path:
    """A store whose loc table was written three times, built once per module: 1,200 live chunks, 2,400 replaced."""
    root = tmp_path_factory.mktemp("edited")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(embed.MODELS, NAME, HashedWords)
        kb = KnowledgeBase.open(root / "kb", Settings(kb_dir=root / "kb", embed_model=NAME))
        for draft in range(3):
            write_table(root / "loc", draft)
            kb.ingest([str(root / "loc")])
    SharedSystemClient.clear_system_cache()
    return root / "kb"


@pytest.fixture
def edited(_edited, tmp_path, fake_embedder) -> Settings:
    """A copy of that store for this test alone."""
    shutil.copytree(_edited, tmp_path / "kb")
    return Settings(kb_dir=tmp_path / "kb", embed_model=fake_embedder)


def fresh_store(settings: Settings) -> Store:
    """The store as it is on disk now: chromadb keeps a loaded vector index per process and directory."""
    SharedSystemClient.clear_system_cache()
    return Store(settings.kb_dir, model=settings.embed_model)


def vectors_by_id(store: Store) -> dict[str, np.ndarray]:
    """Every chunk's vector as the index holds it, by chunk id: chromadb reads it by the label its id maps to."""
    return {chunk: np.asarray(vector) for chunk, vector in store.vectors(store.canon.get(include=[])["ids"])}


def assert_same_vectors(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert found.keys() == expected.keys()
    for chunk, vector in expected.items():
        assert np.allclose(found[chunk], vector, atol=1e-6), chunk


def recall_at_5(store: Store, vectors: dict[str, np.ndarray]) -> float:
    """For every tenth chunk as a query, the share of the index's five nearest that are truly among the five
    nearest (by distance: many rows share their words, so their vectors tie)."""
    ids = sorted(vectors)
    matrix = np.array([vectors[chunk] / np.linalg.norm(vectors[chunk]) for chunk in ids])
    found = 0
    for chunk in ids[::10]:
        fifth = np.sort(1 - matrix @ matrix[ids.index(chunk)])[4]
        found += sum(distance <= fifth + 1e-5 for _, distance in store.nearest(vectors[chunk].tolist(), 5))
    return found / (5 * len(ids[::10]))


def test_compact_drops_the_replaced_vectors_and_answers_as_before(edited):
    before = vectors_by_id(fresh_store(edited))
    assert invoke_json("status", "--kb", edited.kb_dir)[1]["replaced_vectors"] == 2 * 2 * ROWS

    result, done = invoke_json("compact", "--kb", edited.kb_dir)

    assert result.exit_code == 0, result.output
    assert done == {"vectors_before": 6 * ROWS, "vectors_after": 2 * ROWS, "dropped": 4 * ROWS}
    assert saved_vectors(edited.kb_dir) == 2 * ROWS
    assert invoke_json("status", "--kb", edited.kb_dir)[1]["replaced_vectors"] == 0
    store = fresh_store(edited)
    assert_same_vectors(vectors_by_id(store), before)  # each id still maps to its own vector
    assert recall_at_5(store, before) >= 0.95  # a graph as good: HNSW is approximate, its build threaded
    assert list(vector_index_dir(edited.kb_dir).parent.glob(f"*{STAGING}")) == []
    assert invoke("compact", "--kb", edited.kb_dir).output == (
        f"vector index: {2 * ROWS:,} -> {2 * ROWS:,} vectors (0 dropped)\n")


def test_writes_after_a_compaction_land_beside_the_rebuilt_vectors(edited, tmp_path):
    KnowledgeBase.open(edited.kb_dir, edited).compact()
    more = tmp_path / "more" / "more.csv"
    more.parent.mkdir()
    for line in ("The gulls of the first draft", "The gulls of draft four"):
        more.write_text(f"key,en\nui.gull,{line}\n", encoding="utf-8")
        KnowledgeBase.open(edited.kb_dir, edited).ingest([str(more.parent)])

    store = fresh_store(edited)  # a label given twice would have replaced a vector, not added one
    assert store.count() == 2 * ROWS + 1 and saved_vectors(edited.kb_dir) == 2 * ROWS + 2
    assert recall_at_5(store, vectors_by_id(store)) >= 0.95
    hits = KnowledgeBase.open(edited.kb_dir, edited).search("gulls draft four", k=1, mode="dense")
    assert hits[0].metadata["key"] == "ui.gull"


def test_a_compaction_killed_part_way_leaves_the_store_as_it_was_and_the_next_one_finishes(edited):
    before = vectors_by_id(fresh_store(edited))
    killed = subprocess.run(
        [sys.executable, "-c", "import os, sys\nfrom pathlib import Path\nfrom kb.store import compact\n"
         "compact.BATCH = 500\n"
         "compact.compact(Path(sys.argv[1]), on_progress=lambda read, total: read >= 1000 and os._exit(9))",
         str(edited.kb_dir)], cwd=ROOT, capture_output=True, text=True)

    assert killed.returncode == 9, killed.stderr
    index = vector_index_dir(edited.kb_dir)
    assert (index.parent / (index.name + STAGING)).is_dir()  # killed while building the new index
    assert saved_vectors(edited.kb_dir) == 6 * ROWS
    assert_same_vectors(vectors_by_id(fresh_store(edited)), before)
    assert KnowledgeBase.open(edited.kb_dir, edited).compact().after == 2 * ROWS
    assert not (index.parent / (index.name + STAGING)).exists()


def test_a_swap_that_fails_leaves_the_store_as_it_was(edited, monkeypatch):
    def refuse(a, b):
        raise KBError(f"{b}: cannot swap in the compacted index (Invalid argument); the store is unchanged")

    monkeypatch.setattr(compact_module, "_exchange", refuse)
    result = invoke("compact", "--kb", edited.kb_dir)

    assert result.exit_code == 1
    assert result.stderr.strip().endswith("cannot swap in the compacted index (Invalid argument); the store is unchanged")
    assert saved_vectors(edited.kb_dir) == 6 * ROWS
    index = vector_index_dir(edited.kb_dir)
    assert not (index.parent / (index.name + STAGING)).exists()
    assert fresh_store(edited).count() == 2 * ROWS


def test_unreadable_id_maps_are_named_in_one_line_and_nothing_is_rebuilt(edited):
    ids = vector_index_dir(edited.kb_dir) / "index_metadata.pickle"
    ids.write_bytes(b"not a pickle")

    result = invoke("compact", "--kb", edited.kb_dir)

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {ids}: cannot read chromadb's id maps (UnpicklingError: invalid load key, 'n'.); "
        "the store is unchanged"]
    assert saved_vectors(edited.kb_dir) == 6 * ROWS
    assert not ids.parent.with_name(ids.parent.name + STAGING).exists()


def test_ingest_and_status_suggest_compacting_once_replaced_vectors_cost_enough(tmp_path, fake_embedder, monkeypatch):
    monkeypatch.setattr(compact_module, "SUGGEST_AT_LEAST", 2 * ROWS)
    monkeypatch.setattr(compact_module, "SUGGEST_AT_SHARE", 1.5)
    kb_dir = tmp_path / "kb"
    lines = []
    for draft in range(3):
        write_table(tmp_path / "loc", draft)
        result = invoke("ingest", tmp_path / "loc", "--kb", kb_dir, "--embed-model", fake_embedder)
        lines.append([line for line in result.stderr.splitlines() if "kb compact" in line])
    assert lines[:2] == [[], []]  # 1,200 replaced: under 1.5 times the live chunks
    warning = ("the vector index holds 2,400 vectors of replaced chunks beside 1,200 live ones, kept in memory by "
               "every process that loads it; `kb compact` drops them")
    assert lines[2] == [f"warning: {kb_dir}: {warning}"]
    _, status = invoke_json("status", "--kb", kb_dir)  # where a user looks, between ingests
    assert status["replaced_vectors"] == 2_400 and status["warnings"] == [{"path": str(kb_dir), "warning": warning}]
    invoke("compact", "--kb", kb_dir)
    assert invoke_json("status", "--kb", kb_dir)[1]["warnings"] == []


def test_compact_refuses_while_another_process_writes_and_on_a_chroma_server(edited):
    with write_lock(edited.kb_dir), pytest.raises(StoreLocked):
        KnowledgeBase.open(edited.kb_dir, edited).compact()
    with pytest.raises(KBError, match="rebuilds a local store's vector index; a Chroma server keeps its own"):
        KnowledgeBase.open(settings=Settings(chroma_url="http://127.0.0.1:9")).compact()
    result = invoke("compact", "--kb", edited.kb_dir.parent / "nowhere")
    assert result.exit_code != 0 and "no knowledge base at" in result.stderr
