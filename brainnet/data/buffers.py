"""Batch memory that a loader reuses once the training loop has let go of it.

Decoding each batch into freshly allocated tensors looks free but is not: a 2-patch batch of 160x160x16
float16 images is 6.5 MB, which glibc serves from memory it has just returned to the kernel, so every
batch pays ~1,600 page faults (zeroed pages) before Blosc writes a byte. On 2 cores that cost the threads
loader 10-25% of its rate, varying with how glibc's arenas happened to trim
(``benchmarks/bench_streaming.py``). :class:`RecycledArrays` hands out tensors over numpy arrays it keeps,
and reuses an array only when nothing refers to it any more.

How it knows: ``torch.from_numpy(array)`` makes the tensor's storage hold a reference to ``array``; every
view or slice of that tensor keeps the storage, and a ``.numpy()`` of it keeps the tensor. So an array whose
only reference is the pool's own list is free, whatever the caller did with the tensors it was given.
That count is exact in CPython with a GIL, the interpreter torch runs on here.

One torch operation swaps a tensor's storage out from under its views: ``share_memory_()`` (also run
when a tensor is put on a ``torch.multiprocessing`` queue) moves the data to shared memory and drops the
array. A ``.numpy()`` view taken before it would then read whatever batch reuses the array next (without
the pool it would read freed memory), so send a copy, or share before taking views.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

import numpy as np
import torch

# sys.getrefcount(self._arrays[shape][i]): the list's reference plus the call's argument
_UNREFERENCED = 2


class RecycledArrays:
    """Tensors over reusable numpy arrays, safe to share between threads.

    Args:
        capacity: arrays kept per (shape, dtype); beyond it, :meth:`tensor` allocates arrays it does not
            keep (a caller holding many batches at once then costs memory, never a wrong batch).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self._arrays: dict[tuple[tuple[int, ...], np.dtype], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def tensor(self, shape: Sequence[int], dtype: np.dtype | type) -> torch.Tensor:
        """A tensor of ``shape`` and numpy ``dtype`` with arbitrary contents, over memory no live tensor
        or array uses (it is reused once the returned tensor and all its views are gone)."""
        key = (tuple(int(s) for s in shape), np.dtype(dtype))
        with self._lock:  # the check and the hand-out must be one step for other threads
            arrays = self._arrays.setdefault(key, [])
            for i in range(len(arrays)):
                if sys.getrefcount(arrays[i]) == _UNREFERENCED:
                    return torch.from_numpy(arrays[i])
            array = np.empty(key[0], dtype=key[1])
            if len(arrays) < self.capacity:
                arrays.append(array)
            return torch.from_numpy(array)

    @property
    def kept(self) -> int:
        """Arrays the pool holds, in use or free."""
        with self._lock:
            return sum(len(arrays) for arrays in self._arrays.values())
