"""Head geometry: scalp, skull, cerebrospinal fluid, grey matter and white matter as one tissue map.

Shapes are defined in reference millimetres (see :mod:`brainprep.synth.fields`) on RAS axes (x to the
right, y anterior, z superior), placed where the brain of a real BraTS case lies on its 240x240x155 grid
(centre about 10 mm posterior and 4 mm inferior of the volume centre).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from brainprep.synth.fields import Grid, smooth_field


class Tissue(IntEnum):
    """Values of the tissue map (uint8)."""

    BACKGROUND = 0
    SCALP = 1
    SKULL = 2
    CSF = 3
    GREY_MATTER = 4
    WHITE_MATTER = 5
    # 6-8 are the tumour classes' codes in :func:`brainprep.synth.contrast.class_map`
    HYPERINTENSITY = 9  # tumour mimics (:mod:`brainprep.synth.mimics`)
    ENHANCING_FOCUS = 10


BRAIN_TISSUES: tuple[Tissue, ...] = (
    Tissue.CSF,
    Tissue.GREY_MATTER,
    Tissue.WHITE_MATTER,
    Tissue.HYPERINTENSITY,
    Tissue.ENHANCING_FOCUS,
)

BRAIN_CENTRE_MM = np.array([0.0, -10.0, -4.0], dtype=np.float32)
BRAIN_SEMI_AXES_MM = np.array([66.0, 86.0, 63.0], dtype=np.float32)
#: superellipsoid exponent of the brain outline: a little boxier than an ellipsoid, like a real brain.
BRAIN_EXPONENT = 2.4
#: outer edge of each shell, in mm outside the brain surface.
CSF_SHELL_MM, SKULL_SHELL_MM, SCALP_SHELL_MM = 2.5, 8.5, 14.0
CORTEX_MM = 3.5
SULCUS_DEPTH_MM = 20.0
GYRUS_LENGTH_MM = 5.0


def brain_mask(tissue: np.ndarray, label: np.ndarray) -> np.ndarray:
    """What a skull-stripping tool keeps: CSF (ventricles, sulci, the thin outer layer), grey and white
    matter, and the lesion.

    Args:
        tissue: uint8 (X, Y, Z) :class:`Tissue` map.
        label: uint8 (X, Y, Z) MSD labels (the lesion already lies in the brain; counted in all the same).

    Returns:
        bool (X, Y, Z).
    """
    return np.isin(tissue, [int(t) for t in BRAIN_TISSUES]) | (label > 0)


def ellipsoid_into(
    tissue: np.ndarray,
    grid: Grid,
    centre_mm: np.ndarray,
    semi_mm: np.ndarray,
    value: int,
    where: np.ndarray | None = None,
) -> None:
    """Set ``tissue`` to ``value`` inside an axis-aligned ellipsoid, evaluated only in its bounding box.

    Args:
        tissue: uint8 (X, Y, Z), changed in place.
        grid: the whole-volume grid of ``tissue``.
        centre_mm, semi_mm: (3,) reference mm.
        where: optional bool (X, Y, Z); only voxels where it is true change.
    """
    box = grid.box(centre_mm, semi_mm)
    x, y, z = box.axes()
    inside = (
        ((x - centre_mm[0]) / semi_mm[0]) ** 2
        + ((y - centre_mm[1]) / semi_mm[1]) ** 2
        + ((z - centre_mm[2]) / semi_mm[2]) ** 2
    ) < 1.0
    if where is not None:
        inside &= where[box.slices]
    tissue[box.slices][inside] = value


def brain_distance_mm(
    grid: Grid, centre: np.ndarray, semi: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Approximate signed distance (mm, float32 (X, Y, Z)) to the brain surface, negative inside.

    The brain is a superellipsoid whose radius is modulated by a smooth field (lobes, asymmetry).
    """
    x, y, z = grid.axes()
    p = np.float32(BRAIN_EXPONENT)
    terms = [np.abs((axis - c) / s) ** p for axis, c, s in zip((x, y, z), centre, semi, strict=True)]
    radius = (terms[0] + terms[1] + terms[2]) ** (1.0 / p)
    radius *= 1.0 + np.float32(0.035) * smooth_field(grid, 30.0, rng)
    mean_semi = np.float32(np.exp(np.log(semi).mean()))
    return (radius - 1.0) * mean_semi


def make_anatomy(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Draw one head.

    Args:
        grid: the whole-volume grid (shape (X, Y, Z)).
        rng: the case's generator.

    Returns:
        uint8 (X, Y, Z) tissue map with :class:`Tissue` values; 0 outside the head.
    """
    centre = BRAIN_CENTRE_MM + rng.normal(0.0, 2.0, 3).astype(np.float32)
    semi = BRAIN_SEMI_AXES_MM * np.float32(rng.uniform(0.94, 1.04)) * rng.uniform(0.97, 1.03, 3)
    semi = semi.astype(np.float32)
    dist = brain_distance_mm(grid, centre, semi, rng)
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    tissue[dist < SCALP_SHELL_MM] = Tissue.SCALP
    tissue[dist < SKULL_SHELL_MM] = Tissue.SKULL
    tissue[dist < CSF_SHELL_MM] = Tissue.CSF
    brain = dist < 0.0
    tissue[brain] = Tissue.WHITE_MATTER

    # Cortex: a grey band under the surface, folded along the zero set of a gyral-scale field; the
    # sulcus itself (the thin core of the fold) holds CSF. |h| grows ~0.15 per mm, so |h| < 0.12 is
    # a ~1.5 mm sulcus and |h| < 1.0 puts ~3-4 mm of grey matter on each bank.
    depth = -dist
    fold = np.abs(smooth_field(grid, GYRUS_LENGTH_MM, rng))
    folded = brain & (depth < SULCUS_DEPTH_MM)
    tissue[(brain & (depth < CORTEX_MM)) | (folded & (fold < 1.0))] = Tissue.GREY_MATTER
    tissue[folded & (fold < 0.12) & (depth > 0.5)] = Tissue.CSF
    del fold, folded, depth

    # Interhemispheric fissure with medial cortex on both banks, above the arch of the corpus callosum.
    x, y, z = grid.axes()
    arch = 1.0 - ((y - centre[1] - 3.0) / 48.0) ** 2
    callosum_top = np.where(arch > 0.0, 16.0 * np.sqrt(np.maximum(arch, 0.0)), -semi[2])
    upper = z - centre[2] > callosum_top
    medial = np.abs(x - centre[0])
    tissue[brain & upper & (medial < 4.0)] = Tissue.GREY_MATTER
    tissue[brain & upper & (medial < 1.2)] = Tissue.CSF

    # Deep grey nuclei (thalami, basal ganglia), then the ventricles.
    for side in (-1.0, 1.0):
        offset = np.array([side, 1.0, 1.0], dtype=np.float32)
        ellipsoid_into(
            tissue, grid, centre + offset * [11.0, -8.0, -2.0], np.array([8.0, 12.0, 9.0]), Tissue.GREY_MATTER
        )
        ellipsoid_into(
            tissue, grid, centre + offset * [23.0, 8.0, 0.0], np.array([5.0, 14.0, 9.0]), Tissue.GREY_MATTER
        )
        ellipsoid_into(
            tissue, grid, centre + offset * [9.0, 4.0, 9.0], np.array([5.0, 26.0, 7.0]), Tissue.CSF
        )
    ellipsoid_into(
        tissue,
        grid,
        centre + np.array([0.0, -4.0, -2.0], dtype=np.float32),
        np.array([1.5, 10.0, 7.0]),
        Tissue.CSF,
    )
    return tissue
