"""Fresh windows from a volume store: which (case, corner) each position of the training stream reads.

Draw ``p`` of epoch ``e`` depends only on ``(seed, e, p)``: its generator is
``default_rng([seed, e, p])``, so the stream is the same for any worker count or loader backend, a rank of
a DDP run reads positions ``rank, rank + world, ...`` (disjoint), and a run resumed at position ``p``
continues the very stream. Each draw is one of (issue 12):

- **tumour** (share ``tumour_share``, default a third): a case uniform among the cases with at least one
  corner passing the threshold, then a corner uniform among those corners (the store's table): the
  course's rule, exactly;
- **foreground** (share ``foreground_share``, default 0): nnU-Net's class-balanced rule: a class uniform
  among the case's tumour classes, a voxel uniform among its stored locations, the window centred on it
  and kept inside the crop (``nnunetv2`` ``DataLoader.get_bbox`` with ``force_fg``);
- **brain** (the rest): a case uniform among the cases, a corner uniform over the crop's corners.

Everything here reads the store's small tables only; :class:`VolumeWindowDataset` reads the windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data

from brainprep.config import Params
from brainprep.errors import ConfigError
from brainprep.store import volume_schema as vs

KINDS = ("tumour", "foreground", "brain")


@dataclass(frozen=True)
class WindowSamplingParams(Params):
    """How fresh windows are drawn (see the module docstring).

    Attributes:
        tumour_share: share of tumour-constrained draws.
        foreground_share: share of class-balanced foreground draws.
        draws_per_epoch: positions in one epoch of the stream.
        standardize: ``patch-slice`` or ``volume-nonzero`` (default: the store's build parameter).
    """

    tumour_share: float = 1.0 / 3.0
    foreground_share: float = 0.0
    draws_per_epoch: int = 1000
    standardize: str | None = None

    def __post_init__(self) -> None:
        shares = (self.tumour_share, self.foreground_share)
        if min(shares) < 0.0 or sum(shares) > 1.0:
            raise ConfigError(f"tumour and foreground shares must be >= 0 with a sum <= 1, got {shares}")
        if self.draws_per_epoch < 1:
            raise ConfigError(f"draws_per_epoch must be >= 1, got {self.draws_per_epoch}")


@dataclass(frozen=True)
class WindowDraw:
    """One draw: case index, corner in its crop (int64 (3,)) and which rule drew it."""

    case: int
    corner: np.ndarray
    kind: str


class VolumeDraws:
    """The draws of one split of a volume store, from its tables (loaded once, small).

    Args:
        store: an open :class:`~brainprep.store.volume_reader.VolumeStore`.
        split: ``train`` / ``val`` / ``None`` (every case with a volume).
        params: shares and stream length.
        seed: the stream's seed.
    """

    def __init__(self, store: Any, split: str | None, params: WindowSamplingParams, seed: int = 0) -> None:
        self.params, self.seed = params, int(seed)
        self.size = np.asarray(store.patch_size, dtype=np.int64)
        self.cases = store.case_indices(split)
        if len(self.cases) == 0:
            raise ConfigError(f"{store.location} has no case with a volume in split {split!r}")
        self.crop_shape = {int(i): np.asarray(store.crop(int(i)).shape, dtype=np.int64) for i in self.cases}
        tables = {int(i): store.sampling_tables(int(i)) for i in self.cases}
        self.tumour_corners = {i: t[vs.TUMOUR_CORNERS] for i, t in tables.items()}
        self.locations = {i: t[vs.CLASS_LOCATIONS] for i, t in tables.items()}
        self.tumour_cases = np.array(
            [i for i in self.cases if len(self.tumour_corners[int(i)])], dtype=np.int64
        )

    def draw(self, epoch: int, position: int) -> WindowDraw:
        """Draw ``position`` of ``epoch`` (a pure function of ``(seed, epoch, position)``)."""
        rng = np.random.default_rng([self.seed, int(epoch), int(position)])
        u = rng.random()
        if u < self.params.tumour_share and len(self.tumour_cases):
            case = int(self.tumour_cases[rng.integers(len(self.tumour_cases))])
            corners = self.tumour_corners[case]
            return WindowDraw(case, corners[rng.integers(len(corners))].astype(np.int64), "tumour")
        case = int(self.cases[rng.integers(len(self.cases))])
        highest = self.crop_shape[case] - self.size  # last corner of the crop along each axis
        rows = self.locations[case]
        if u < self.params.tumour_share + self.params.foreground_share and len(rows):
            classes = np.unique(rows[:, 0])
            chosen = rows[rows[:, 0] == classes[rng.integers(len(classes))]]
            voxel = chosen[rng.integers(len(chosen)), 1:].astype(np.int64)
            return WindowDraw(case, np.clip(voxel - self.size // 2, 0, highest), "foreground")
        return WindowDraw(case, rng.integers(0, highest + 1), "brain")


class WindowStreamSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """Yields ``(epoch, position)`` for one rank: positions ``rank, rank + world_size, ...`` of the epoch
    (``draws_per_epoch`` in all), from ``start`` on (resuming mid-epoch).

    Args:
        draws_per_epoch: positions in an epoch over all ranks.
        rank, world_size: this process's place in a distributed run.
    """

    def __init__(self, draws_per_epoch: int, *, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.total, self.rank, self.world_size = int(draws_per_epoch), int(rank), int(world_size)
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Read epoch ``epoch``, skipping this rank's first ``start`` positions."""
        self.epoch, self.start = int(epoch), int(start)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_epoch(int(state["epoch"]), int(state["start"]))

    def positions(self) -> range:
        """This rank's positions of the epoch, ``start`` applied."""
        return range(self.rank, self.total, self.world_size)[self.start :]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, p) for p in self.positions())

    def __len__(self) -> int:
        return len(self.positions())


