"""Find the canon for a question: dense (chromadb), BM25 (kb/postings.py), and their fusion, filtered.

Filters (`--where`, an NPC's knowledge limits) are applied before ranking, to
both retrievers: a chunk the filter hides is never scored, so it cannot leak
into the top k.
"""

from __future__ import annotations

import json
import math
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ingest.text import detect_lang
from kb.config import RetrievalConfig
from kb.filtered_dense import EXACT_MAX_CHUNKS, filtered_ranking
from kb.lexical import is_word_pair, query_tokens, tokens, word_pairs
from kb.limits import requirements_met, within_limits
from kb.memory import churned, return_freed_memory
from kb.postings import DAMAGE, Postings, Snapshot, index_path
from kb.recent import Recent
from kb.store import Store

MODES = ("hybrid", "dense", "bm25")
DEFAULT_CONFIG = RetrievalConfig()
MASKS_PER_CORPUS = 256  # distinct (where, limits, flags) masks kept per loaded corpus
TERM_IDS_KEPT = 100_000  # vocabulary ids remembered per corpus before the memo starts over
# Chunks (id, text, metadata) kept per corpus once read: the chunks a server's players hit again and again (an
# NPC's few dozen) cost a SQLite read and a JSON decode per search otherwise (1.1 ms of an NPC question's ~10).
HOT_CHUNKS = 4_096
# Postings kept per corpus once read and weighed (Corpus._weights), by term, most recent first: reading a common
# term's postings is most of a BM25 search. At a million 150-word chunks one query's terms hold about 3 million
# postings, so 2 million kept none of them for the next question, and hybrid p50 went 74 -> 14 ms with 21 million.
# Kept 8 bytes a posting, 63 million (up to 504 MB; a store of short loc rows holds fewer in all) took a new
# question's BM25 there, once a server had asked 100, from 12.6 to 6.6 ms (docs/scale.md).
HOT_POSTINGS = 63_000_000
# When a server warms up (Corpus.keep_common_terms): the write groups (kb/postings.py, up to 1,000 chunks each)
# whose postings rows sample the terms' document frequencies, the fewest chunks a term kept ahead is held by (a
# rarer one's postings are read in well under a millisecond), and the postings read per batch.
SAMPLED_GROUPS = 8
KEEP_AHEAD_MIN_CHUNKS = 1_000
WARM_BATCH_POSTINGS = 4_000_000
# From this many chunks, a hybrid search ranks by embedding in a thread while the caller ranks BM25: at a million loc
# rows the two beside each other took hybrid p50 from 13.1 to 9.6 ms (dense 6.3-6.7), and with BM25 in the caller's
# thread rather than the pool's, a fresh server's first new questions at a million prose chunks went from 12.1-13.4
# to 9.5-10.3 ms (1.92-2.01x dense to 1.35-1.64x, five sets of 50; docs/scale.md). On the 131-chunk sample world an
# earlier try cost 1 ms a search, so small stores rank in turn.
BESIDE_MIN_CHUNKS = 100_000
_beside = ThreadPoolExecutor(4, thread_name_prefix="kb-dense")
# A term held by more than this share of the chunks is kept as a score per chunk (float32, 0 where it is absent)
# instead of its postings (an int32 position and a float32 score each), and added by one vector sum, which lets
# go of the GIL, instead of np.add.at (at a million prose chunks, hybrid with the question's postings kept
# 15.0-16.3 -> 12.1-13.1 ms, dense 7.2-7.3).
DENSE_SHARE = 1 / 3


@dataclass(frozen=True)
class Weighed:
    """One term's BM25 score in the chunks holding it: at ``docs``, or per chunk when ``docs`` is None."""

    df: int  # how many chunks hold it
    docs: np.ndarray | None
    scores: np.ndarray

    @property
    def kept(self) -> int:
        """What keeping it costs, in postings (8 bytes each: an int32 position and a float32 score)."""
        return len(self.scores) // 2 if self.docs is None else len(self.docs)

    def chunks(self) -> np.ndarray:
        """The positions of the chunks holding it."""
        return self.docs if self.docs is not None else np.flatnonzero(self.scores)  # a score is never 0 (idf > 0)


