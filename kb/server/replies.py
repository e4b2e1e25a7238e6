"""Quoted replies kept for the store's current generation: the players of one scene ask alike.

An extractive answer depends only on the canon loaded and the request (who is
asked, the question, the turns before it, the game state, k), so a server
answers a repeated request from memory. A new store generation loads a new
corpus, and the replies kept for the old one are dropped with it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

from kb.answer import Answer
from kb.retrieve import Corpus

REPLIES = 4096  # requests remembered per generation


class Replies:
    """The last REPLIES quoted answers of one server, for the corpus they were quoted from."""

    def __init__(self, size: int = REPLIES):
        self._size = size
        self._lock = threading.Lock()
        self._corpus: weakref.ref | None = None
        self._answers: OrderedDict[tuple, Answer] = OrderedDict()

    def answer(self, corpus: Corpus, request: dict, compute: Callable[[], Answer]) -> Answer:
        """The answer to ``request`` (JSON values: model, question, history, state, k) on ``corpus``:
        ``compute()`` the first time, a copy of its answer after."""
        key = json.dumps(request, sort_keys=True, ensure_ascii=False, default=str)
        with self._lock:
            if self._corpus is None or self._corpus() is not corpus:
                self._corpus, self._answers = weakref.ref(corpus), OrderedDict()
            kept = self._answers.get(key)
            if kept is not None:
                self._answers.move_to_end(key)
        if kept is None:
            kept = compute()
            with self._lock:
                if self._corpus() is corpus:
                    self._answers[key] = kept
                    while len(self._answers) > self._size:
                        self._answers.popitem(last=False)
        return dataclasses.replace(kept, citations=list(kept.citations), retrieved=list(kept.retrieved),
                                   extra=dict(kept.extra))
