"""``brainnet sample``: what training reads, written down: N samples of a patch or a volume store.

Of either kind, the first ``count`` patches ``brainnet train --seed`` reads, in its order: from a patch
store its shard-shuffled passes over the stored patches (:func:`brainnet.train.loop.patch_order`), from a
volume store its stream of fresh windows across epochs, read by training's own stream
(:func:`brainnet.train.loop.training_stream`); or for ``split="val"`` what validation scores (the stored
val patches in order; a volume store's val windows). The image is what the training step receives before
augmentation (:func:`brainnet.data.dataset.augmented_inputs`, on the CPU, at ``brainnet train``'s default
batch size): a patch store's stored float16 patch as float32, a volume store's raw window standardized by
training's float32 torch code, bit for bit. Both kinds give the same arrays, so they can be compared side
by side; a PNG shows the middle axial slice of each.

:func:`sample_training` (``brainnet sample --augment``) shows instead the first ``count`` patches a
training run with a given :class:`~brainnet.train.TrainConfig` trains on (rank 0), augmented as its steps
augment them: the run's own stream, augmenter and step keys (:func:`brainnet.train.loop.training_stream`,
:func:`~brainnet.train.loop.training_augmenter`, :func:`~brainnet.train.loop.step_augment`), so the draws
depend on the seed and on the batch size, as training's do.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from brainnet.data.volume_sampler import KINDS, WindowSamplingParams
from brainprep.errors import ConfigError

#: tiles per row of the PNG
TILES_PER_ROW = 8
#: numpy dtype of ``kind``: the window rules' names and ``patch``
KIND_DTYPE = f"<U{max(map(len, (*KINDS, 'patch')))}"


def sample_store(store: Any, count: int, seed: int, split: str | None = "train", params: Any = None) -> dict:
    """``count`` samples of an open store, as training (or validation) reads them.

    Args:
        split: ``train``, ``val`` or ``None`` (every case); a volume store's ``val`` gives the windows
            validation scores (at most its ``draws_per_epoch``).
        params: a volume store's :class:`~brainnet.data.volume_sampler.WindowSamplingParams` (default:
            ``brainnet train``'s).

    Returns:
        ``image`` float32 (N, 4, X, Y, Z) standardized, as the training step receives it before augmentation;
        ``label`` uint8 (N, X, Y, Z); ``case`` str (N,) case ids (``BRATS_001``); ``case_index`` int64 (N,)
        the store's index of the case; ``corner`` int64 (N, 3) on the case's source (RAS) grid; ``kind``
        str (N,) (``patch`` for a patch store; ``tumour`` / ``foreground`` / ``brain`` for a volume store);
        ``tumour_fraction`` float32 (N,) the share of the window's voxels with label > 0 (a patch store's
        stored table value; a volume store's counted on the window read, equal to its corner table's for
        a tumour window).

    Raises:
        ConfigError: a negative seed; validation reads fewer than ``count`` patches (windows).
    """
    from brainnet.data.dataset import augmented_inputs
    from brainnet.train import TrainConfig
    from brainnet.train.loop import is_volume_store, patch_order

    config = TrainConfig(seed=seed, volume_sampling=params or WindowSamplingParams())
    if not is_volume_store(store):
        slots = patch_order(store, config, split, count)
        images, labels = store.read_patches(slots)
        return _with_case_ids(
            store, {"image": images.astype(np.float32), "label": labels, **_patch_keys(store, slots)}
        )
    dataset, batches = _volume_batches(store, config, split, count)
    parts: list[dict[str, np.ndarray]] = []
    for batch, epoch in batches:
        image, label = augmented_inputs(batch, "cpu")  # training's float32 standardization, on the CPU
        parts.append({"image": image.numpy(), "label": label.numpy().copy()})
        parts[-1].update(_window_keys(store, batch, dataset, epoch))
        if sum(len(part["label"]) for part in parts) >= count:
            break
    return _with_case_ids(store, _concatenate(parts, count))


def _volume_batches(store: Any, config: Any, split: str | None, count: int) -> tuple[Any, Iterator]:
    """The window dataset of a volume store's ``split`` and its compact batches, each with the epoch it
    was drawn from: training's own stream for ``train``; for ``val`` validation's windows and for
    ``None`` training's draws over every case (:func:`~brainnet.train.loop.volume_stream`, one process),
    read by the same dataset in batches of the same size."""
    import torch

    from brainnet.train.distributed import DistributedContext
    from brainnet.train.loop import training_stream, volume_stream

    if split == "train":
        stream = training_stream(store, config)
        return stream.dataset, _stream_batches(stream)
    context = DistributedContext(0, 1, 0, torch.device("cpu"), owns_group=False)
    dataset, sampler = volume_stream(store, config, context, split, train=split != "val")
    if split == "val" and count > len(sampler):
        raise ConfigError(f"validation reads {len(sampler)} windows of {store.location}, asked for {count}")

    def batches() -> Iterator[tuple[dict, int]]:
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            items = list(sampler)
            for start in range(0, len(items), config.batch_size):
                yield dataset.read_batch(items[start : start + config.batch_size]), epoch

    return dataset, batches()


def _stream_batches(stream: Any) -> Iterator[tuple[dict, int]]:
    """The batches of a :func:`~brainnet.train.loop.training_stream`, each with its sampler epoch."""
    while True:
        batch = stream.next()
        yield batch, stream.sampler.epoch  # next() moves to the next epoch only at its next call


def _patch_keys(store: Any, slots: np.ndarray) -> dict[str, np.ndarray]:
    """``case_index``, ``corner``, ``kind`` and ``tumour_fraction`` of a patch store's ``slots``, from its
    table."""
    table, slots = store.table, np.asarray(slots, dtype=np.int64)
    return {
        "case_index": table.case[slots].astype(np.int64),
        "corner": table.corner[slots].astype(np.int64),
        "kind": np.full(len(slots), "patch", dtype=KIND_DTYPE),
        "tumour_fraction": table.tumour_fraction[slots].astype(np.float32),
    }


def _window_keys(store: Any, batch: dict, dataset: Any, epoch: int) -> dict[str, np.ndarray]:
    """The keys of :func:`_patch_keys` for a compact batch of volume-store windows drawn in ``epoch``:
    the tumour fraction counted on each window read (its centre, when read with context)."""
    cases = batch["case"].numpy().astype(np.int64)
    label = batch["label"].numpy()  # (B, X, Y, Z) uint8, the window and its context
    if "context" in batch:  # the same margin on every window: the window is the centre
        margins = batch["context"][0].tolist()
        centre = tuple(slice(m, n - m) for m, n in zip(margins, label.shape[1:], strict=True))
        label = label[(slice(None), *centre)]
    voxels = np.count_nonzero(label, axis=(1, 2, 3))
    return {
        "case_index": cases,
        "corner": np.stack(
            [store.corner_on_source(c, x) for c, x in zip(cases, batch["corner"].numpy(), strict=True)]
        ),
        "kind": np.array([dataset.draws.draw(epoch, int(p)).kind for p in batch["slot"]], dtype=KIND_DTYPE),
        "tumour_fraction": (voxels / np.prod(label.shape[1:])).astype(np.float32),
    }


def _concatenate(parts: list[dict[str, np.ndarray]], count: int) -> dict[str, np.ndarray]:
    """The batches' arrays key by key, cut to the first ``count`` samples."""
    return {key: np.concatenate([part[key] for part in parts])[:count] for key in parts[0]}