@dataclass
class Hit:
    """One retrieved chunk, as `kb search --json` prints it."""

    id: str
    text: str
    score: float
    metadata: dict
    cosine: float | None = field(default=None, compare=False)  # to the query, when the dense ranking saw it

    @property
    def source(self) -> str:
        return self.metadata.get("source", "")

    def to_json(self) -> dict:
        return {"id": self.id, "text": self.text, "score": round(float(self.score), 6),
                "source": self.source, "metadata": self.metadata}


class Field:
    """One BM25 index (the terms, or the word pairs) scored as bm25s scored it: Lucene BM25, k1 1.5, b 0.75.

    A query's postings are read from disk (kb/postings.py) and scored against
    the snapshot's chunk lengths, so N, the average length and each document
    frequency always describe the corpus as it now is; the arithmetic follows
    bm25s step by step (float32 idf and sums, float64 term-frequency part), so
    the scores and ranks are those it gave.
    """

    K1, B = 1.5, 0.75

    def __init__(self, lengths: np.ndarray):
        self.size = len(lengths)
        norms = lengths.astype(np.float64)
        average = norms.mean() if self.size else 0.0
        # K1 * ((1 - B) + B * length / average) per chunk, worked out once: per posting, it was 4 of a term's
        # 6 passes over its postings (a common term is in 100,000s of chunks at a million)
        np.multiply(self.B, norms, out=norms)
        np.divide(norms, average or 1.0, out=norms)
        np.add(1 - self.B, norms, out=norms)
        np.multiply(self.K1, norms, out=norms)
        self.norms = norms

    def frequency_part(self, docs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """counts / (K1 * ((1 - B) + B * length / average) + counts) for postings in ``docs``, step by step
        in one float64 array: the same roundings as the expression."""
        part = self.norms[docs]
        np.add(part, counts, out=part)
        np.divide(counts, part, out=part)
        return part

    def weighed(self, docs: np.ndarray, counts: np.ndarray) -> Weighed:
        """One term's score in each chunk holding it (its postings ``docs`` and ``counts``), float32 as bm25s
        added it up."""
        df = len(docs)
        idf = np.float32(math.log(1 + (self.size - df + 0.5) / (df + 0.5)))
        weights = self.frequency_part(docs, counts)
        # idf * weights in place, rounded to float32 once, where the scores are kept: the same floats in 0.8x the
        # time (30 common terms' postings at a million prose chunks: 55 -> 44 ms)
        np.multiply(weights, idf, out=weights)
        if df <= DENSE_SHARE * self.size:
            return Weighed(df, docs, weights.astype(np.float32))
        per_chunk = np.zeros(self.size, dtype=np.float32)
        per_chunk[docs] = weights
        return Weighed(df, None, per_chunk)

    def scores(self, term_ids: list[int], weighed: dict[int, Weighed]) -> np.ndarray:
        """Every chunk's BM25 score for these terms (repeats count again, as in bm25s), given each one's
        ``weighed`` scores. Adding a term's 0 where it is absent leaves a sum as it was, so both ways of keeping
        a term give the same float32 sums."""
        scores = np.zeros(self.size, dtype=np.float32)
        for term_id in term_ids:
            term = weighed[term_id]
            if term.docs is None:
                np.add(scores, term.scores, out=scores)
            else:  # the same float32 sums as scores[docs] += weight, in 0.6x the time
                np.add.at(scores, term.docs, term.scores)
        return scores


class Corpus:
    """The visible chunks and their BM25 indexes (terms, word pairs): one snapshot of the postings on disk.

    Only the chunks' lengths are in memory; a query reads its terms' postings and
    its hits' texts and metadata (kb/postings.py).
    """

    def __init__(self, snapshot: Snapshot, previous: "Corpus | None" = None):
        self._snapshot = snapshot
        self.files = snapshot.files  # (key, version, chunks) in chunk order
        self.size = snapshot.size
        self.terms, self.pairs = Field(snapshot.lengths), Field(snapshot.pair_lengths)
        self.lengths = snapshot.lengths
        self._terms: dict[str, int | None] = {}  # vocabulary ids, kept for this corpus's life
        self._ids: list[str] | None = None
        self._metas: list[dict] | None = None
        # the previous corpus's metadata by file version, for this one's first read of it
        self._kept_metas = previous._metas_by_file() if previous is not None and previous._metas else {}
        self._chunks_read = Recent(HOT_CHUNKS)  # (id, text, metadata) by position
        self._weights_read = Recent(HOT_POSTINGS, weight=lambda weighed: weighed.kept)  # by term id

    @classmethod
    def load(cls, store: Store, postings: Postings | None = None, previous: "Corpus | None" = None) -> "Corpus":
        """The store's visible chunks; the postings are brought up to date first (a changed file only),
        and again when a publish lands meanwhile, so the corpus is one whole generation.

        Given the ``previous`` corpus of this store, the metadata it read of unchanged files is reused.
        """
        postings = postings or Postings(index_path(store))

        def read() -> "Corpus":
            if postings.update(store):
                # what tokenizing held: a fresh open at 20k chunks kept 406 MB RSS, 277 MB after this
                return_freed_memory()
            return cls(postings.snapshot(), previous)

        try:
            return store.consistent(read)
        except DAMAGE:
            postings.reset()
            return store.consistent(read)

    def settle(self) -> None:
        """Let the postings' write-ahead log start over once no older corpus reads it (Snapshot.settle)."""
        self._snapshot.settle()

    @property
    def ids(self) -> list[str]:
        """Every chunk's id in position order, read on first use (a filtered dense search names them)."""
        if self._ids is None:
            self._ids = [cid for (cid,) in self._snapshot.rows("id")]
        return self._ids

    def chunks(self):
        """Every chunk as (id, text, metadata), in position order, read from disk a file at a time."""
        for cid, text, meta in self._snapshot.rows("id, text, meta"):
            yield cid, text, json.loads(meta)

    def metas(self) -> list[dict]:
        """Every chunk's metadata in position order, read on first use (a filter, an NPC's limits) and kept:
        read from disk per new filter, a mask took 0.9-3.6 s at 100k chunks. A reload reads only the
        changed files' again."""
        if self._metas is None:
            metas = []
            for key, version, _ in self.files:
                kept = self._kept_metas.get((key, version))
                metas.extend(kept if kept is not None else
                             _sharing_values([json.loads(meta) for (meta,) in self._snapshot.file_rows(key, "meta")]))
            self._metas, self._kept_metas = metas, {}
        return self._metas

    def _metas_by_file(self) -> dict[tuple[str, str], list[dict]]:
        by_file, start = {}, 0
        for key, version, count in self.files:
            by_file[(key, version)] = self._metas[start:start + count]
            start += count
        return by_file

    def chunks_at(self, positions: list[int]) -> dict[int, tuple[str, str, dict]]:
        """The (id, text, metadata) of the chunks at these positions; the HOT_CHUNKS last read are kept, and
        each caller gets its own copy of a metadata dict to change (decoding it again cost 5.5 us a chunk)."""
        found = self._chunks_read.get(positions, self._read_chunks)
        return {pos: (cid, text, dict(meta)) for pos, (cid, text, meta) in found.items()}

    def _read_chunks(self, positions: list[int]) -> dict[int, tuple[str, str, dict]]:
        return {pos: (cid, text, json.loads(meta))
                for pos, (cid, text, meta) in self._snapshot.at(positions, "id, text, meta").items()}

    def file_chunks(self, key: str) -> list[tuple[str, str, dict]]:
        """One file's chunks as (id, text, metadata), in position order."""
        return [(cid, text, json.loads(meta)) for cid, text, meta in self._snapshot.file_rows(key, "id, text, meta")]

    def ids_at(self, positions: list[int]) -> list[str]:
        """The ids of the chunks at these positions, in that order."""
        found = self._snapshot.at(positions, "id")
        return [found[pos][0] for pos in positions]

    def positions_of(self, ids: list[str]) -> dict[str, int]:
        """The positions of those of these chunks the corpus holds."""
        return self._snapshot.positions_of(ids)

    def _term_ids(self, terms: list[str]) -> dict[str, int | None]:
        """Vocabulary ids of terms (None: not in it), asked once per corpus: an extractive answer reads the idf
        of the question's terms once per cited chunk (43 SQLite queries)."""
        known = self._terms
        missing = [term for term in dict.fromkeys(terms) if term not in known]
        if missing:
            if len(known) + len(missing) > TERM_IDS_KEPT:
                known.clear()
                missing = list(dict.fromkeys(terms))
            looked_up = self._snapshot.term_ids(missing)
            known.update((term, looked_up.get(term)) for term in missing)
        return {term: known[term] for term in terms}

    def _weights(self, fields: dict[int, Field]) -> dict[int, Weighed]:
        """Each of these terms' scores in the chunks holding it (Field.weighed, in the term's field), read from
        disk and worked out unless kept: the last HOT_POSTINGS postings' worth are (at a million loc rows,
        working them out again was a quarter of a BM25 ranking: 12.4-13.1 -> 9.2-9.7 ms)."""

        def read(term_ids: list[int]) -> dict[int, Weighed]:
            weighed = {term_id: fields[term_id].weighed(docs, counts)
                       for term_id, (docs, counts) in self._snapshot.postings(term_ids).items()}
            churned(8 * sum(each.kept for each in weighed.values()))  # kept, each lets an older one go
            return weighed

        return self._weights_read.get(list(fields), read)

    def keep_common_terms(self, budget: int = HOT_POSTINGS) -> int:
        """Read and keep, before a server's first question, the postings of the terms most chunks hold (by a sample
        of the index) and no rarer than KEEP_AHEAD_MIN_CHUNKS, up to ``budget`` postings' worth; how many terms.
        A fresh server's first new questions read their common words' postings from disk otherwise: 2.4-2.9x
        dense at a million prose chunks."""
        if not self.size:
            return 0
        sampled, chunks = self._snapshot.sampled_frequencies(SAMPLED_GROUPS, KEEP_AHEAD_MIN_CHUNKS / self.size)
        wanted, batches, total, batch = {}, [], 0, 0
        for term_id, term, held in sorted(sampled, key=lambda row: row[2], reverse=True):
            df = held * self.size / chunks
            cost = self.size // 2 if df > DENSE_SHARE * self.size else round(df)  # as Weighed.kept
            if total + cost > budget:
                break
            if batch + cost > WARM_BATCH_POSTINGS and wanted:
                batches.append(wanted)
                wanted, batch = {}, 0
            wanted[term_id] = self._field(term)
            total, batch = total + cost, batch + cost
        batches.append(wanted)
        for fields in reversed(batches):  # the commonest read last: the most recently used, the last let go
            self._weights(fields)
        return sum(map(len, batches))

    def common_terms(self) -> list[str]:
        """The terms kept as a score per chunk (held by over a third of the chunks: the costliest to read), the
        most recently used first."""
        ids = [term_id for term_id, weighed in reversed(self._weights_read.items()) if weighed.docs is None]
        terms = self._snapshot.terms_of(ids)
        return [terms[term_id] for term_id in ids if term_id in terms]

    def keep_terms(self, terms: list[str]) -> None:
        """Read and keep these terms' postings (those the index holds), one at a time, in turn."""
        for term, term_id in self._term_ids(terms).items():
            if term_id is not None:
                self._weights({term_id: self._field(term)})

    def _field(self, term: str) -> Field:
        """The index a vocabulary term scores in: the word pairs' or the terms'."""
        return self.pairs if is_word_pair(term) else self.terms

    def worked_out(self, ids: list[str]) -> dict[str, tuple[int, str]]:
        """The token counts and sentence analyses of these chunks, as worked out when they were indexed."""
        return self._snapshot.worked_out(ids)

    def doc_freq(self, term: str) -> int:
        """How many chunks hold a term (its postings, which a search of it has read already)."""
        term_id = self._term_ids([term])[term]
        found = self._weights({term_id: self.terms}).get(term_id) if term_id is not None else None
        return found.df if found else 0

    def idf(self, term: str) -> float:
        """How rare a term is in the canon; a term the canon never uses is rarest of all."""
        return math.log(1 + (self.size + 1) / (self.doc_freq(term) + 0.5))

    def bm25_ranking(self, query: str, allowed: np.ndarray | None, limit: int,
                     config: RetrievalConfig = DEFAULT_CONFIG) -> list[tuple[int, float]]:
        """The top ``limit`` chunk positions by BM25 score (terms plus weighted word pairs), best first.

        Zero scores are left out; ties go by position. Only the query's terms' postings are read.
        """
        wanted = query_tokens(query) if config.drop_question_words else tokens(query)
        pairs = word_pairs(query) if config.pair_weight else []
        known = {term: term_id for term, term_id in (self._term_ids(wanted + pairs) if self.size else {}).items()
                 if term_id is not None}
        if not any(term in known for term in wanted):
            return []
        terms, pairs = [known[t] for t in wanted if t in known], [known[p] for p in pairs if p in known]
        # its document frequency is its postings' length: summing it in SQLite read the rows twice (12 of 35 ms
        # of a new question at a million prose chunks)
        weights = self._weights({**dict.fromkeys(terms, self.terms), **dict.fromkeys(pairs, self.pairs)})
        terms, pairs = [t for t in terms if t in weights], [p for p in pairs if p in weights]
        if not terms:
            return []
        scores = self.terms.scores(terms, weights)
        if pairs:  # in place, as scores + pair_weight * pair scores in float32: two million-float temporaries fewer
            paired = self.pairs.scores(pairs, weights)
            np.add(scores, np.multiply(paired, np.float32(config.pair_weight), out=paired), out=scores)
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        rarest_first = sorted((weights[term_id] for term_id in terms), key=lambda term: term.df)
        return [(int(i), float(scores[i])) for i in _best(scores, limit, rarest_first)]


def _best(scores: np.ndarray, limit: int, seeds: list[Weighed]) -> np.ndarray:
    """The positions of the ``limit`` best positive scores, best first, ties by position.

    Only the chunks scoring at least the limit-th best among the first of ``seeds`` (each query term, rarest
    first: the chunks holding it score high) held by ``limit`` chunks are sorted: at a million loc rows,
    selecting among every score (argpartition) was 10 of a hybrid search's 28 ms, and a full sort ~40 ms at
    100k chunks. (A union of seeds needs its repeats removed: np.unique took 4 ms a search, 190 at 400k.)
    """
    seed = next((term.chunks() for term in seeds if term.df >= limit), None)
    threshold = 0.0 if seed is None else np.partition(scores[seed], len(seed) - limit)[len(seed) - limit]
    candidates = np.flatnonzero(scores >= threshold) if threshold > 0 else np.flatnonzero(scores > 0)
    return candidates[np.lexsort((candidates, -scores[candidates]))][:limit]


def _sharing_values(metas: list[dict]) -> list[dict]:
    """One file's chunk metadata with equal strings made one object: each chunk repeats its file's source,
    key, hash and often title, and a string apiece was about half the metadata's memory."""
    shared: dict[str, str] = {}
    for meta in metas:
        for key, value in meta.items():
            if type(value) is str:
                meta[key] = shared.setdefault(value, value)
    return metas


def _matches(value, wanted) -> bool:
    if isinstance(value, list):
        return wanted in value or str(wanted) in map(str, value)
    return value == wanted or str(value) == str(wanted)


def matches_where(meta: dict, where: dict) -> bool:
    """Every `key=value` holds (a list-valued key, like `speaker`, holds if it contains the value)."""
    return all(key in meta and _matches(meta[key], wanted) for key, wanted in where.items())


def _frozen(mapping: dict | None) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (mapping or {}).items()))


