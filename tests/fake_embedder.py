"""A small deterministic embedding model for unit tests, registered beside the real ones.

Each folded word is hashed into one of 64 dimensions, so texts that share words
are near and texts that share none are orthogonal: rankings are predictable and
a store builds in milliseconds. End-to-end tests keep the real model.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from ingest.text import fold

NAME = "fake-hashed-words"
_WORD = re.compile(r"\w+")


class HashedWords:
    """Bag of hashed words: the cosine of two texts is the overlap of their vocabularies."""

    dim = 64

    def passages(self, texts):
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(fold(text)):
                vectors[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return vectors

    queries = passages
