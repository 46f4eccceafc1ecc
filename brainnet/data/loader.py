"""Loader construction: shard-aware batches read by worker processes (torch DataLoader) or by threads.

Two backends yield the same batches in the same order:

- ``processes``: a torch DataLoader; each worker process opens its own store handle and batches reach the
  training process through shared memory. Works for every store (HDF5 needs it: h5py serializes threads).
- ``threads``: a pool of threads in the training process, each decoding a whole batch straight into its
  tensors (pinned for a GPU; :meth:`PatchDataset.read_batch`), in memory reused from batch to batch once
  the loop has let go of it (:class:`~brainnet.data.buffers.RecycledArrays`). Blosc decoding releases the
  GIL, so threads decode in parallel without the per-batch shared-memory copies of worker processes.

``auto`` (the default of ``brainnet train``) picks the faster one for the store: threads for a Zarr
store (patches or volumes, local or remote: rows (a) and (a2) of ``benchmarks/bench_streaming.py``
measure the two side by side), processes for HDF5 (:func:`resolve_backend`).
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.utils.data

from brainnet.data.buffers import RecycledArrays
from brainnet.data.collate import collate
from brainnet.data.dataset import PatchDataset
from brainnet.data.sampler import ShardShuffleSampler
from brainprep.errors import ConfigError

LOADER_BACKENDS: tuple[str, ...] = ("auto", "processes", "threads")


def resolve_backend(backend: str, dataset: Any) -> str:
    """``backend`` itself, or for ``auto`` the faster backend for ``dataset``'s store (see the module):
    ``processes`` for HDF5, whose reads h5py serializes across threads, ``threads`` otherwise."""
    if backend not in LOADER_BACKENDS:
        raise ConfigError(f"loader backend must be one of {LOADER_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    store = getattr(dataset, "store", None)
    return "processes" if getattr(store, "format", "zarr") == "hdf5" else "threads"


class ThreadedLoader:
    """Batches of ``dataset`` read by ``threads`` threads, ``prefetch`` batches ahead, in sampler order.

    Args:
        dataset: the patch dataset (its store is shared by the threads: Zarr reads are thread-safe).
        batch_sampler: yields lists of dataset positions; read afresh by every ``iter()`` (one epoch).

    Yields:
        The same compact batch dicts as the DataLoader backend.
    """

    def __init__(
        self,
        dataset: PatchDataset,
        batch_sampler: Any,
        *,
        threads: int,
        prefetch: int,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.threads = max(1, int(threads))
        self.prefetch = max(self.threads, int(prefetch))
        self.pin_memory = pin_memory
        # Batches in flight: prefetched, the one yielded, the one the loop still holds, one spare.
        self.buffers = RecycledArrays(capacity=self.prefetch + 3)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def _load(self, positions: list[int]) -> dict[str, Any]:
        # Decoded straight into the batch tensors (pinned for a GPU, else reused memory): no collate copy.
        return self.dataset.read_batch(positions, pin_memory=self.pin_memory, buffers=self.buffers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        positions = iter(self.batch_sampler)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="brainnet-loader") as pool:
            pending = deque(pool.submit(self._load, p) for p in islice(positions, self.prefetch))
            try:
                while pending:
                    batch = pending.popleft().result()
                    following = next(positions, None)
                    if following is not None:
                        pending.append(pool.submit(self._load, following))
                    yield batch
            finally:
                for future in pending:
                    future.cancel()


def make_loader(
    dataset: PatchDataset,
    sampler: ShardShuffleSampler,
    *,
    batch_size: int,
    workers: int = 0,
    device: torch.device | str = "cpu",
    prefetch_factor: int = 2,
    backend: str = "auto",
) -> torch.utils.data.DataLoader | ThreadedLoader:
    """A DataLoader reading ``batch_size`` positions of ``sampler`` per batch.

    Batches go through :meth:`PatchDataset.__getitems__`, one grouped read per batch; ``backend`` chooses
    worker processes or threads (see the module; 0 workers reads in this thread either way). Workers are not
    persistent: each epoch's iterator starts them afresh, so :meth:`PatchDataset.set_epoch` reaches them,
    and every worker reopens the store itself.

    Returns:
        A loader of compact dicts ``image`` (B, 4, X, Y, Z) in the store's dtype, ``label`` uint8
        (B, X, Y, Z), ``slot`` int64 (B,); :func:`~brainnet.data.dataset.to_training_batch` expands them.
    """
    on_cuda = torch.device(device).type == "cuda"
    batches = torch.utils.data.BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    backend = resolve_backend(backend, dataset)
    if backend == "threads" and workers > 0:
        return ThreadedLoader(
            dataset, batches, threads=workers, prefetch=prefetch_factor * workers, pin_memory=on_cuda
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=on_cuda,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=_init_worker if workers > 0 else None,
        collate_fn=collate,  # a volume store's batches come collated (brainnet.data.collate)
    )


def _init_worker(worker_id: int) -> None:
    """Give each worker its own store handle and its own numpy seed."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        # A forked worker inherits the parent's open handle; HDF5 handles must not be shared between
        # processes, so the worker swaps in a fresh store (it pickles as its location and reopens lazily).
        info.dataset.store = pickle.loads(pickle.dumps(info.dataset.store))
    # Augmentation draws its own seeded generators; this only keeps stray global RNG use per worker distinct.
    np.random.seed(torch.initial_seed() % 2**32)
