"""Token data: a memory-mapped token file or the built-in offline byte corpus.

Batches are a pure function of (seed, batch index): the global batch of
`batch_size * world` sequences is drawn first and each rank reads its own slice.
So a resume continues exactly where its checkpoint left off (the checkpoint
stores the batch index), "skip the next N batches" is `index += N`, and one
process with the whole batch sees the same data as N ranks with slices of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

CORPUS_BYTES = 8 << 20  # cap on the built-in corpus: enough for demos, read in well under a second


def builtin_corpus(max_bytes: int = CORPUS_BYTES) -> np.ndarray:
    """The Python standard library's own sources as byte tokens (vocab 256): text every machine has."""
    src = Path(os.__file__).parent
    chunks, total = [], 0
    for path in sorted(src.rglob("*.py")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)


class TokenData:
    """Deterministic (x, y) batches of next-token prediction from a flat token array."""

    def __init__(self, tokens: np.ndarray, *, seq_len: int, batch_size: int, seed: int, vocab_size: int, source: str):
        if len(tokens) < seq_len + 2:
            raise ValueError(f"{source} holds {len(tokens):,} tokens; need more than seq_len + 1 = {seq_len + 1}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.vocab_size = vocab_size
        self.source = source

    @classmethod
    def open(cls, path: str, *, dtype: str, vocab_size: int, **kw) -> TokenData:
        if not path:
            return cls(builtin_corpus(), vocab_size=vocab_size, source="built-in corpus (Python stdlib sources)", **kw)
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"data.path {path!r} is not a file")
        item = np.dtype(dtype).itemsize
        if p.stat().st_size % item:
            raise ValueError(f"data.path {path!r}: its size is not a multiple of {item} bytes; is data.dtype right?")
        return cls(np.memmap(p, dtype=dtype, mode="r"), vocab_size=vocab_size, source=str(p), **kw)

    def batch(self, index: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `index` for `rank`: int64 tensors x, y of shape (batch_size, seq_len)."""
        rng = np.random.default_rng([self.seed, index])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size * world)
        mine = starts[rank * self.batch_size : (rank + 1) * self.batch_size]
        rows = np.stack([np.asarray(self.tokens[s : s + self.seq_len + 1], dtype=np.int64) for s in mine])
        top = int(rows.max())
        if top >= self.vocab_size:
            raise ValueError(f"{self.source} holds token id {top}, beyond the model's vocab_size {self.vocab_size}")
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def tokens_per_batch(self, world: int = 1) -> int:
        return self.batch_size * self.seq_len * world