# One small mask cache per loaded corpus: a new store generation loads a new Corpus, so its masks
# start empty and the old ones go with the old corpus.
_masks: "weakref.WeakKeyDictionary[Corpus, dict]" = weakref.WeakKeyDictionary()


def allowed_mask(corpus: Corpus, where: dict | None, limits: dict | None,
                 flags: frozenset[str] | None = None, strict: bool = False) -> np.ndarray | None:
    """Which chunks the filters let through, or None when nothing is filtered; cached per corpus."""
    if not where and not limits and flags is None:
        return None
    key = (_frozen(where), _frozen(limits), flags, strict)
    masks = _masks.setdefault(corpus, {})
    mask = masks.get(key)
    if mask is None:
        if len(masks) >= MASKS_PER_CORPUS:
            masks.clear()
        mask = masks[key] = np.array([matches_where(m, where or {}) and within_limits(m, limits or {}, strict)
                                      and requirements_met(m, flags) for m in corpus.metas()], dtype=bool)
    return mask


def dense_ranking(store: Store, corpus: Corpus, query: str, depth: int,
                  allowed: np.ndarray | None) -> list[tuple[int, float]]:
    """Chunk positions by cosine similarity, best first, restricted to visible allowed chunks."""
    ids = None
    if allowed is not None:
        positions = np.flatnonzero(allowed)
        if not len(positions):
            return []
        if len(positions) <= EXACT_MAX_CHUNKS:
            ranked = filtered_ranking(store, corpus, positions, query, depth)
            if ranked is not None:
                return ranked
            ids = corpus.ids_at(positions.tolist())  # a small set's ids are read for it
        else:
            ids = [corpus.ids[i] for i in positions]  # a large one's from every id, read once per corpus
    found = store.dense_query(query, depth + 10, ids)
    positions = corpus.positions_of([cid for cid, _ in found])  # rows of a half-done write are not in the corpus
    return [(positions[cid], 1.0 - float(distance)) for cid, distance in found if cid in positions][:depth]