def _with_case_ids(store: Any, samples: dict) -> dict:
    """``samples`` with ``case``: the case id (str) of each ``case_index``, from the store's cases."""
    ids = store.case_ids
    return {**samples, "case": np.array([ids[int(i)] for i in samples["case_index"]], dtype=str)}


def sample_training(store: Any, count: int, config: Any) -> dict:
    """The first ``count`` patches of training with ``config`` (rank 0), augmented as training does.

    Args:
        store: an open patch or volume store.
        count: patches (the last batch read is cut to them).
        config: the :class:`~brainnet.train.TrainConfig` of the run (seed, batch size, augmentation,
            sampling); the augmentation of step ``t`` is keyed by ``(seed, 0, t)``.

    Returns:
        As :func:`sample_store` (``tumour_fraction`` that of the window before augmentation), with the image
        float32 (N, 4, X, Y, Z) of the augmented patch, as the training step receives it, and its label,
        plus ``augment``: the augmentation's JSON (a 0-d str array) and ``step`` int64 (N,) the step of
        each.
    """
    from brainnet.data.dataset import augmented_inputs
    from brainnet.train.loop import is_volume_store, step_augment, training_augmenter, training_stream

    stream, augmenter = training_stream(store, config), training_augmenter(store, config)
    volume = is_volume_store(store)
    parts: list[dict[str, np.ndarray]] = []
    for step, (batch, epoch) in enumerate(_stream_batches(stream)):
        augment = step_augment(augmenter, config.seed, 0, step)
        image, label = augmented_inputs(batch, "cpu", augment)  # what to_training_batch one-hot encodes
        # copies: a threads loader reuses a batch's memory once it is let go
        parts.append({"image": image.numpy().copy(), "label": label.numpy().copy()})
        if volume:  # the window's keys off the batch: before augmentation
            parts[-1].update(_window_keys(store, batch, stream.dataset, epoch))
        else:
            parts[-1].update(_patch_keys(store, batch["slot"].numpy()))
        parts[-1]["step"] = np.full(len(label), step, dtype=np.int64)
        if sum(len(part["step"]) for part in parts) >= count:
            break
    samples = _with_case_ids(store, _concatenate(parts, count))
    samples["augment"] = np.array(json.dumps(config.augment.to_dict()))
    return samples


