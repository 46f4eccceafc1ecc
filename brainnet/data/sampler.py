"""Which patches a rank reads in which order: shard-aware shuffling, DDP splitting, tumour filtering.

A store keeps the K patches of one case in one Zarr shard (slots ``case*K .. case*K+K-1``), so reading
patches in a fully random order costs one shard lookup per patch. :func:`shard_window_order` shuffles
cheaply instead: it shuffles the order of the shards, then shuffles patches only inside a window of a few
consecutive shards, so a batch touches at most ``window`` shards and neighbouring batches reuse them.

Everything here works on *positions* ``0..n-1`` of a :class:`brainnet.data.dataset.PatchDataset` (one
position per selected slot) and on the per-slot table of the store, never on image data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.utils.data

from brainprep.errors import ConfigError

REMAINDERS = ("pad", "drop", "uneven")


def filter_by_tumour_fraction(
    slots: np.ndarray, tumour_fraction: np.ndarray, min_tumour_fraction: float
) -> np.ndarray:
    """Keep the slots whose stored tumour fraction is at least ``min_tumour_fraction``.

    Args:
        slots: int64 (n,) store slots.
        tumour_fraction: float32 (N,) the store's ``patch_tumour_fraction`` table (indexed by slot).
        min_tumour_fraction: threshold in [0, 1]; 0 keeps everything.

    Returns:
        int64 (m,) the kept slots, in their input order.
    """
    if not 0.0 <= min_tumour_fraction <= 1.0:
        raise ConfigError(f"min_tumour_fraction must be in [0, 1], got {min_tumour_fraction}")
    slots = np.asarray(slots, dtype=np.int64)
    return slots[np.asarray(tumour_fraction)[slots] >= min_tumour_fraction]


def tumour_weights(tumour_fraction: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Sampling weights proportional to the tumour fraction, with a floor so no patch has weight 0.

    Args:
        tumour_fraction: float (n,) fractions in [0, 1].
        floor: smallest weight.

    Returns:
        float64 (n,) weights summing to 1.
    """
    weights = np.maximum(np.asarray(tumour_fraction, dtype=np.float64), floor)
    return weights / weights.sum()


def shard_window_order(shards: np.ndarray, rng: np.random.Generator, window: int) -> np.ndarray:
    """A random permutation of positions that reads shard by shard.

    The shards are put in random order and cut into groups of ``window`` consecutive shards; the
    positions of each group are shuffled together. Every position appears exactly once.

    Args:
        shards: int (n,) shard (case) id of each position.
        rng: the generator of this epoch.
        window: shards per shuffling window (>= 1).

    Returns:
        int64 (n,) permutation of ``0..n-1``.
    """
    shards = np.asarray(shards)
    unique, inverse = np.unique(shards, return_inverse=True)
    shard_rank = np.empty(len(unique), dtype=np.int64)
    shard_rank[rng.permutation(len(unique))] = np.arange(len(unique))
    group = shard_rank[inverse] // window
    # Sort by window group, random order inside a group: lexsort's last key is the primary one.
    return np.lexsort((rng.random(len(shards)), group)).astype(np.int64)


