"""Dense ranking of a small filtered set (an NPC's allowed canon, a --where) from its vectors in memory.

chromadb's query costs about 2 ms of CPU whatever the store's size (1.1 ms of
it in its Rust bindings, on a 133-chunk store), about a seventh of a game
server's CPU per NPC reply. A filter of at most EXACT_MAX_CHUNKS chunks used a
second time instead keeps its chunks' vectors, fetched once per loaded corpus, and
ranks them exactly by cosine (0.01 ms for 66 chunks). The fetch costs about
0.1 ms a vector (37 ms for 378), so a filter used once (a CLI --where) is left
to chromadb. Unfiltered searches keep chromadb's index: a second copy of every
vector would not fit a large store.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import numpy as np

from kb.store import Store

EXACT_MAX_CHUNKS = 2_048  # a filtered set this small is ranked here: 4 MB of 512-float vectors, ~0.2 s to fetch
VECTORS_PER_CORPUS = 65_536  # vectors kept per loaded corpus (128 MB at 512 floats); the oldest sets go first
SETS_PER_CORPUS = 256  # sets remembered per loaded corpus, searched once or kept

_kept: "weakref.WeakKeyDictionary[object, OrderedDict[bytes, tuple[np.ndarray, np.ndarray]]]" = \
    weakref.WeakKeyDictionary()
_lock = threading.Lock()
SEEN_ONCE = (np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32))  # a set searched once: no vectors yet
# a set some of whose vectors the store cannot give (a chunk renamed beside a loaded index, kb/catch_up.py)
LEFT_TO_CHROMA = (np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32))


def filtered_ranking(store: Store, corpus, positions: np.ndarray, query: str,
                     depth: int) -> list[tuple[int, float]] | None:
    """Chunk positions among ``positions`` by cosine similarity to the query, best first; None the first
    time this corpus is searched with this set (chromadb ranks it then)."""
    found = _vectors(store, corpus, positions)
    if found is None:
        return None
    kept, vectors = found
    query_vector = np.asarray(store.embedder.embed_query([query])[0], dtype=np.float32)
    cosines = vectors @ (query_vector / (np.linalg.norm(query_vector) or 1.0))
    best = np.argsort(-cosines, kind="stable")[:depth]
    return [(int(kept[i]), float(cosines[i])) for i in best]


def _vectors(store: Store, corpus, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The positions among ``positions`` and their unit vectors, cached per corpus and set from the set's
    second search on; None at its first, and for a set the store cannot give every vector of."""
    key = positions.tobytes()
    with _lock:
        sets = _kept.setdefault(corpus, OrderedDict())
        found = sets.get(key)
        if found is None:
            sets[key] = SEEN_ONCE
            if len(sets) > SETS_PER_CORPUS:
                sets.popitem(last=False)
            return None
        sets.move_to_end(key)
        if found is LEFT_TO_CHROMA:
            return None
        if found is not SEEN_ONCE:
            return found
    wanted = positions.tolist()
    where = dict(zip(corpus.ids_at(wanted), wanted))
    stored = [(where[cid], vector) for cid, vector in store.vectors(list(where))]
    if len(stored) < len(where):
        with _lock:
            sets[key] = LEFT_TO_CHROMA
        return None
    kept = np.array([p for p, _ in stored], dtype=np.int64)
    vectors = np.array([v for _, v in stored], dtype=np.float32).reshape(len(stored), -1)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    with _lock:
        sets[key] = (kept, vectors)
        while len(sets) > SETS_PER_CORPUS or sum(len(k) for k, _ in sets.values()) > VECTORS_PER_CORPUS:
            sets.popitem(last=False)
    return kept, vectors
