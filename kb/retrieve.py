"""Find the canon for a question: dense (chromadb), BM25 (kb/postings.py), and their fusion, filtered.

Filters (`--where`, an NPC's knowledge limits) are applied before ranking, to
both retrievers: a chunk the filter hides is never scored, so it cannot leak
into the top k.
"""

from __future__ import annotations

import ctypes
import math
import weakref
from dataclasses import dataclass, field

import numpy as np

from ingest.text import detect_lang
from kb.config import RetrievalConfig
from kb.filtered_dense import EXACT_MAX_CHUNKS, filtered_ranking
from kb.lexical import query_tokens, tokens, word_pairs
from kb.limits import requirements_met, within_limits
from kb.postings import DAMAGE, Loaded, Postings, index_path
from kb.store import Store

MODES = ("hybrid", "dense", "bm25")
DEFAULT_CONFIG = RetrievalConfig()
MASKS_PER_CORPUS = 256  # distinct (where, limits, flags) masks kept per loaded corpus
TERM_IDS_KEPT = 100_000  # vocabulary ids remembered per corpus before the memo starts over
_UNKNOWN = object()
INCREMENTAL_FILES = 50  # a reload that changes more files than this (or a tenth of them) reads everything


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

    Postings are kept by term and scored at query time, so N, the average length
    and each document frequency always describe the corpus as it now is; the
    arithmetic follows bm25s step by step (float32 idf and sums, float64
    term-frequency part), so the scores and ranks are those it gave.
    """

    K1, B = 1.5, 0.75

    def __init__(self, docs: np.ndarray, counts: np.ndarray, start: np.ndarray, lengths: np.ndarray):
        self.docs, self.start = docs, start  # term t's postings: [start[t], start[t + 1])
        self.lengths = lengths.astype(np.float64)
        self.size = len(lengths)
        self.average = self.lengths.mean() if self.size else 0.0
        # Each posting's term-frequency part, once per corpus: a query then only scales and adds
        # (bm25 p50 at 100k chunks was 9.6 ms computing it per query against 1.1 ms with bm25s).
        # counts / (K1 * ((1 - B) + B * length / average) + counts), step by step in one float64 array:
        # the same roundings as the expression, without its three temporaries of 8 bytes a posting.
        # The counts are not kept (``counts`` works them back): 12 bytes a posting, not 16.
        tfc = self._saturation()
        np.add(tfc, counts, out=tfc)
        np.divide(counts, tfc, out=tfc)
        self.tfc = tfc

    def _saturation(self) -> np.ndarray:
        """K1 * ((1 - B) + B * length / average) for each posting's chunk, rounded step by step."""
        norm = self.lengths[self.docs]
        np.multiply(self.B, norm, out=norm)
        np.divide(norm, self.average or 1.0, out=norm)
        np.add(1 - self.B, norm, out=norm)
        np.multiply(self.K1, norm, out=norm)
        return norm

    def counts(self) -> np.ndarray:
        """Each posting's term count, worked back from its term-frequency part t = count / (norm + count):
        count = t * norm / (1 - t), a whole number recovered far inside float64's precision."""
        counts = self._saturation()
        np.multiply(counts, self.tfc, out=counts)
        np.divide(counts, 1 - self.tfc, out=counts)
        return np.rint(counts).astype(np.float32)

    @classmethod
    def build(cls, parts: list[np.ndarray], lengths: np.ndarray) -> "Field":
        """From (chunk, term id, count) rows, one array per file in chunk order: grouped by term.

        Each file's rows go straight to their places in the grouped arrays and are then let go
        (``parts`` is emptied), so the peak holds the rows once beside the result: concatenating
        them and sorting the whole was three copies and two 8-byte orders a posting, most of a
        fresh open's peak at 100k chunks. Within a term the chunks stay in order, as a stable sort left them.
        """
        per_term, top = np.zeros(1024, dtype=np.int64), -1
        for i, rows in enumerate(parts):  # each file's rows sorted by term, and counted per term
            rows = parts[i] = rows[_order_by(rows[:, 1])]
            if len(rows):
                terms, sizes = _groups(rows[:, 1])
                top = max(top, int(terms[-1]))
                if top >= len(per_term):  # grown by doubling: a bincount per file was the whole vocabulary
                    per_term = np.concatenate([per_term, np.zeros(max(top + 1, 2 * len(per_term)) - len(per_term),
                                                                  dtype=np.int64)])
                per_term[terms] += sizes
        start = np.concatenate([[0], np.cumsum(per_term[:top + 1])])
        docs, counts = np.empty(start[-1], dtype=np.int32), np.empty(start[-1], dtype=np.float32)
        cursor = start[:-1].copy()  # where each term's next posting goes
        for i, rows in enumerate(parts):
            parts[i] = None
            if len(rows):
                terms, sizes = _groups(rows[:, 1])
                at = np.repeat(cursor[terms] - np.cumsum(sizes) + sizes, sizes) + np.arange(len(rows))
                docs[at], counts[at] = rows[:, 0], rows[:, 2]
                cursor[terms] += sizes
        return cls(docs, counts, start, lengths)

    def updated(self, keep: np.ndarray, position: np.ndarray, added: np.ndarray,
                added_lengths: np.ndarray) -> "Field":
        """This field less the chunks ``keep`` drops (the rest renumbered by ``position``), plus ``added``
        rows (numbered after them): linear in the postings, without regrouping them."""
        kept = keep[self.docs]
        docs, counts = position[self.docs[kept]], self.counts()[kept]
        start = np.concatenate([[0], np.cumsum(kept)])[self.start]
        vocabulary = max(len(start) - 1, int(added[:, 1].max()) + 1 if len(added) else 0)
        start = np.concatenate([start, np.full(vocabulary - (len(start) - 1), start[-1])])
        added = added[_order_by(added[:, 1])]
        at = start[added[:, 1] + 1]  # after each term's own postings
        docs = np.insert(docs, at, added[:, 0])
        counts = np.insert(counts, at, added[:, 2].astype(np.float32))
        start = start + _starts(added[:, 1], vocabulary)
        return Field(docs, counts, start, np.concatenate([self.lengths[keep], added_lengths]))

    def doc_freq(self, term_id: int | None) -> int:
        if term_id is None or term_id + 1 >= len(self.start):
            return 0
        return int(self.start[term_id + 1] - self.start[term_id])

    def scores(self, term_ids: list[int]) -> np.ndarray:
        """Every chunk's BM25 score for these terms (repeats count again, as in bm25s)."""
        scores = np.zeros(self.size, dtype=np.float32)
        for term_id in term_ids:
            span = slice(self.start[term_id], self.start[term_id + 1])
            df = span.stop - span.start
            idf = np.float32(math.log(1 + (self.size - df + 0.5) / (df + 0.5)))
            scores[self.docs[span]] += (idf * self.tfc[span]).astype(np.float32)
        return scores