def split_for_rank(order: np.ndarray, rank: int, world_size: int, remainder: str) -> np.ndarray:
    """The contiguous part of a global order that one rank reads.

    Contiguous blocks (not ``order[rank::world]``) keep each rank on its own shards.

    Args:
        order: int64 (n,) the global order of this epoch.
        remainder: what to do when ``n`` is not a multiple of ``world_size``:
            ``pad`` repeats the first positions of the order so every rank gets ``ceil(n / world)``
            (a few patches are seen twice per epoch, as torch's DistributedSampler does);
            ``drop`` drops the last ``n mod world`` positions (a few patches unseen this epoch);
            ``uneven`` gives ranks lengths differing by at most one (every patch exactly once; only for
            loops that do not synchronise per step, e.g. validation with a final all-reduce).
    """
    n = len(order)
    if remainder == "pad":
        per_rank = -(-n // world_size)
        if n and per_rank * world_size > n:
            order = np.concatenate([order, np.resize(order, per_rank * world_size - n)])
        return order[rank * per_rank : (rank + 1) * per_rank]
    if remainder == "drop":
        per_rank = n // world_size
        return order[rank * per_rank : (rank + 1) * per_rank]
    if remainder == "uneven":
        return np.array_split(order, world_size)[rank]
    raise ConfigError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")


class ShardShuffleSampler(torch.utils.data.Sampler[int]):
    """Yields dataset positions for one rank, reshuffled per epoch, shard-aware.

    All ranks build the same global order from ``(seed, epoch)`` and each takes its contiguous block
    (:func:`split_for_rank`), so over all ranks every position is read exactly once per epoch (with
    ``remainder="pad"``/``"drop"`` up to ``world_size - 1`` positions are repeated/skipped; see there).
    With ``weights``, the epoch instead draws ``num_samples`` positions with replacement in proportion
    to the weights, then orders them shard-aware the same way.

    ``set_epoch(e)`` selects the permutation; ``start`` skips the first positions of this rank's part
    (resuming mid-epoch). :meth:`state_dict` / :meth:`load_state_dict` hold both.

    Args:
        shards: int (n,) shard id of each dataset position.
        shuffle: shuffle (training) or keep the dataset order (validation).
        seed: base seed; the epoch's generator is ``default_rng([seed, epoch])``.
        window: shards per shuffling window.
        rank, world_size: this process's place in a distributed run.
        remainder: ``pad``, ``drop`` or ``uneven`` (see :func:`split_for_rank`).
        weights: optional float (n,) sampling weights (then sampling is with replacement).
        num_samples: positions drawn per epoch with ``weights`` (default ``n``).
    """

    def __init__(
        self,
        shards: np.ndarray,
        *,
        shuffle: bool = True,
        seed: int = 0,
        window: int = 4,
        rank: int = 0,
        world_size: int = 1,
        remainder: str = "pad",
        weights: np.ndarray | None = None,
        num_samples: int | None = None,
    ) -> None:
        self.shards = np.asarray(shards, dtype=np.int64)
        if window < 1:
            raise ConfigError(f"shuffle window must be >= 1 shard, got {window}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if remainder not in REMAINDERS:
            raise ConfigError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != self.shards.shape or (weights < 0).any() or weights.sum() <= 0:
                raise ConfigError(
                    f"weights must be {self.shards.shape[0]} non-negative numbers with a positive sum, "
                    f"found shape {weights.shape}"
                )
            weights = weights / weights.sum()
        self.shuffle = shuffle
        self.seed = int(seed)
        self.window = int(window)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.remainder = remainder
        self.weights = weights
        self.num_samples = int(num_samples) if num_samples is not None else len(self.shards)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of ``epoch``; skip the first ``start`` positions of this rank's part."""
        self.epoch = int(epoch)
        self.start = int(start)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_epoch(int(state["epoch"]), int(state["start"]))

    def global_order(self) -> np.ndarray:
        """int64: the order of all ranks together in this epoch (before splitting)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            drawn = rng.choice(len(self.shards), size=self.num_samples, replace=True, p=self.weights)
            drawn.sort()
            if not self.shuffle:
                return drawn.astype(np.int64)
            return drawn[shard_window_order(self.shards[drawn], rng, self.window)].astype(np.int64)
        if not self.shuffle:
            return np.arange(len(self.shards), dtype=np.int64)
        return shard_window_order(self.shards, rng, self.window)

    def rank_order(self) -> np.ndarray:
        """int64: this rank's positions for the epoch, ``start`` not yet applied."""
        return split_for_rank(self.global_order(), self.rank, self.world_size, self.remainder)

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_order()[self.start :].tolist())

    def __len__(self) -> int:
        total = self.num_samples if self.weights is not None else len(self.shards)
        if self.remainder == "pad":
            per_rank = -(-total // self.world_size)
        elif self.remainder == "drop":
            per_rank = total // self.world_size
        else:
            per_rank = total // self.world_size + (self.rank < total % self.world_size)
        return max(per_rank - self.start, 0)
