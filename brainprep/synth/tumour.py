"""Tumour geometry in the MSD label convention: a non-enhancing core inside an enhancing rim inside edema.

A glioblastoma-like lesion is three nested, irregular shells around one centre: the necrotic /
non-enhancing core (label 2), the enhancing rim (label 3) and the surrounding edema (label 1), which
spreads further and unevenly through the brain tissue but not into CSF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainprep.errors import ConfigError, ShapeMismatchError
from brainprep.read.nifti import read_nifti_voxels
from brainprep.spec import MSD_SPEC
from brainprep.synth.anatomy import BRAIN_CENTRE_MM, Tissue
from brainprep.synth.fields import Grid, smooth_field

EDEMA, NON_ENHANCING, ENHANCING = 1, 2, 3

#: edema radius range (reference mm) of ordinary and of small tumours.
TUMOUR_RADIUS_MM: tuple[float, float] = (24.0, 40.0)
SMALL_TUMOUR_RADIUS_MM: tuple[float, float] = (4.0, 7.0)
GROWTH_STEP = 1.25
MAX_RESIZES = 12


@dataclass(frozen=True)
class TumourShape:
    """One lesion.

    Attributes:
        centre_mm: (3,) reference mm from the volume centre.
        radius_mm: edema radius (reference mm) before the ellipsoid aspect and irregularity.
        aspect: (3,) multipliers of ``radius_mm`` per axis.
        rim: enhancing outer radius as a share of the edema radius.
        core: non-enhancing core radius as a share of the enhancing radius.
    """

    centre_mm: np.ndarray
    radius_mm: float
    aspect: np.ndarray
    rim: float
    core: float

    def scaled(self, factor: float) -> TumourShape:
        return TumourShape(self.centre_mm, self.radius_mm * factor, self.aspect, self.rim, self.core)


def draw_tumour_shape(rng: np.random.Generator, small: bool) -> TumourShape:
    """Random centre (inside the brain, off the midline), size and layer proportions."""
    low, high = SMALL_TUMOUR_RADIUS_MM if small else TUMOUR_RADIUS_MM
    side = rng.choice([-1.0, 1.0])
    offset = np.array(
        [side * rng.uniform(12.0, 38.0), rng.uniform(-45.0, 45.0), rng.uniform(-15.0, 30.0)], dtype=np.float32
    )
    return TumourShape(
        centre_mm=(BRAIN_CENTRE_MM + offset).astype(np.float32),
        radius_mm=float(rng.uniform(low, high)),
        aspect=rng.uniform(0.8, 1.2, 3).astype(np.float32),
        rim=float(rng.uniform(0.4, 0.6)),
        core=float(rng.uniform(0.45, 0.75)),
    )


def render_tumour(
    shape: TumourShape, grid: Grid, tissue: np.ndarray, fields: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """Label map of one lesion, evaluated only in its bounding box.

    Args:
        shape: the lesion.
        grid: the whole-volume grid.
        tissue: uint8 (X, Y, Z) tissue map; edema stays in grey/white matter, the core in the brain.
        fields: two float32 unit fields over the volume that make the outline irregular (or None).

    Returns:
        uint8 (X, Y, Z) labels, MSD convention.
    """
    label = np.zeros(grid.shape, dtype=np.uint8)
    half = np.float32(shape.radius_mm * 1.5) * shape.aspect
    box = grid.box(shape.centre_mm, half)
    x, y, z = box.axes()
    axes = np.float32(shape.radius_mm) * shape.aspect
    dist = np.sqrt(
        ((x - shape.centre_mm[0]) / axes[0]) ** 2
        + ((y - shape.centre_mm[1]) / axes[1]) ** 2
        + ((z - shape.centre_mm[2]) / axes[2]) ** 2
    )
    if fields is not None:
        core_dist = dist * (1.0 + np.float32(0.15) * np.clip(fields[0][box.slices], -2.0, 2.0))
        edema_dist = dist * (1.0 + np.float32(0.22) * np.clip(fields[1][box.slices], -2.0, 2.0))
    else:
        core_dist = edema_dist = dist
    box_tissue = tissue[box.slices]
    matter = (box_tissue == Tissue.GREY_MATTER) | (box_tissue == Tissue.WHITE_MATTER)
    in_brain = matter | (box_tissue == Tissue.CSF)
    enhancing_radius = np.float32(shape.rim)
    box_label = label[box.slices]
    box_label[(edema_dist < 1.0) & matter] = EDEMA
    box_label[(core_dist < enhancing_radius) & in_brain] = ENHANCING
    box_label[(core_dist < enhancing_radius * np.float32(shape.core)) & in_brain] = NON_ENHANCING
    return label


def tumour_fraction_at(label: np.ndarray, centre: tuple[int, int, int], patch: tuple[int, int, int]) -> float:
    """Tumour share of the patch (clipped into the volume) centred on voxel ``centre``."""
    corner = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, label.shape, strict=True)]
    window = label[tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))]
    return float(np.count_nonzero(window)) / float(np.prod(patch))


def make_tumour(
    grid: Grid,
    tissue: np.ndarray,
    rng: np.random.Generator,
    *,
    small: bool,
    patch: tuple[int, int, int],
    max_fraction: float,
) -> np.ndarray:
    """Draw a lesion; resize it until it fits its kind.

    A small tumour must have at most ``max_fraction`` of ``patch`` voxels in total, so no patch
    anywhere can hold more than ``max_fraction`` tumour; an ordinary one must give the patch centred
    on it more than ``max_fraction``, so at least one valid patch corner exists.

    Returns:
        uint8 (X, Y, Z) labels, MSD convention, with at least one tumour voxel.
    """
    shape = draw_tumour_shape(rng, small)
    fields = (smooth_field(grid, 12.0, rng), smooth_field(grid, 8.0, rng))
    limit = max_fraction * float(np.prod(patch))
    label = render_tumour(shape, grid, tissue, fields)
    for _ in range(MAX_RESIZES):
        count = np.count_nonzero(label)
        if small:
            if 0 < count <= limit * 0.8:
                return label
            shape = shape.scaled(1.0 / GROWTH_STEP if count else GROWTH_STEP)
        else:
            centre = tuple(int(c) for c in np.rint(np.argwhere(label).mean(axis=0))) if count else (0, 0, 0)
            if count and tumour_fraction_at(label, centre, patch) > max_fraction:  # type: ignore[arg-type]
                return label
            shape = shape.scaled(GROWTH_STEP)
        label = render_tumour(shape, grid, tissue, fields)
    if small and np.count_nonzero(label) == 0:
        # Fewer than one voxel at this resolution: mark the centre voxel as the core.
        index = tuple(
            int(np.clip(round(c / s + (n - 1) / 2), 0, n - 1))
            for c, s, n in zip(shape.centre_mm, grid.mm_per_voxel, grid.shape, strict=True)
        )
        label[index] = NON_ENHANCING
        return label
    raise ConfigError(
        f"cannot fit a {'small' if small else 'patch-filling'} tumour in a volume of shape {grid.shape} "
        f"with patch {patch}"
    )


def fit_to_shape(label: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Centre-crop or zero-pad a (X, Y, Z) array to ``shape`` (same dtype)."""
    out = np.zeros(shape, dtype=label.dtype)
    src, dst = [], []
    for have, want in zip(label.shape, shape, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = label[tuple(src)]
    return out


def label_files(folder: Path) -> list[Path]:
    """Sorted NIfTI label files of ``folder`` (macOS ``._`` resource forks skipped)."""
    files = sorted(
        p
        for p in Path(folder).iterdir()
        if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith(".")
    )
    if not files:
        raise ConfigError(f"labels_from folder {folder} holds no .nii.gz label maps")
    return files


def read_source_label(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """Read a real MSD label map and fit it to ``shape``: uint8 (X, Y, Z), MSD convention.

    The file must be in RAS orientation like the MSD files, whose identity affine we also write.
    """
    voxels = read_nifti_voxels(path)
    if len(voxels.shape) != 3:
        raise ShapeMismatchError(f"expected a 3D label map, found shape {voxels.shape}", path=path)
    raw = voxels.values()
    return fit_to_shape(MSD_SPEC.to_canonical(raw, path=path), shape)