class Corpus:
    """The visible chunks and their BM25 indexes (terms, word pairs), read from the postings on disk."""

    def __init__(self, files: list[tuple[str, str, int]], ids: list[str], texts: list[str], metas: list[dict],
                 terms: Field, pairs: Field, postings: Postings):
        self.files = files  # (key, version, chunks) in chunk order
        self.ids, self.texts, self.metas = ids, texts, metas
        self.position = {cid: i for i, cid in enumerate(ids)}
        self.lengths = terms.lengths.astype(int).tolist()
        self.terms, self.pairs = terms, pairs
        self._postings = postings
        self._term_ids: dict[str, int | None] = {}  # vocabulary lookups, kept for this corpus's life

    @classmethod
    def read(cls, loaded: Loaded, postings: Postings) -> "Corpus":
        """A corpus of freshly read files, their postings grouped by term."""
        terms = Field.build(loaded.terms, loaded.lengths)  # each file's rows go once placed
        pairs = Field.build(loaded.pairs, loaded.pair_lengths)
        return cls(loaded.files, loaded.ids, loaded.texts, loaded.metas, terms, pairs, postings)

    @classmethod
    def load(cls, store: Store, postings: Postings | None = None, previous: "Corpus | None" = None) -> "Corpus":
        """The store's visible chunks; the postings are brought up to date first (a changed file only),
        and again when a publish lands meanwhile, so the corpus is one whole generation.

        Given the ``previous`` corpus of this store, only the files that changed since are read.
        """
        postings = postings or Postings(index_path(store))

        def read(since: "Corpus | None") -> "Corpus":
            if postings.update(store):
                _return_freed_memory()  # what tokenizing held, before the rows are read
            return cls._read(postings, since)

        try:
            corpus = store.consistent(lambda: read(previous))
        except DAMAGE:
            postings.reset()
            corpus = store.consistent(lambda: read(None))
        _return_freed_memory()
        return corpus

    @classmethod
    def _read(cls, postings: Postings, previous: "Corpus | None") -> "Corpus":
        if previous is None or previous._postings is not postings:
            return cls.read(postings.load(), postings)
        now = dict(postings.listing())
        kept = {key for key, version, _ in previous.files if now.get(key) == version}
        if len(now) - len(kept) + len(previous.files) - len(kept) > max(INCREMENTAL_FILES, len(now) // 10):
            return cls.read(postings.load(), postings)
        return previous._updated(kept, postings.load(set(now) - kept))

    def _updated(self, kept: set[str], added: Loaded) -> "Corpus":
        """This corpus less the files not ``kept``, plus the ``added`` ones after them."""
        keep = np.zeros(len(self.ids), dtype=bool)
        files, start = [], 0
        for key, version, count in self.files:
            if key in kept:
                keep[start:start + count] = True
                files.append((key, version, count))
            start += count
        position = np.cumsum(keep) - 1
        chosen = np.flatnonzero(keep).tolist()
        added_terms, added_pairs = (_joined(parts, len(chosen)) for parts in (added.terms, added.pairs))
        return Corpus(files + added.files, [self.ids[i] for i in chosen] + added.ids,
                      [self.texts[i] for i in chosen] + added.texts, [self.metas[i] for i in chosen] + added.metas,
                      self.terms.updated(keep, position, added_terms, added.lengths),
                      self.pairs.updated(keep, position, added_pairs, added.pair_lengths), self._postings)

    def term_ids(self, terms: list[str]) -> dict[str, int | None]:
        """Vocabulary ids of terms (None: not in it), asked of the postings once per corpus: an extractive
        answer reads the idf of the question's terms once per cited chunk (43 SQLite queries an answer)."""
        known = self._term_ids
        found = {term: known.get(term, _UNKNOWN) for term in terms}
        missing = [term for term, term_id in found.items() if term_id is _UNKNOWN]
        if missing:
            looked_up = self._postings.lookup(missing)
            if len(known) + len(missing) > TERM_IDS_KEPT:
                known.clear()
            for term in missing:
                found[term] = known[term] = looked_up.get(term)
        return found

    def worked_out(self, ids: list[str]) -> dict[str, tuple[int, str]]:
        """The token counts and sentence analyses of these chunks, as worked out when they were indexed."""
        return self._postings.worked_out(ids)

    def doc_freq(self, term: str) -> int:
        """How many chunks hold a term."""
        return self.terms.doc_freq(self.term_ids([term])[term])

    def idf(self, term: str) -> float:
        """How rare a term is in the canon; a term the canon never uses is rarest of all."""
        return math.log(1 + (len(self.ids) + 1) / (self.doc_freq(term) + 0.5))

    def bm25_ranking(self, query: str, allowed: np.ndarray | None, limit: int,
                     config: RetrievalConfig = DEFAULT_CONFIG) -> list[tuple[int, float]]:
        """The top ``limit`` chunk positions by BM25 score (terms plus weighted word pairs), best first.

        Zero scores are left out.

        Only the top is sorted (argpartition): at 100k chunks a full sort cost
        ~40 ms of the ~46 ms a BM25 query took (bench/scale.py).
        """
        wanted = query_tokens(query) if config.drop_question_words else tokens(query)
        pairs = word_pairs(query)
        ids = self.term_ids(wanted + pairs) if self.ids else {}
        terms = [ids[t] for t in wanted if self.terms.doc_freq(ids.get(t))]
        if not terms:
            return []
        scores = self.terms.scores(terms)
        pairs = [ids[p] for p in pairs if self.pairs.doc_freq(ids.get(p))]
        if pairs and config.pair_weight:
            scores = scores + config.pair_weight * self.pairs.scores(pairs)
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        if limit < len(scores):
            top = np.argpartition(-scores, limit)[:limit]
        else:
            top = np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))]  # best first, ties by position as before
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]


