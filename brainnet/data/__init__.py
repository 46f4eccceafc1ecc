"""Data stage of brainnet: patch datasets over brainprep stores, shard-aware samplers, loaders."""

from brainnet.data.dataset import PatchDataset, split_slots, to_training_batch
from brainnet.data.loader import make_loader
from brainnet.data.sampler import (
    ShardShuffleSampler,
    filter_by_tumour_fraction,
    shard_window_order,
    split_for_rank,
    tumour_weights,
)

__all__ = [
    "PatchDataset",
    "ShardShuffleSampler",
    "filter_by_tumour_fraction",
    "make_loader",
    "shard_window_order",
    "split_for_rank",
    "split_slots",
    "to_training_batch",
    "tumour_weights",
]
