"""Map-style dataset over the patches of a brainprep store.

Position ``i`` of a :class:`PatchDataset` is store slot ``dataset.slots[i]``; the slots are chosen from the
store's patch table (split, tumour fraction) without reading any image. Each DataLoader worker gets a
pickled copy and the :class:`~brainprep.store.reader.PatchStore` reopens its handle lazily in that process.

A sample is compact, as stored: ``{"image": float16 (4, X, Y, Z) (the store's dtype), "label": uint8
(X, Y, Z), "slot": int64}``. Worker processes hand batches to the training process through shared memory,
so shipping 2 + 1 bytes per voxel instead of 4 * (4 + 3) is what keeps the loader near the store's decode
speed; :func:`to_training_batch` then makes the float32 image and the float32 one-hot target of the
store spec's foreground classes (gliomas: edema, non-enhancing and enhancing tumour, labels 1, 2, 3;
background dropped, as the course's generator does with ``y[1:]``) on the training device, where the
conversion is nearly free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.utils.data

from brainprep.errors import ConfigError
from brainprep.spec import MSD_SPEC, DatasetSpec
from brainprep.store.schema import SPLIT_CODES

if TYPE_CHECKING:
    from brainnet.data.buffers import RecycledArrays
    from brainprep.store.reader import PatchStore


def to_training_batch(
    batch: dict[str, Any],
    device: torch.device | str = "cpu",
    augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    spec: DatasetSpec = MSD_SPEC,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a compact batch to ``device`` and expand it for the network and the loss.

    Args:
        batch: ``image`` (B, 4, X, Y, Z) float16/32 and ``label`` uint8 (B, X, Y, Z), as the loader yields.
        augment: ``(image float32, label uint8) -> (image, label)`` applied on ``device`` before the
            one-hot (e.g. a bound :class:`brainnet.augment.BatchAugment`); it gets tensors of its own, so
            it may overwrite them (``inplace=True``): never the batch's.
        spec: the store's dataset spec (K = ``spec.n_classes`` foreground classes).

    Returns:
        image float32 (B, 4, X, Y, Z) and target float32 (B, K, X, Y, Z), the one-hot of labels 1..K.
    """
    image, label = augmented_inputs(batch, device, augment)
    # Not metrics.labels_to_onehot: its value check reads min/max back, a device sync on every step;
    # stored labels were validated when the store was built.
    target = torch.stack([label == value for value in range(1, spec.n_classes + 1)], dim=1).float()
    return image, target