def _libc_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator returns memory its own way
        return None


_malloc_trim = _libc_malloc_trim()


def _return_freed_memory() -> None:
    """Give the OS back the heap a load freed: glibc keeps it for reuse, so a process held the peak of
    reading the postings for good (a fresh open at 20k chunks kept 406 MB RSS, 277 MB after this)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _order_by(keys: np.ndarray) -> np.ndarray:
    """A stable argsort of non-negative int32 keys, as two 16-bit passes (NumPy radix-sorts those: ~2x faster)."""
    low = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    return low[np.argsort((keys[low] >> 16).astype(np.uint16), kind="stable")]


def _groups(sorted_terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct terms of a sorted term column and how many rows each has."""
    first = np.flatnonzero(np.concatenate([[True], sorted_terms[1:] != sorted_terms[:-1]]))
    return sorted_terms[first], np.diff(np.append(first, len(sorted_terms)))


def _joined(parts: list[np.ndarray], first: int) -> np.ndarray:
    """Per-file (chunk, term id, count) rows as one array, their chunks numbered from ``first``."""
    rows = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int32)
    rows[:, 0] += first
    return rows


def _starts(terms: np.ndarray, vocabulary: int) -> np.ndarray:
    """Where each term's postings begin once grouped by term (one more entry: the end)."""
    counts = np.bincount(terms, minlength=vocabulary) if len(terms) else np.zeros(vocabulary, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)])


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
                                      and requirements_met(m, flags) for m in corpus.metas], dtype=bool)
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
        ids = [corpus.ids[i] for i in positions]
    ranked = []
    for cid, distance in store.dense_query(query, depth + 10, ids):
        pos = corpus.position.get(cid)
        if pos is not None:  # rows of a half-done write are not in the corpus
            ranked.append((pos, 1.0 - float(distance)))
    return ranked[:depth]


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
    if not corpus.ids or not query.strip():
        return []
    allowed = allowed_mask(corpus, where, limits, flags, strict)
    depth = max(config.depth, 4 * k)
    dense: list[tuple[int, float]] = []
    if mode == "bm25":
        ranked = corpus.bm25_ranking(query, allowed, k, config)
    elif mode == "dense":
        ranked = dense = dense_ranking(store, corpus, query, depth, allowed)
    else:
        dense = dense_ranking(store, corpus, query, depth, allowed)
        query_lang = detect_lang(query)
        other = {pos for pos, _ in dense if corpus.metas[pos].get("lang", query_lang) != query_lang}
        ranked = fuse(corpus.bm25_ranking(query, allowed, depth, config), dense,
                      config.dense_weight[query_lang], other, corpus.lengths, config)
    cosines = dict(dense)
    return [Hit(corpus.ids[pos], corpus.texts[pos], score, corpus.metas[pos], cosines.get(pos))
            for pos, score in ranked[:k]]