def _share_of_best(ranking: list[tuple[int, float]]) -> dict[int, float]:
    """BM25 scores as shares of the best one; min-max would score the weakest match as no match.

    That tie cost fairytaleqa a gold chunk ranked 5th of 5 BM25 matches.
    """
    best = max((score for _, score in ranking), default=0.0)
    return {pos: score / best if best else 0.0 for pos, score in ranking}


def _min_max(ranking: list[tuple[int, float]]) -> dict[int, float]:
    """Cosines rescaled to 0..1 within one ranking, so they can be added to BM25's shares."""
    if not ranking:
        return {}
    values = np.array([score for _, score in ranking])
    low, span = values.min(), values.max() - values.min()
    return {pos: float((score - low) / span) if span else 1.0 for pos, score in ranking}


def fuse(bm25: list[tuple[int, float]], dense: list[tuple[int, float]], dense_weight: float,
         cross_lingual: set[int], lengths: list[int],
         config: RetrievalConfig = DEFAULT_CONFIG) -> list[tuple[int, float]]:
    """Weighted fusion of normalised scores, fair to canon in the other language.

    A chunk in the query's language scores (1 - dense_weight) * bm25 +
    dense_weight * cosine. A chunk in another language has no words in common
    with the query, so BM25 cannot see it; it scores cross_lingual_weight * cosine
    instead of being buried under every lexical match. Chunks of fewer than
    short_chunk_terms terms (a UI string, a one-line bark) are scaled down by
    the square root of their share: both BM25 and cosine overrate them.
    """
    scale_bm25 = _share_of_best if config.bm25_scaling == "share-of-best" else _min_max
    lexical, semantic = scale_bm25(bm25), _min_max(dense)
    scores = {}
    for pos in lexical.keys() | semantic.keys():
        if pos in cross_lingual:
            score = config.cross_lingual_weight * semantic.get(pos, 0.0)
        else:
            score = (1 - dense_weight) * lexical.get(pos, 0.0) + dense_weight * semantic.get(pos, 0.0)
        scores[pos] = score * min(1.0, lengths[pos] / config.short_chunk_terms) ** 0.5
    return sorted(scores.items(), key=lambda item: -item[1])


