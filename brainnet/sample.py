"""``brainnet sample``: what training reads, written down: N samples of a patch or a volume store.

Of either kind, the first ``count`` patches ``brainnet train --seed`` reads, in its order: from a patch
store its shard-shuffled passes over the stored patches (:func:`brainnet.train.loop.patch_order`), from a
volume store its stream of fresh windows (:func:`brainnet.train.loop.volume_draws`), across epochs; or for
``split="val"`` what validation scores (the stored val patches in order; a volume store's val windows),
standardized as training reads them. Both give the
same arrays, so the two kinds can be compared side by side; a PNG shows the middle axial slice of each.

:func:`sample_training` (``brainnet sample --augment``) shows instead the first ``count`` patches a
training run with a given :class:`~brainnet.train.TrainConfig` trains on (rank 0), augmented as its steps
augment them: the run's own stream, augmenter and step keys (:func:`brainnet.train.loop.training_stream`,
:func:`~brainnet.train.loop.training_augmenter`, :func:`~brainnet.train.loop.step_augment`), so the draws
depend on the seed and on the batch size, as training's do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from brainnet.data.volume_sampler import KINDS, WindowSamplingParams
from brainprep.errors import ConfigError

#: tiles per row of the PNG
TILES_PER_ROW = 8


def sample_store(store: Any, count: int, seed: int, split: str | None = "train", params: Any = None) -> dict:
    """``count`` samples of an open store.

    Args:
        split: ``train``, ``val`` or ``None`` (every case); a volume store's ``val`` gives the windows
            validation scores (at most its ``draws_per_epoch``).
        params: a volume store's :class:`~brainnet.data.volume_sampler.WindowSamplingParams` (default:
            ``brainnet train``'s).

    Returns:
        ``image`` float16 (N, 4, X, Y, Z) standardized, ``label`` uint8 (N, X, Y, Z), ``case`` int64 (N,),
        ``corner`` int64 (N, 3) on the case's source (RAS) grid, ``kind`` (N,) str (``patch`` for a patch
        store; ``tumour`` / ``foreground`` / ``brain`` for a volume store).
    """
    from brainprep.store.volume_reader import VolumeStore

    if isinstance(store, VolumeStore):
        from brainnet.train.loop import volume_draws

        train = split != "val"
        draws = volume_draws(store, params or WindowSamplingParams(), seed, split, train)
        per_epoch = draws.params.draws_per_epoch
        if not train and count > per_epoch:
            raise ConfigError(f"validation reads {per_epoch} windows of {store.location}, asked for {count}")
        method = draws.params.standardize or store.params.standardize.method
        # training's stream: position p of each epoch, then the next epoch
        picked = [draws.draw(p // per_epoch, p % per_epoch) for p in range(count)]
        windows = [store.read_window(d.case, d.corner, standardize=method) for d in picked]
        return {
            "image": np.stack([w[0] for w in windows]).astype(np.float16),
            "label": np.stack([w[1] for w in windows]),
            "case": np.array([d.case for d in picked], dtype=np.int64),
            "corner": np.stack([store.corner_on_source(d.case, d.corner) for d in picked]),
            "kind": np.array([d.kind for d in picked], dtype=f"<U{max(map(len, KINDS))}"),
        }
    from brainnet.train import TrainConfig
    from brainnet.train.loop import patch_order

    slots = patch_order(store, TrainConfig(seed=seed), split, count)
    images, labels = store.read_patches(slots)
    return {
        "image": images.astype(np.float16),
        "label": labels,
        "case": store.table.case[slots].astype(np.int64),
        "corner": store.table.corner[slots].astype(np.int64),
        "kind": np.full(count, "patch"),
    }


def sample_training(store: Any, count: int, config: Any) -> dict:
    """The first ``count`` patches of training with ``config`` (rank 0), augmented as training does.

    Args:
        store: an open patch or volume store.
        count: patches (the last batch read is cut to them).
        config: the :class:`~brainnet.train.TrainConfig` of the run (seed, batch size, augmentation,
            sampling); the augmentation of step ``t`` is keyed by ``(seed, 0, t)``.

    Returns:
        As :func:`sample_store`, the image float16 of the augmented patch and its label, plus
        ``augment``: the augmentation's JSON (a 0-d str array) and ``step`` int64 (N,) the step of each.
    """
    from brainnet.data.dataset import augmented_inputs
    from brainnet.train.loop import is_volume_store, step_augment, training_augmenter, training_stream

    stream, augmenter = training_stream(store, config), training_augmenter(store, config)
    volume = is_volume_store(store)
    parts: dict[str, list] = {k: [] for k in ("image", "label", "case", "corner", "kind", "step")}
    step = 0
    while sum(map(len, parts["step"])) < count:
        batch, epoch = stream.next(), stream.sampler.epoch  # the epoch the batch was drawn from
        augment = step_augment(augmenter, config.seed, 0, step)
        image, label = augmented_inputs(batch, "cpu", augment)  # what to_training_batch one-hot encodes
        parts["image"].append(image.numpy().astype(np.float16))
        parts["label"].append(label.numpy())
        if volume:
            cases = batch["case"].numpy()
            parts["corner"].append(
                np.stack(
                    [
                        store.corner_on_source(c, x)
                        for c, x in zip(cases, batch["corner"].numpy(), strict=True)
                    ]
                )
            )
            parts["kind"].append([stream.dataset.draws.draw(epoch, int(p)).kind for p in batch["slot"]])
        else:
            slots = batch["slot"].numpy()
            cases = store.table.case[slots]
            parts["corner"].append(store.table.corner[slots])
            parts["kind"].append(["patch"] * len(slots))
        parts["case"].append(cases)
        parts["step"].append(np.full(len(cases), step))
        step += 1
    samples = {k: np.concatenate(v)[:count] for k, v in parts.items()}
    samples["case"], samples["corner"] = samples["case"].astype(np.int64), samples["corner"].astype(np.int64)
    samples["step"] = samples["step"].astype(np.int64)
    samples["kind"] = samples["kind"].astype(f"<U{max(map(len, (*KINDS, 'patch')))}")
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
