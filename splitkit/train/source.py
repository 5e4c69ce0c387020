"""Where training inputs come from: ``ActivationSource`` and the in-memory ``TensorSource``.

``get_batch(step)`` is a pure function of ``step``, so a run resumed from a checkpoint sees the
batches an uninterrupted run would (``activations.StoreSource`` serves the cached store the same way).
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

import torch


def mix_seed(*ints: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(tuple(int(i) for i in ints)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@runtime_checkable
class ActivationSource(Protocol):
    """Where training inputs come from. ``get_batch(step)`` must be a pure function of ``step``."""

    d: int
    batch_size: int
    n_tokens: int

    def get_batch(self, step: int) -> torch.Tensor:
        """Batch number ``step``: ``[batch_size, d]``, float32 or bfloat16."""
        ...


class TensorSource:
    """In-memory ``ActivationSource`` over ``x [N, d]``.

    Epoch e visits the rows in a fresh random permutation seeded by (seed, e); batch ``step`` is
    rows ``[i * batch_size, (i + 1) * batch_size)`` of its epoch's permutation. The last
    ``N mod batch_size`` rows of each permutation are skipped (they differ from epoch to epoch).
    """

    def __init__(self, x: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        if x.ndim != 2 or not x.is_floating_point():
            raise ValueError(f"TensorSource needs a float tensor [N, d], got dtype {x.dtype} shape {tuple(x.shape)}")
        if not 1 <= batch_size <= x.shape[0]:
            raise ValueError(f"TensorSource batch_size must be in [1, N={x.shape[0]}], got {batch_size}")
        self.x = x
        self.d = int(x.shape[1])
        self.batch_size = int(batch_size)
        self.n_tokens = int(x.shape[0])
        self.seed = int(seed)
        self._steps_per_epoch = self.n_tokens // self.batch_size
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def get_batch(self, step: int) -> torch.Tensor:
        if step < 0:
            raise ValueError(f"TensorSource.get_batch: step must be >= 0, got {step}")
        epoch, i = divmod(int(step), self._steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            self._perm = torch.randperm(self.n_tokens, generator=gen).to(self.x.device)
            self._epoch = epoch
        rows = self._perm[i * self.batch_size:(i + 1) * self.batch_size]
        return self.x.index_select(0, rows)

