"""Concurrent callers' texts embedded in one model call.

A server's request threads each embed one short question. The models here run
one call at a time (they are not re-entrant), so under load the questions
queue: embedded one by one, eight questions cost about three times the CPU of
one batch of eight (bench/serve.py). Instead, whichever waiting thread gets the
model next embeds every text queued so far, and hands each caller its vectors.
With a single caller nothing changes: its texts are the whole batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np


class Batcher:
    """Queues texts from many threads and runs ``encode`` on all that are waiting, one call at a time.

    ``encode`` maps a list of distinct texts to their vectors; ``model_lock`` is held around it,
    so batchers for one model (queries, passages) never run it at once.
    """

    def __init__(self, encode: Callable[[list[str]], dict[str, np.ndarray]], model_lock: threading.Lock):
        self._encode = encode
        self._model_lock = model_lock
        self._queue_lock = threading.Lock()
        self._queue: list[tuple[Sequence[str], Future]] = []

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The vector of each of ``texts``, by text, embedded in this thread or in another's batch."""
        mine: Future = Future()
        with self._queue_lock:
            self._queue.append((texts, mine))
        with self._model_lock:
            if not mine.done():  # no other thread took it while this one waited for the model
                self._run_queued()
        return mine.result()

    def _run_queued(self) -> None:
        with self._queue_lock:
            jobs, self._queue = self._queue, []
        try:
            vectors = self._encode(list(dict.fromkeys(t for texts, _ in jobs for t in texts)))
        except BaseException as exc:  # every waiting caller gets the model's error, not a hang
            for _, future in jobs:
                future.set_exception(exc)
            return
        for texts, future in jobs:
            future.set_result({t: vectors[t] for t in texts})