def write_png(samples: dict, path: Path) -> Path:
    """The middle axial slice of FLAIR with the labels over it, one tile per sample, into ``path``."""
    from PIL import Image

    from brainprep.show import overlay_rgb, plane_slice

    tiles = []
    for image, label in zip(samples["image"], samples["label"], strict=True):
        z = image.shape[-1] // 2
        gray = plane_slice(image[0].astype(np.float32), "axial", z)
        tiles.append(overlay_rgb(gray, plane_slice(label, "axial", z)))
    rows = [tiles[i : i + TILES_PER_ROW] for i in range(0, len(tiles), TILES_PER_ROW)]
    blank = np.zeros_like(tiles[0])
    grid = np.concatenate(
        [np.concatenate(r + [blank] * (TILES_PER_ROW - len(r)), axis=1) for r in rows], axis=0
    )
    Image.fromarray(grid).save(path)
    return Path(path)


def write_samples(samples: dict, npz: Path | str, png: Path | str | None = None) -> tuple[Path, Path | None]:
    """Write ``samples`` to ``npz`` (and their :func:`write_png` picture to ``png``): both or neither.

    Each is written under a temporary name next to it, then renamed, so a failed picture leaves no
    ``.npz`` behind and an interrupted write no half file. Missing folders are made. As numpy does,
    ``.npz`` is appended to a name without it. Returns the two paths written.
    """
    npz = Path(npz) if str(npz).endswith(".npz") else Path(f"{npz}.npz")
    targets = [npz] if png is None else [npz, Path(png)]
    # the suffix stays last: PIL picks the picture's format from it
    temporaries = [t.with_name(f".{t.name}.partial{t.suffix}") for t in targets]
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        with temporaries[0].open("wb") as file:
            np.savez_compressed(file, **samples)
        if png is not None:
            write_png(samples, temporaries[1])
        for temporary, target in zip(temporaries, targets, strict=True):
            temporary.replace(target)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
    return npz, None if png is None else Path(png)
