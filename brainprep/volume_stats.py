"""Volume store statistics from its case tables alone (no image or label chunk is read).

Per split: cases, mean crop shape, cases padded beyond their volume, corners of the crops (windows that
fit: what the uniform brain windows are drawn from), the corners of the source grids passing the course's
tumour threshold (the tumour windows' table) and their share of the grids' corners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from brainprep.store import schema
from brainprep.volume import region_corners


@dataclass(frozen=True)
class VolumeSplitStats:
    """Statistics of the cases of one split that hold a volume.

    Attributes:
        name: ``train``, ``val`` or ``all``.
        n_cases: cases.
        crop_mean: float64 (3,) mean crop shape (NaN without cases).
        n_padded: cases whose crop is padded beyond the volume (brain smaller than the patch).
        brain_corners: corners of all crops.
        grid_corners: corners of the source grids (:func:`brainprep.volume.region_corners`), the ones the
            tumour corner tables are drawn from (a tumour window may reach past the crop, as the course's).
        tumour_corners: those of the grid corners passing the threshold.
    """

    name: str
    n_cases: int
    crop_mean: np.ndarray
    n_padded: int
    brain_corners: int
    grid_corners: int
    tumour_corners: int

    @property
    def tumour_share(self) -> float:
        """Share of the grid corners passing the threshold (NaN without cases)."""
        return self.tumour_corners / self.grid_corners if self.grid_corners else float("nan")


def volume_stats(store: Any) -> list[VolumeSplitStats]:
    """Statistics per split and over ``all`` cases of an open ``VolumeStore``."""
    table = store.case_table
    out = []
    for name in (*schema.SPLIT_NAMES, "all"):
        keep = table.split != schema.EMPTY_SLOT
        if name != "all":
            keep &= table.split == schema.SPLIT_CODES[name]
        shapes = table.crop_shape[keep].astype(np.float64)
        grid = sum(_grid_corners(store, int(i)) for i in np.flatnonzero(keep))
        out.append(
            VolumeSplitStats(
                name=name,
                n_cases=int(keep.sum()),
                crop_mean=shapes.mean(axis=0) if len(shapes) else np.full(3, np.nan),
                n_padded=int((table.padding[keep].sum(axis=(1, 2)) > 0).sum()),
                brain_corners=int(table.brain_corners[keep].sum()),
                grid_corners=grid,
                tumour_corners=int(table.tumour_corners[keep].sum()),
            )
        )
    return out


def _grid_corners(store: Any, index: int) -> int:
    source_shape = store.metadata["cases"][index]["source_shape"]
    return region_corners(store.crop(index), tuple(source_shape), store.patch_size)


def format_volume_stats(stats: list[VolumeSplitStats], patch_size: tuple[int, int, int]) -> str:
    """Text report, one row per split."""
    patch = "x".join(map(str, patch_size))
    lines = [
        f"{'split':<6} {'cases':>6} {'mean crop':>16} {'padded':>7} {'crop corners':>13} "
        f"{'grid corners':>13} {'tumour corners (' + patch + ')':>30} {'share of grid':>14}"
    ]
    for s in stats:
        crop = "x".join("-" if np.isnan(v) else f"{v:.0f}" for v in s.crop_mean)
        lines.append(
            f"{s.name:<6} {s.n_cases:>6} {crop:>16} {s.n_padded:>7} {s.brain_corners:>13} "
            f"{s.grid_corners:>13} {s.tumour_corners:>30} {s.tumour_share:>14.3f}"
        )
    return "\n".join(lines)
