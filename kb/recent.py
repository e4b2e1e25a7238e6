"""What a corpus read from disk last, kept by key up to a total weight: a server's players ask for the same few
chunks and terms again and again."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable


class Recent:
    """Values by key, the least recently used let go first once their weights add up to more than ``limit``."""

    def __init__(self, limit: int, weight: Callable[[object], int] = lambda value: 1):
        self._limit, self._weight = limit, weight
        self._kept: OrderedDict = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()  # a server's request threads share a corpus

    def items(self) -> list[tuple]:
        """The kept (key, value) pairs, the least recently used first."""
        with self._lock:
            return list(self._kept.items())

    def get(self, keys: Iterable[Hashable], read: Callable[[list], dict]) -> dict:
        """Each key's value: a kept one, else from ``read(missing keys)`` (a dict), which is then kept."""
        keys = list(keys)
        with self._lock:
            found = {key: self._kept[key] for key in keys if key in self._kept}
            for key in found:
                self._kept.move_to_end(key)
        missing = [key for key in keys if key not in found]
        if missing:
            loaded = read(missing)
            found.update(loaded)
            with self._lock:
                for key, value in loaded.items():
                    if key not in self._kept:
                        self._kept[key] = value
                        self._total += self._weight(value)
                while self._total > self._limit:
                    self._total -= self._weight(self._kept.popitem(last=False)[1])
        return found