def augmented_inputs(
    batch: dict[str, Any],
    device: torch.device | str = "cpu",
    augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The image float32 (B, 4, X, Y, Z) (standardized if the batch holds raw windows) and the label
    (B, X, Y, Z) of a compact batch on ``device``, augmented: what :func:`to_training_batch` one-hot
    encodes, and what ``brainnet sample --augment`` shows. Arguments as :func:`to_training_batch`'s."""
    image = batch["image"].to(device, non_blocking=True)
    if "standardize" in batch:  # raw windows of a volume store: standardized here, on the device
        image = standardize_batch(image, batch)
    # contiguous here: a volume store's windows are slice-major views (z-slices contiguous, the layout
    # they are standardized in); a patch store's float16 batch is converted contiguous anyway
    image = image.to(torch.float32).contiguous()
    label = batch["label"].to(device, non_blocking=True).contiguous()
    if augment is not None:
        # .to/.float return the batch's own tensors when nothing changes: copy those (the label is small)
        image = image.clone() if image.data_ptr() == batch["image"].data_ptr() else image
        label = label.clone() if label.data_ptr() == batch["label"].data_ptr() else label
        image, label = augment(image, label)
    return image, label


def standardize_batch(image: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Standardize a batch of raw volume-store windows (``image`` (B, 4, X, Y, Z) on its device) by the
    method its ``standardize`` codes name (:data:`brainnet.data.volume_sampler.STANDARDIZE_CODES`):
    ``patch-slice`` by :func:`brainnet.data.standardize.standardize_slices_torch`, ``volume-nonzero`` by the
    batch's per-case ``mean`` / ``std`` (:func:`brainnet.data.standardize.standardize_with_statistics_torch`).
    Windows read with ``context`` (int64 (B, 3), the same for all) take their ``patch-slice`` statistics
    over the footprint of the window inside it, so that centre is what it would be without the context.

    Returns:
        float32 (B, 4, X, Y, Z), a new tensor.
    """
    from brainnet.data.standardize import standardize_slices_torch, standardize_with_statistics_torch
    from brainnet.data.volume_sampler import STANDARDIZE_CODES

    codes = {int(c) for c in batch["standardize"].tolist()}
    methods = [name for name, code in STANDARDIZE_CODES.items() if code in codes]
    if len(methods) != 1 or len(codes) != 1:
        raise ConfigError(f"a batch must hold raw windows of one standardization method, found codes {codes}")
    if methods[0] == "patch-slice":
        region = None
        if "context" in batch:
            (mx, my, _), (x, y) = batch["context"][0].tolist(), image.shape[-3:-1]
            region = (slice(mx, x - mx), slice(my, y - my))
        return standardize_slices_torch(image, region)
    return standardize_with_statistics_torch(image, batch["mean"], batch["std"])


def split_slots(store: PatchStore, split: str | None) -> np.ndarray:
    """int64 slots of ``split`` (``train``, ``val`` or ``None`` for all valid slots), from the table only."""
    if split is not None and split not in SPLIT_CODES:
        raise ConfigError(f"split must be one of {tuple(SPLIT_CODES)}, got {split!r}")
    return np.asarray(store.patch_indices(split=split), dtype=np.int64)


class PatchDataset(torch.utils.data.Dataset):
    """Patches of a store, as stored (augmentation, flips included, runs on the batch on the training
    device: :mod:`brainnet.augment`).

    Args:
        store: an open :class:`~brainprep.store.reader.PatchStore`.
        slots: int64 (n,) the store slots to serve, in position order.
    """

    def __init__(self, store: PatchStore, slots: np.ndarray) -> None:
        self.store = store
        self.slots = np.asarray(slots, dtype=np.int64)
        self.epoch = 0

    @property
    def shards(self) -> np.ndarray:
        """int64 (n,) the case (= shard) index of each position, from the store table."""
        return np.asarray(self.store.table.case, dtype=np.int64)[self.slots]

    @property
    def tumour_fraction(self) -> np.ndarray:
        """float32 (n,) the stored tumour fraction of each position."""
        return np.asarray(self.store.table.tumour_fraction, dtype=np.float32)[self.slots]

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch (the loop calls this for any dataset; a stored patch does not depend on it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.slots)

    def _sample(self, position: int, image: np.ndarray, label: np.ndarray) -> dict[str, Any]:
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.uint8)),
            "slot": int(self.slots[position]),
        }

    def __getitem__(self, position: int) -> dict[str, Any]:
        slot = int(self.slots[position])
        return self._sample(position, self.store.read_image(slot), self.store.read_label(slot))

    def read_batch(
        self,
        positions: Sequence[int],
        *,
        pin_memory: bool = False,
        buffers: RecycledArrays | None = None,
    ) -> dict[str, torch.Tensor]:
        """A batch decoded straight into its tensors (no per-sample arrays, no collate copy).

        Equals ``default_collate(self.__getitems__(positions))``.

        Args:
            positions: dataset positions.
            pin_memory: allocate the tensors in pinned memory (for an asynchronous copy to a GPU; torch's
                pinned allocator caches those blocks itself).
            buffers: otherwise, take the tensors from this pool of reused memory instead of fresh memory.

        Returns:
            ``image`` (B, 4, X, Y, Z) in the store's dtype, ``label`` uint8 (B, X, Y, Z), ``slot`` int64 (B,).
        """
        positions = [int(p) for p in positions]
        slots = self.slots[positions]
        store = self.store
        image_shape = (len(slots), *store.images.shape[1:])
        label_shape = (len(slots), *store.labels.shape[1:])
        if buffers is not None and not pin_memory:
            image = buffers.tensor(image_shape, store.images.dtype)
            label = buffers.tensor(label_shape, np.uint8)
        else:
            image_dtype = torch.from_numpy(np.empty(0, dtype=store.images.dtype)).dtype
            image = torch.empty(image_shape, dtype=image_dtype, pin_memory=pin_memory)
            label = torch.empty(label_shape, dtype=torch.uint8, pin_memory=pin_memory)
        images, labels = image.numpy(), label.numpy()
        store.read_patches_into(slots, images, labels)
        return {"image": image, "label": label, "slot": torch.from_numpy(slots.copy())}

    def __getitems__(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """A batch in one read: slots sorted so the store reads each shard once (DataLoader calls this)."""
        positions = [int(p) for p in positions]
        slots = self.slots[positions]
        order = np.argsort(slots, kind="stable")
        images, labels = self.store.read_patches(slots[order])
        samples: list[dict[str, Any]] = [{}] * len(positions)
        for k, i in enumerate(order):
            samples[i] = self._sample(positions[i], images[k], labels[k])
        return samples