def search(store: Store, corpus: Corpus, query: str, k: int = 5, mode: str = "hybrid",
           where: dict | None = None, limits: dict | None = None,
           config: RetrievalConfig = DEFAULT_CONFIG, flags: frozenset[str] | None = None,
           strict: bool = False) -> list[Hit]:
    """The k best visible chunks for a query (``flags``: hide canon whose `requires:` they do not meet;
    ``strict``: hide canon without a limited key)."""
    if not corpus.size or not query.strip():
        return []
    allowed = allowed_mask(corpus, where, limits, flags, strict)
    depth = max(config.depth, 4 * k)
    dense: list[tuple[int, float]] = []
    seen: dict[int, tuple[str, str, dict]] = {}  # chunks read so far, by position
    if mode == "bm25":
        ranked = corpus.bm25_ranking(query, allowed, k, config)
    elif mode == "dense":
        ranked = dense = dense_ranking(store, corpus, query, depth, allowed)
    else:
        beside = (_beside.submit(dense_ranking, store, corpus, query, depth, allowed)
                  if corpus.size >= BESIDE_MIN_CHUNKS else None)
        bm25 = corpus.bm25_ranking(query, allowed, depth, config)
        dense = beside.result() if beside is not None else dense_ranking(store, corpus, query, depth, allowed)
        query_lang = detect_lang(query)
        seen = corpus.chunks_at([pos for pos, _ in dense])
        other = {pos for pos, _ in dense if seen[pos][2].get("lang", query_lang) != query_lang}
        ranked = fuse(bm25, dense, config.dense_weight[query_lang], other, corpus.lengths, config)
    cosines = dict(dense)
    seen.update(corpus.chunks_at([pos for pos, _ in ranked[:k] if pos not in seen]))
    return [Hit(*seen[pos][:2], score, seen[pos][2], cosines.get(pos)) for pos, score in ranked[:k]]
