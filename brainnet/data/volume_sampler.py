"""Fresh windows from a volume store: which (case, corner) each position of the training stream reads.

Draw ``p`` of epoch ``e`` depends only on ``(seed, e, p)``: its generator is
``default_rng([seed, e, p])``, so the stream is the same for any worker count or loader backend, a rank of
a DDP run reads positions ``rank, rank + world, ...`` (disjoint), and a run resumed at position ``p``
continues the very stream. Each draw is one of (issue 12):

- **tumour** (share ``tumour_share``, default 0): a case uniform among the cases with at least one
  corner passing the threshold, then a corner uniform among those corners (the store's table): the
  course's rule, exactly. Where no case of the split has such a corner (a split of small tumours, e.g.
  validation's, which draws only tumour windows), the tumour share is drawn by the foreground rule
  instead, and :class:`VolumeDraws` says so in one warning; where no case of the split holds a tumour
  voxel at all it refuses (:class:`~brainprep.errors.ConfigError`): no rule could find tumour;
- **foreground** (share ``foreground_share``, default a half): nnU-Net's class-balanced rule: a class
  uniform among the case's tumour classes, a voxel uniform among its stored locations, the window centred
  on it (``nnunetv2`` ``DataLoader.get_bbox`` with ``force_fg``). Unlike nnU-Net, which only keeps the
  corner from going below the data's lower bound and pads a window that runs past the far side, the
  window is kept inside the stored crop: a corner past the last one is shifted back to it, so near the far
  faces the voxel lies off-centre (still inside the window). Why: the crop already holds the whole brain
  and tumour (widened to the patch size), so keeping the window inside it loses no foreground and no
  window reads the zeros past the crop that nnU-Net's would pad with. A case holding no tumour voxel
  gets a brain window instead (nnU-Net too draws a random window for a case without foreground);
- **brain** (the rest): a case uniform among the cases, a corner uniform over the crop's corners.

Why these defaults: ``benchmarks/bench_accuracy.py`` (whole-scan Dice on held-out scans, 3 seeds) scored
half class-balanced foreground windows above a third (0.80 against 0.61 mean Dice) and a half (0.60)
tumour-constrained ones, and above MONAI's ``RandCropByPosNegLabeld`` (0.76); the README has the table.

Everything here reads the store's small tables only; :class:`VolumeWindowDataset` reads the windows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data

from brainnet.data.collate import CollatedBatch
from brainprep.config import Params
from brainprep.errors import ConfigError
from brainprep.params import STANDARDIZE_METHODS
from brainprep.store import volume_schema as vs

logger = logging.getLogger(__name__)

KINDS = ("tumour", "foreground", "brain")
#: ``standardize`` codes of a batch of raw windows (0: already standardized, as a patch store's patches)
STANDARDIZE_CODES = {"patch-slice": 1, "volume-nonzero": 2}


@dataclass(frozen=True)
class WindowSamplingParams(Params):
    """How fresh windows are drawn (see the module docstring).

    Attributes:
        tumour_share: share of tumour-constrained draws.
        foreground_share: share of class-balanced foreground draws.
        draws_per_epoch: positions in one epoch of the stream.
        standardize: ``patch-slice`` or ``volume-nonzero`` (default: the store's build parameter).
    """

    tumour_share: float = 0.0
    foreground_share: float = 0.5
    draws_per_epoch: int = 1000
    standardize: str | None = None

    def __post_init__(self) -> None:
        shares = (self.tumour_share, self.foreground_share)
        if min(shares) < 0.0 or sum(shares) > 1.0:
            raise ConfigError(f"tumour and foreground shares must be >= 0 with a sum <= 1, got {shares}")
        if self.draws_per_epoch < 1:
            raise ConfigError(f"draws_per_epoch must be >= 1, got {self.draws_per_epoch}")
        if self.standardize is not None and self.standardize not in STANDARDIZE_METHODS:
            raise ConfigError(
                f"standardize must be one of {STANDARDIZE_METHODS} or None, got {self.standardize!r}"
            )


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
        seed: the stream's seed, >= 0.

    Attributes:
        tumour_rule: the rule the tumour share is drawn by: ``tumour``, or ``foreground`` where no case of
            the split has a corner passing the threshold (logged once, as a warning; module docstring).

    Raises:
        ConfigError: a negative seed, a split without volumes, or a tumour share on a split with no
            tumour voxel at all.
    """

    def __init__(self, store: Any, split: str | None, params: WindowSamplingParams, seed: int = 0) -> None:
        if int(seed) < 0:  # numpy's SeedSequence takes no negative entropy
            raise ConfigError(f"the window sampling seed must be >= 0, got {seed} (store {store.location})")
        self.params, self.seed = params, int(seed)
        self.size = np.asarray(store.patch_size, dtype=np.int64)
        self.cases = store.case_indices(split)
        if len(self.cases) == 0:
            raise ConfigError(f"{store.location} has no case with a volume in split {split!r}")
        self.crop_shape = {int(i): np.asarray(store.crop(int(i)).shape, dtype=np.int64) for i in self.cases}
        tables = {int(i): store.sampling_tables(int(i)) for i in self.cases}
        self.tumour_corners = {i: t[vs.TUMOUR_CORNERS] for i, t in tables.items()}
        # each case's stored voxel locations split by class once (classes ascending), for cheap draws
        self.class_voxels = {
            i: [rows[rows[:, 0] == c, 1:].astype(np.int64) for c in np.unique(rows[:, 0])]
            for i, rows in ((i, t[vs.CLASS_LOCATIONS]) for i, t in tables.items())
        }
        self.tumour_cases = np.array(
            [i for i in self.cases if len(self.tumour_corners[int(i)])], dtype=np.int64
        )
        self.tumour_rule = "tumour" if len(self.tumour_cases) else self._tumour_fallback(store, split)

    def _tumour_fallback(self, store: Any, split: str | None) -> str:
        """The rule the tumour share is drawn by when no corner passes: ``foreground``, said once; or a
        refusal where no case holds a tumour voxel (every such draw would be a brain window)."""
        if self.params.tumour_share == 0:
            return "foreground"  # never used
        sampling = store.params.sampling
        where = f"{store.location} (split {split!r})"
        size, share = "x".join(map(str, sampling.patch_size)), 100 * sampling.min_tumour_fraction
        passing = (
            f"a {size} corner holding more than {share:.3g}% tumour "
            f"(background_threshold {sampling.background_threshold})"
        )
        if not any(self.class_voxels.values()):
            raise ConfigError(
                f"tumour_share {self.params.tumour_share} asks for tumour windows, but no case of {where} "
                f"has {passing} or any tumour voxel"
            )
        logger.warning(
            "no case of %s has %s: its tumour share %s is drawn as foreground windows (a stored tumour "
            "voxel inside, the class-balanced rule) instead",
            where,
            passing,
            self.params.tumour_share,
        )
        return "foreground"

    def draw(self, epoch: int, position: int) -> WindowDraw:
        """Draw ``position`` of ``epoch`` (a pure function of ``(seed, epoch, position)``)."""
        rng = np.random.default_rng([self.seed, int(epoch), int(position)])
        u = rng.random()
        tumour = u < self.params.tumour_share
        if tumour and self.tumour_rule == "tumour":
            case = int(self.tumour_cases[rng.integers(len(self.tumour_cases))])
            corners = self.tumour_corners[case]
            return WindowDraw(case, corners[rng.integers(len(corners))].astype(np.int64), "tumour")
        case = int(self.cases[rng.integers(len(self.cases))])
        if tumour or u < self.params.tumour_share + self.params.foreground_share:
            return self._foreground(case, rng)
        return self._brain(case, rng)

    def _foreground(self, case: int, rng: np.random.Generator) -> WindowDraw:
        """The class-balanced window of ``case`` (kept inside the crop), a brain one without tumour voxels."""
        classes = self.class_voxels[case]
        if not classes:
            return self._brain(case, rng)
        chosen = classes[rng.integers(len(classes))]
        voxel = chosen[rng.integers(len(chosen))]
        highest = self.crop_shape[case] - self.size  # last corner of the crop along each axis
        return WindowDraw(case, np.clip(voxel - self.size // 2, 0, highest), "foreground")

    def _brain(self, case: int, rng: np.random.Generator) -> WindowDraw:
        """A corner of ``case`` uniform over the crop's corners."""
        return WindowDraw(case, rng.integers(0, self.crop_shape[case] - self.size + 1), "brain")


class WindowStreamSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """Yields ``(epoch, position)`` for one rank: positions ``rank, rank + world_size, ...`` of the epoch,
    from ``start`` on (resuming mid-epoch).

    With ``remainder="pad"`` (training) every rank gets ``ceil(draws_per_epoch / world_size)`` positions:
    when ``world_size`` does not divide ``draws_per_epoch`` the last ranks also read positions past it,
    fresh draws like any other (a draw is a pure function of its position), so every rank runs the same
    number of steps (DDP's collectives stay matched) and is at the same place of the stream at every step
    (the one sampler state a checkpoint holds is every rank's). ``"uneven"`` (validation: no per-step
    collective) reads exactly the ``draws_per_epoch`` positions, ranks differing by at most one.

    Args:
        draws_per_epoch: positions in an epoch over all ranks (before padding).
        rank, world_size: this process's place in a distributed run.
        remainder: ``pad`` or ``uneven``.
    """

    def __init__(
        self, draws_per_epoch: int, *, rank: int = 0, world_size: int = 1, remainder: str = "pad"
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if remainder not in ("pad", "uneven"):
            raise ConfigError(f"remainder must be 'pad' or 'uneven', got {remainder!r}")
        self.total, self.rank, self.world_size = int(draws_per_epoch), int(rank), int(world_size)
        if remainder == "pad":
            self.total = -(-self.total // self.world_size) * self.world_size
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
        epoch = self.epoch  # bound now: a set_epoch while this iterator runs does not relabel it
        return ((epoch, p) for p in self.positions())

    def __len__(self) -> int:
        return len(self.positions())


class VolumeWindowDataset(torch.utils.data.Dataset):
    """Windows of a volume store at the draws of :class:`VolumeDraws`; indexed by ``(epoch, position)``.

    A sample is compact, as a :class:`~brainnet.data.dataset.PatchDataset`'s: ``{"image": (4, X, Y, Z)
    raw, in the store's dtype (float16), "label": uint8 (X, Y, Z), "slot": int64 position in the stream,
    "case": int64, "corner": int64 (3,), "standardize": int8 code of the method (:data:`STANDARDIZE_CODES`),
    and for ``volume-nonzero`` the case's "mean" and "std" float32 (4,)}`` (``corner`` in the case's crop).
    The window is standardized where the training loop expands the batch, on its device
    (:func:`~brainnet.data.dataset.to_training_batch`): the loader only decodes, as for a patch store, and
    the arithmetic runs where it is cheapest (a GPU, or the training thread's torch pool on a CPU) instead
    of in every loader thread. Pickles as its store's location (each worker reopens it).

    Images and labels are slice-major views (:func:`~brainprep.store.volume_schema.slice_major`: each
    z-slice contiguous, the memory order of the store's chunks): windows are copied out of the chunks in
    whole rows and standardized slice by slice without a transposing copy, and
    :func:`~brainnet.data.dataset.to_training_batch` lays them out C-contiguously in the float32
    conversion it makes anyway. Values and shapes are what they would be in any layout.

    With ``context``, each image and label is the window with that many more voxels on each side, for a
    spatial augmentation to resample from (:func:`brainnet.augment.context_margin`), and the sample says
    so (``"context"`` int64 (3,)): ``patch-slice`` then takes each z-slice's statistics over the window's
    own X-Y footprint (:func:`~brainnet.data.dataset.standardize_batch`), so the centre is standardized
    exactly as the window read without context. ``corner`` stays the window's.

    Args:
        store: an open volume store.
        draws: the draws of the split.
        context: (mx, my, mz) voxels beyond each face; ``(0, 0, 0)`` reads the window exactly.
    """

    def __init__(self, store: Any, draws: VolumeDraws, context: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.store, self.draws = store, draws
        self.method = draws.params.standardize or store.params.standardize.method
        self.context = tuple(int(c) for c in context)
        if len(self.context) != 3 or min(self.context) < 0:
            raise ConfigError(f"context must be 3 voxel counts >= 0, got {context}")

    @property
    def size(self) -> tuple[int, int, int]:
        """(X, Y, Z) of what a sample holds: the window and its context on either side."""
        return tuple(int(s) + 2 * c for s, c in zip(self.draws.size, self.context, strict=True))  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.draws.params.draws_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: every item names its epoch (the loop calls this for any dataset)."""

    def _read_into(self, item: tuple[int, int], image: np.ndarray, label: np.ndarray) -> WindowDraw:
        """Read the raw window of ``item`` into ``image`` (store dtype) and ``label`` (uint8)."""
        epoch, position = item
        drawn = self.draws.draw(epoch, position)
        if any(self.context):
            corner = drawn.corner - np.asarray(self.context, dtype=np.int64)
            self.store.read_window(drawn.case, corner, self.size, out=(image, label))
        else:
            self.store.read_window(drawn.case, drawn.corner, out=(image, label))
        return drawn

    def _standardize_keys(self, draws: list[WindowDraw]) -> dict[str, torch.Tensor]:
        """What :func:`~brainnet.data.dataset.to_training_batch` needs to standardize the raw windows."""
        keys = {"standardize": torch.full((len(draws),), STANDARDIZE_CODES[self.method], dtype=torch.int8)}
        if any(self.context):
            keys["context"] = torch.tensor([self.context] * len(draws), dtype=torch.int64)
        if self.method == "volume-nonzero":
            table = self.store.case_table
            keys["mean"] = torch.from_numpy(np.stack([table.mean[d.case] for d in draws]).astype(np.float32))
            keys["std"] = torch.from_numpy(np.stack([table.std[d.case] for d in draws]).astype(np.float32))
        return keys

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        size = self.size
        dtype = np.dtype(self.store.params.store.dtype)
        image, label = vs.slice_major((4, *size), dtype), vs.slice_major(size, np.uint8)
        drawn = self._read_into(item, image, label)
        sample = {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(label),
            "slot": torch.tensor(int(item[1]), dtype=torch.int64),
            "case": torch.tensor(drawn.case, dtype=torch.int64),
            "corner": torch.from_numpy(drawn.corner.astype(np.int64)),
        }
        sample.update({k: v[0] for k, v in self._standardize_keys([drawn]).items()})
        return sample

    def read_batch(
        self,
        items: list[tuple[int, int]],
        *,
        pin_memory: bool = False,
        buffers: Any = None,
        shared_memory: bool = False,
    ) -> dict:
        """The batch of ``items``, read straight into its tensors: pinned, from ``buffers``' reused memory
        (the threads backend), or in shared memory (a worker process: what the DataLoader ships to the
        training process without another copy); equals ``default_collate([self[item] for item in items])``."""
        size = self.size[::-1]  # memory (z, y, x): slice-major samples
        dtype = np.dtype(self.store.params.store.dtype)
        shapes = {"image": ((len(items), 4, *size), dtype), "label": ((len(items), *size), np.uint8)}
        if buffers is not None and not pin_memory:
            batch = {k: buffers.tensor(shape, dtype) for k, (shape, dtype) in shapes.items()}
        else:
            batch = {
                k: torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=pin_memory)
                for k, (shape, dtype) in shapes.items()
            }
            if shared_memory:
                batch = {k: v.share_memory_() for k, v in batch.items()}
        batch["image"] = batch["image"].permute(0, 1, 4, 3, 2)
        batch["label"] = batch["label"].permute(0, 3, 2, 1)
        images, labels = batch["image"].numpy(), batch["label"].numpy()
        draws = [self._read_into(item, images[i], labels[i]) for i, item in enumerate(items)]
        batch["slot"] = torch.tensor([int(p) for _, p in items], dtype=torch.int64)
        batch["case"] = torch.tensor([d.case for d in draws], dtype=torch.int64)
        batch["corner"] = torch.from_numpy(np.stack([d.corner.astype(np.int64) for d in draws]))
        batch.update(self._standardize_keys(draws))
        return batch

    def __getitems__(self, items: list[tuple[int, int]]) -> CollatedBatch:
        """A DataLoader batch in one read: :meth:`read_batch` (in shared memory in a worker process), passed
        through the loader's :func:`~brainnet.data.collate.collate` as it is (no per-sample tensors, no
        stacking copy)."""
        in_worker = torch.utils.data.get_worker_info() is not None
        return CollatedBatch(self.read_batch(items, shared_memory=in_worker))
