"""The only package that talks to chromadb: the store (store.py), its embedding function (embed.py),
the writer lock of a local store (lock.py) and the vectors its writers kept for readers behind them (written.py)."""

from kb.store import override_marks  # noqa: F401  (first: chromadb's import is a quarter faster)
from kb.store.embed import DEFAULT_MODEL, MODELS, LoreEmbedding, model_dim
from kb.store.lock import write_lock
from kb.store.store import FileRecord, Run, Store, visible

__all__ = ["DEFAULT_MODEL", "MODELS", "FileRecord", "LoreEmbedding", "Run", "Store", "model_dim", "visible", "write_lock"]
