"""``brainnet sample``: what training reads, written down: N samples of a patch or a volume store.

From a patch store, ``count`` stored patches drawn uniformly (with replacement) from the valid slots of
the split; from a volume store, the first ``count`` draws of epoch 0 of the training stream
(:class:`~brainnet.data.volume_sampler.VolumeDraws`), standardized as training reads them. Both give the
same arrays, so the two kinds can be compared side by side; a PNG shows the middle axial slice of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from brainnet.data.volume_sampler import KINDS, VolumeDraws, WindowSamplingParams

#: tiles per row of the PNG
TILES_PER_ROW = 8


def sample_store(store: Any, count: int, seed: int, split: str | None = "train", params: Any = None) -> dict:
    """``count`` samples of an open store.

    Returns:
        ``image`` float16 (N, 4, X, Y, Z) standardized, ``label`` uint8 (N, X, Y, Z), ``case`` int64 (N,),
        ``corner`` int64 (N, 3) on the case's source (RAS) grid, ``kind`` (N,) str (``patch`` for a patch
        store; ``tumour`` / ``foreground`` / ``brain`` for a volume store).
    """
    from brainprep.store.volume_reader import VolumeStore

    if isinstance(store, VolumeStore):
        params = params or WindowSamplingParams(draws_per_epoch=count)
        draws = VolumeDraws(store, split, params, seed=seed)
        method = params.standardize or store.params.standardize.method
        picked = [draws.draw(0, p) for p in range(count)]
        windows = [store.read_window(d.case, d.corner, standardize=method) for d in picked]
        return {
            "image": np.stack([w[0] for w in windows]).astype(np.float16),
            "label": np.stack([w[1] for w in windows]),
            "case": np.array([d.case for d in picked], dtype=np.int64),
            "corner": np.stack([store.corner_on_source(d.case, d.corner) for d in picked]),
            "kind": np.array([d.kind for d in picked], dtype=f"<U{max(map(len, KINDS))}"),
        }
    slots = store.patch_indices(split)
    slots = np.sort(np.random.default_rng(seed).choice(slots, size=count, replace=True))
    images, labels = store.read_patches(slots)
    return {
        "image": images.astype(np.float16),
        "label": labels,
        "case": store.table.case[slots].astype(np.int64),
        "corner": store.table.corner[slots].astype(np.int64),
        "kind": np.full(count, "patch"),
    }


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
