"""Where Lore KB keeps what it unpacks or prepares once per user: the tiktoken files, the embedding model's copy."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def user_cache_dir() -> Path | None:
    """$XDG_CACHE_HOME/lore-kb (an absolute one), else ~/.cache/lore-kb; None when there is no home at all."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "lore-kb"
    with contextlib.suppress(RuntimeError, KeyError):
        return Path.home() / ".cache" / "lore-kb"
    return None
