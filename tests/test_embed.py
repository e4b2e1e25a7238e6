"""The embedding function: a loc table's repeated strings are embedded once, in bounded batches."""

from __future__ import annotations

import numpy as np

from kb.store import embed
from kb.store.embed import EMBED_BATCH, LoreEmbedding
from tests.fake_embedder import HashedWords


class Counting(HashedWords):
    """The fake model, remembering how many texts each call was given."""

    calls: list[int] = []

    def passages(self, texts):
        Counting.calls.append(len(texts))
        return super().passages(texts)


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
