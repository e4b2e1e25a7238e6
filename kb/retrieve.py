"""Find the canon for a question: dense (chromadb), BM25 (kb/postings.py), and their fusion, filtered.

Filters (`--where`, an NPC's knowledge limits) are applied before ranking, to
both retrievers: a chunk the filter hides is never scored, so it cannot leak
into the top k.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np

from ingest.text import detect_lang
from kb.config import RetrievalConfig
from kb.lexical import query_tokens, tokens, word_pairs
from kb.limits import requirements_met, within_limits
from kb.postings import Loaded, Postings, index_path
from kb.store import Store

MODES = ("hybrid", "dense", "bm25")
DEFAULT_CONFIG = RetrievalConfig()
MASKS_PER_CORPUS = 256  # distinct (where, limits, flags) masks kept per loaded corpus


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

    def __init__(self, postings: np.ndarray, lengths: np.ndarray):
        order = np.argsort(postings[:, 1], kind="stable")
        self.docs = postings[order, 0]
        self.counts = postings[order, 2].astype(np.float32)
        counts = np.bincount(postings[:, 1]) if len(postings) else np.zeros(0, dtype=np.int64)
        self.start = np.concatenate([[0], np.cumsum(counts)])
        self.lengths = lengths.astype(np.float64)
        self.size = len(lengths)
        self.average = self.lengths.mean() if self.size else 0.0

    def doc_freq(self, term_id: int | None) -> int:
        if term_id is None or term_id + 1 >= len(self.start):
            return 0
        return int(self.start[term_id + 1] - self.start[term_id])

    def scores(self, term_ids: list[int]) -> np.ndarray:
        """Every chunk's BM25 score for these terms (repeats count again, as in bm25s)."""
        scores = np.zeros(self.size, dtype=np.float32)
        for term_id in term_ids:
            span = slice(self.start[term_id], self.start[term_id + 1])
            docs, tf = self.docs[span], self.counts[span]
            df = len(docs)
            idf = np.float32(math.log(1 + (self.size - df + 0.5) / (df + 0.5)))
            tfc = tf / (self.K1 * ((1 - self.B) + self.B * self.lengths[docs] / self.average) + tf)
            scores[docs] += (idf * tfc).astype(np.float32)
        return scores


class Corpus:
    """The visible chunks and their BM25 indexes (terms, word pairs), read from the postings on disk."""

    def __init__(self, loaded: Loaded, postings: Postings):
        self.ids, self.texts, self.metas = loaded.ids, loaded.texts, loaded.metas
        self.position = {cid: i for i, cid in enumerate(self.ids)}
        self.lengths = loaded.lengths.tolist()
        self.terms = Field(loaded.terms, loaded.lengths)
        self.pairs = Field(loaded.pairs, loaded.pair_lengths)
        self._postings = postings

    @classmethod
    def load(cls, store: Store, postings: Postings | None = None) -> "Corpus":
        """The store's visible chunks; the postings are brought up to date first (a changed file only),
        and again when a publish lands meanwhile, so the corpus is one whole generation."""
        postings = postings or Postings(index_path(store))
        return cls(store.consistent(lambda: postings.current(store)), postings)

    def doc_freq(self, term: str) -> int:
        """How many chunks hold a term."""
        return self.terms.doc_freq(self._postings.lookup([term]).get(term))

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
        ids = self._postings.lookup(wanted + pairs) if self.ids else {}
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
        ids = [corpus.ids[i] for i in np.flatnonzero(allowed)]
        if not ids:
            return []
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
