"""Find the canon for a question: dense (chromadb), BM25 (bm25s), and their fusion, filtered.

Filters (`--where`, an NPC's knowledge limits) are applied before ranking, to
both retrievers: a chunk the filter hides is never scored, so it cannot leak
into the top k.
"""

from __future__ import annotations

import math
import pickle
import sys
import weakref
from collections import Counter
from dataclasses import dataclass

import bm25s
import numpy as np

from ingest.text import detect_lang
from kb.config import RetrievalConfig
from kb.lexical import query_tokens, tokens, tokens_and_pairs, word_pairs
from kb.limits import requirements_met, within_limits
from kb.store import Store

MODES = ("hybrid", "dense", "bm25")
CACHE_FORMAT = 4  # bump when Corpus or the tokenizer changes, so old pickles are not reused
DEFAULT_CONFIG = RetrievalConfig()
MASKS_PER_CORPUS = 256  # distinct (where, limits, flags) masks kept per loaded corpus


@dataclass
class Hit:
    """One retrieved chunk, as `kb search --json` prints it."""

    id: str
    text: str
    score: float
    metadata: dict

    @property
    def source(self) -> str:
        return self.metadata.get("source", "")

    def to_json(self) -> dict:
        return {"id": self.id, "text": self.text, "score": round(float(self.score), 6),
                "source": self.source, "metadata": self.metadata}


class Corpus:
    """The visible chunks and their BM25 indexes (terms, word pairs), cached on disk per store generation."""

    def __init__(self, ids: list[str], texts: list[str], metas: list[dict]):
        self.ids, self.texts, self.metas = ids, texts, metas
        self.position = {cid: i for i, cid in enumerate(ids)}
        self.bm25 = bm25s.BM25()
        self.pairs: bm25s.BM25 | None = None  # None when no chunk has two words in a row (all Chinese)
        self.doc_freq: Counter = Counter()
        # Interned, each distinct term is held once while the indexes are built (peak RSS -22% at 30k chunks).
        tokenized, paired = [], []
        for text, meta in zip(texts, metas):
            terms, pairs = tokens_and_pairs(f"{meta.get('title', '')}\n{text}")
            tokenized.append(list(map(sys.intern, terms)))
            paired.append(list(map(sys.intern, pairs)))
        self.lengths = [len(terms) for terms in tokenized]
        if ids:
            for terms in tokenized:
                self.doc_freq.update(set(terms))
            self.bm25.index(tokenized, show_progress=False)
            if any(paired):
                self.pairs = bm25s.BM25()
                self.pairs.index(paired, show_progress=False)

    @classmethod
    def load(cls, store: Store) -> "Corpus":
        """The corpus for the store's current generation, from the cache when it is fresh."""
        generation = store.generation()
        cache = None if store.chroma_url else store.kb_dir / "cache" / f"corpus-v{CACHE_FORMAT}-{generation}.pkl"
        if cache and cache.exists():
            try:
                with open(cache, "rb") as fh:
                    return pickle.load(fh)
            except (OSError, pickle.PickleError, EOFError):
                pass
        corpus = cls(*store.all_chunks())
        if cache:
            try:
                cache.parent.mkdir(exist_ok=True)
                for old in cache.parent.glob("corpus-*.pkl"):
                    old.unlink()
                tmp = cache.with_suffix(".tmp")
                with open(tmp, "wb") as fh:
                    pickle.dump(corpus, fh)
                tmp.replace(cache)
            except OSError:
                pass  # a read-only store still answers, just without the cache
        return corpus

    def idf(self, term: str) -> float:
        """How rare a term is in the canon; a term the canon never uses is rarest of all."""
        return math.log(1 + (len(self.ids) + 1) / (self.doc_freq.get(term, 0) + 0.5))

    def bm25_ranking(self, query: str, allowed: np.ndarray | None, limit: int,
                     config: RetrievalConfig = DEFAULT_CONFIG) -> list[tuple[int, float]]:
        """The top ``limit`` chunk positions by BM25 score (terms plus weighted word pairs), best first.

        Zero scores are left out.

        Only the top is sorted (argpartition): at 100k chunks a full sort cost
        ~40 ms of the ~46 ms a BM25 query took (bench/scale.py).
        """
        vocab = self.bm25.vocab_dict if self.ids else {}
        wanted = query_tokens(query) if config.drop_question_words else tokens(query)
        terms = [t for t in wanted if t in vocab]
        if not terms:
            return []
        scores = self.bm25.get_scores(terms)
        pairs = [p for p in word_pairs(query) if self.pairs and p in self.pairs.vocab_dict]
        if pairs and config.pair_weight:
            scores = scores + config.pair_weight * self.pairs.get_scores(pairs)
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
    if mode == "bm25":
        ranked = corpus.bm25_ranking(query, allowed, k, config)
    elif mode == "dense":
        ranked = dense_ranking(store, corpus, query, depth, allowed)
    else:
        dense = dense_ranking(store, corpus, query, depth, allowed)
        query_lang = detect_lang(query)
        other = {pos for pos, _ in dense if corpus.metas[pos].get("lang", query_lang) != query_lang}
        ranked = fuse(corpus.bm25_ranking(query, allowed, depth, config), dense,
                      config.dense_weight[query_lang], other, corpus.lengths, config)
    return [Hit(corpus.ids[pos], corpus.texts[pos], score, corpus.metas[pos])
            for pos, score in ranked[:k]]