class VolumeWindowDataset(torch.utils.data.Dataset):
    """Windows of a volume store at the draws of :class:`VolumeDraws`; indexed by ``(epoch, position)``.

    A sample is compact, as a :class:`~brainnet.data.dataset.PatchDataset`'s: ``{"image": float16 (4, X,
    Y, Z) standardized, "label": uint8 (X, Y, Z), "slot": int64 position in the stream, "case": int64,
    "corner": int64 (3,)}`` (``corner`` in the case's crop), so brainnet's training loop and both loader
    backends take it as they take patches. Pickles as its store's location (each worker reopens it).

    With ``context``, each image and label is the window with that many more voxels on each side (for a
    spatial augmentation to resample from: :func:`brainnet.augment.context_margin`), standardized as the
    window alone (:meth:`~brainprep.store.volume_reader.VolumeStore.read_window_with_context`): its
    centre is the window read without context, bit for bit. ``corner`` stays the window's.

    Args:
        store: an open volume store.
        draws: the draws of the split.
        context: (mx, my, mz) voxels beyond each face; ``(0, 0, 0)`` reads the window exactly.
    """

    def __init__(self, store: Any, draws: VolumeDraws, context: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.store, self.draws = store, draws
        self.method = draws.params.standardize or store.params.standardize.method
        self.context = tuple(int(c) for c in context)

    def __len__(self) -> int:
        return self.draws.params.draws_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: every item names its epoch (the loop calls this for any dataset)."""

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        epoch, position = item
        drawn = self.draws.draw(epoch, position)
        if any(self.context):
            image, label = self.store.read_window_with_context(
                drawn.case, drawn.corner, self.context, standardize=self.method
            )
        else:
            image, label = self.store.read_window(drawn.case, drawn.corner, standardize=self.method)
        return {
            "image": torch.from_numpy(image.astype(np.float16)),
            "label": torch.from_numpy(label),
            "slot": torch.tensor(int(position), dtype=torch.int64),
            "case": torch.tensor(drawn.case, dtype=torch.int64),
            "corner": torch.from_numpy(drawn.corner.astype(np.int64)),
        }

    def read_batch(
        self, items: list[tuple[int, int]], *, pin_memory: bool = False, buffers: Any = None
    ) -> dict:
        """The batch of ``items`` (the threads backend's call), as the DataLoader would collate it."""
        batch = torch.utils.data.default_collate([self[item] for item in items])
        return {k: v.pin_memory() for k, v in batch.items()} if pin_memory else batch
