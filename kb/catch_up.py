"""Another process's small write, searched beside the vector index this process loaded before it.

chromadb keeps a local store's vector index in each process's memory, and
only an open of the store afresh loads another process's vectors into it: the
whole index again (at a million chunks, 4-19 s and a second 2.7 GB copy while it
loads). A script drop usually changes a few files, and an edited file keeps
most of its passages, whose vectors that loaded index already holds: under the
same ids, as the new version keeps their chunks, or, a file written again
whole, under the ids of the version before (a chunk id embeds the hash of the
file version that wrote it). So a reload after another process's write keeps
the loaded index and adds beside it:

- each current chunk whose passage the loaded index holds under an older id,
  and that id (searches name the one, are answered with the other);
- the passages it does not hold, with the vectors their writer kept for it (kb/store/written.py) or
  embedded here, ranked exactly by cosine;
- the ids it holds that no current chunk uses any more, left out of answers.

When more changed than that holds cheaply (limits below), the reload opens the
store afresh instead, and the index it loads starts over with nothing beside it.
"""

from __future__ import annotations

import numpy as np

from kb.store import Store, written
from kb.sync import passage_text

# Characters of new passages embedded here per reload, per chunk of the store: up to about what opening the store
# afresh would cost instead (the default model embedded ~17 us a character here; a fresh open loaded ~4 us a chunk,
# 3.8 s at a million). At 10,000 chunks a new 100-chunk prose file took 1.8 s this way, 0.6 s opened afresh.
EMBED_CHARS_PER_CHUNK = 0.25
EMBEDDED_MAX = written.KEPT  # passages kept embedded here in all (8 MB at 512 floats), searched exactly per query
RENAMED_MAX = 250_000  # chunks answered under another id, in all (two dicts of ids: ~60 MB)
GONE_MAX = 2_000  # ids of the loaded index no chunk uses any more: each query asks chromadb for that many more


class CaughtUp(Store):
    """A store whose loaded vector index is behind another process's write, searched with what it is behind by."""

    def __init__(self, store: Store, to_loaded: dict[str, str], embedded: dict[str, np.ndarray],
                 gone: frozenset[str]):
        vars(self).update(vars(store))  # the same chromadb client and collections
        self.to_loaded = to_loaded  # a current id -> the loaded index's id for the same passage
        self.from_loaded = {loaded: cid for cid, loaded in to_loaded.items()}
        self.embedded = embedded  # a current id -> its unit vector, for passages the loaded index lacks
        self.gone = gone  # the loaded index's ids no current chunk uses
        self._rows = {cid: row for row, cid in enumerate(embedded)}  # their rows in one matrix, searched at once
        self._matrix = np.stack(list(embedded.values())) if embedded else np.zeros((0, 0), dtype=np.float32)

    def nearest(self, vector: list, n: int, ids: list[str] | None = None) -> list[tuple[str, float]]:
        if ids is None:
            loaded, here = None, list(self._rows)
        else:
            loaded = [self.to_loaded.get(cid, cid) for cid in ids if cid not in self.embedded]
            here = [cid for cid in ids if cid in self.embedded]
        found = []
        if loaded is None or loaded:
            found = [(self.from_loaded.get(cid, cid), distance)
                     for cid, distance in super().nearest(vector, n + len(self.gone), loaded)
                     if cid not in self.gone]
        if here:
            query = np.asarray(vector[0], dtype=np.float32)
            matrix = self._matrix if ids is None else self._matrix[[self._rows[cid] for cid in here]]
            cosines = matrix @ (query / (np.linalg.norm(query) or 1.0))
            found += [(cid, 1.0 - float(cosine)) for cid, cosine in zip(here, cosines)]
        nearest: dict[str, float] = {}
        for cid, distance in sorted(found, key=lambda row: row[1]):
            nearest.setdefault(cid, distance)  # once: an index a cache reloaded from disk may hold it too
        return list(nearest.items())[:n]

    def vectors(self, ids: list[str]) -> list[tuple[str, list[float]]]:
        """A renamed chunk's vector is left out: chromadb reads a vector only under an id its SQLite still holds."""
        untouched = [cid for cid in ids if cid not in self.embedded and cid not in self.to_loaded]
        here = [(cid, self.embedded[cid].tolist()) for cid in ids if cid in self.embedded]
        return (super().vectors(untouched) if untouched else []) + here


def caught_up(store: Store, before, after) -> CaughtUp | None:
    """``store`` answering for corpus ``after`` while its vector index stays as loaded for ``before``
    (kb.retrieve.Corpus), or None when more changed than the limits above."""
    if not before.size:  # chromadb fails a client that queried an empty collection once another process adds
        return None
    if isinstance(store, CaughtUp):
        to_loaded, embedded, gone = dict(store.to_loaded), dict(store.embedded), set(store.gone)
    else:
        to_loaded, embedded, gone = {}, {}, set()
    old = {key: version for key, version, _ in before.files}
    new = {key: version for key, version, _ in after.files}
    changed = [key for key in old.keys() | new.keys() if old.get(key) != new.get(key)]
    missing: dict[str, str] = {}  # a current id -> its passage, which nothing loaded holds
    for key in changed:
        held: dict[str, str] = {}  # a passage -> the id the loaded index holds it under
        vectors_held: dict[str, np.ndarray] = {}  # a passage -> its vector embedded here
        for cid, text, meta in before.file_chunks(key) if key in old else []:
            passage = passage_text(text, meta)
            if cid in embedded:
                vectors_held.setdefault(passage, embedded.pop(cid))
            else:
                loaded = to_loaded.pop(cid, cid)
                held.setdefault(passage, loaded)
                gone.add(loaded)
        for cid, text, meta in after.file_chunks(key) if key in new else []:
            passage = passage_text(text, meta)
            if passage in vectors_held:
                embedded[cid] = vectors_held[passage]
            elif passage in held:
                loaded = held.pop(passage)  # once: a second chunk of the same passage is embedded here
                gone.discard(loaded)
                if loaded != cid:
                    to_loaded[cid] = loaded
            else:
                missing[cid] = passage
    kept = store.written_vectors(list(missing)) if len(embedded) + len(missing) <= EMBEDDED_MAX else {}
    embedded.update(kept)  # as the writer wrote them, not embedded again (kb/store/written.py)
    missing = {cid: passage for cid, passage in missing.items() if cid not in kept}
    if (sum(map(len, missing.values())) > EMBED_CHARS_PER_CHUNK * before.size
            or len(embedded) + len(missing) > EMBEDDED_MAX
            or len(to_loaded) > RENAMED_MAX or len(gone) > GONE_MAX):
        return None
    if missing:  # unit vectors, as the model's embedding function gives them (kb/store/embed.py)
        embedded.update(zip(missing, np.asarray(store.embed_passages(list(missing.values())), dtype=np.float32)))
    return CaughtUp(store, to_loaded, embedded, frozenset(gone))
