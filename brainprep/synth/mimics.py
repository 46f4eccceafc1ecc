"""Tumour mimics: small lesions of healthy brain that look like edema or enhancing tumour but are not.

Real BraTS scans hold hyperintensities that are not tumour: white-matter and periventricular FLAIR/T2
hyperintensities (small-vessel disease, common at glioma ages), and structures that take up gadolinium on
T1gd (vessels, choroid plexus, dura). A model that sees only tumour-rich patches never learns that these
are background, and marks them as edema or enhancing tumour over a whole scan: the false positives the
course's patch store gives (issue 12). ``SynthParams.mimics`` puts such lesions into the synthetic brain,
away from the tumour, so the accuracy benchmark can measure that effect.

Two kinds, alternating: a *hyperintensity* (signal close to edema: bright on FLAIR and T2) and an
*enhancing focus* (bright on T1gd like the tumour's rim, near white matter elsewhere). Each is an
ellipsoid of 4-10 reference mm semi-axes in grey or white matter whose centre lies at least
``CLEARANCE_MM`` beyond its own extent from every tumour voxel. The draws come from a generator of their
own (``SeedSequence([seed, index, 1])``), so a dataset without mimics is byte for byte what it was.
"""

from __future__ import annotations

import numpy as np

from brainprep.synth.anatomy import Tissue, ellipsoid_into
from brainprep.synth.fields import Grid

#: signal relative to white matter of each mimic tissue (FLAIR, T1w, T1gd, T2w), by tissue code;
#: compare edema (1.90, 0.72, 0.76, 2.10) and the enhancing rim (1.55, 0.85, 2.10, 1.60) in
#: :data:`brainprep.synth.contrast.RELATIVE_SIGNAL`.
MIMIC_SIGNAL: dict[int, tuple[float, float, float, float]] = {
    int(Tissue.HYPERINTENSITY): (1.85, 0.82, 0.84, 2.00),
    int(Tissue.ENHANCING_FOCUS): (1.10, 0.95, 2.00, 1.15),
}
SEMI_AXES_MM = (4.0, 10.0)
CLEARANCE_MM = 10.0
#: candidate centres tried per mimic before it is left out (a brain mostly filled by tumour)
TRIES = 50


def mimic_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index``'s mimics, independent of every other draw of the case."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, 1]))


def add_mimics(
    tissue: np.ndarray, label: np.ndarray, grid: Grid, count: int, rng: np.random.Generator
) -> int:
    """Write up to ``count`` mimic lesions into ``tissue`` (in place), clear of the tumour.

    Args:
        tissue: uint8 (X, Y, Z) :class:`~brainprep.synth.anatomy.Tissue` map, changed in place.
        label: uint8 (X, Y, Z) MSD labels (not changed: mimics are background).
        grid: the whole-volume grid.
        count: number of mimics wanted (kinds alternate, a hyperintensity first).
        rng: :func:`mimic_rng` of the case.

    Returns:
        The number written (fewer than ``count`` only where no clear place was found in ``TRIES``).
    """
    matter = (tissue == Tissue.GREY_MATTER) | (tissue == Tissue.WHITE_MATTER)
    candidates = np.flatnonzero(matter & (label == 0))
    x, y, z = (axis.ravel() for axis in grid.axes())
    kinds = (Tissue.HYPERINTENSITY, Tissue.ENHANCING_FOCUS)
    written = 0
    for k in range(count):
        semi = rng.uniform(*SEMI_AXES_MM, 3).astype(np.float32)
        for _ in range(TRIES):
            i, j, m = np.unravel_index(candidates[rng.integers(len(candidates))], tissue.shape)
            centre = np.array([x[i], y[j], z[m]], dtype=np.float32)
            clear = grid.box(centre, semi + np.float32(CLEARANCE_MM))
            if not label[clear.slices].any():
                ellipsoid_into(tissue, grid, centre, semi, int(kinds[k % 2]), where=matter)
                written += 1
                break
    return written


def mimic_signal_table(level: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 (2, 4) signal of the two mimic tissues for one case: relative signal x jitter x ``level``.

    Args:
        level: float32 (4,) the case's white-matter signal per channel.
        rng: :func:`mimic_rng` of the case (after :func:`add_mimics`).
    """
    relative = np.array([MIMIC_SIGNAL[int(k)] for k in (Tissue.HYPERINTENSITY, Tissue.ENHANCING_FOCUS)])
    jitter = rng.uniform(0.95, 1.05, relative.shape)
    return (relative * jitter).astype(np.float32) * level[None, :]
