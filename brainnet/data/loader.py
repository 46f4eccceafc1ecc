"""DataLoader construction: shard-aware batches, worker processes, pinned memory and prefetch on CUDA."""

from __future__ import annotations

import pickle

import numpy as np
import torch
import torch.utils.data

from brainnet.data.dataset import PatchDataset
from brainnet.data.sampler import ShardShuffleSampler


def make_loader(
    dataset: PatchDataset,
    sampler: ShardShuffleSampler,
    *,
    batch_size: int,
    workers: int = 0,
    device: torch.device | str = "cpu",
    prefetch_factor: int = 2,
) -> torch.utils.data.DataLoader:
    """A DataLoader reading ``batch_size`` positions of ``sampler`` per batch.

    Batches go through :meth:`PatchDataset.__getitems__`, one grouped read per batch. Workers are not
    persistent: each epoch's iterator starts them afresh, so :meth:`PatchDataset.set_epoch` reaches them,
    and every worker reopens the store itself.

    Returns:
        A loader of compact dicts ``image`` (B, 4, X, Y, Z) in the store's dtype, ``label`` uint8
        (B, X, Y, Z), ``slot`` int64 (B,); :func:`~brainnet.data.dataset.to_training_batch` expands them.
    """
    on_cuda = torch.device(device).type == "cuda"
    batches = torch.utils.data.BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=on_cuda,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=_init_worker if workers > 0 else None,
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
