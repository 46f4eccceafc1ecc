"""One synthetic case: anatomy + tumour + contrasts, from the case's own random generator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainprep.synth.anatomy import BRAIN_TISSUES, Tissue, brain_mask, make_anatomy
from brainprep.synth.contrast import class_map, render_image
from brainprep.synth.fields import Grid
from brainprep.synth.mimics import add_mimics, mimic_rng
from brainprep.synth.params import SMALL_TUMOUR_MAX_FRACTION, SynthParams
from brainprep.synth.tumour import label_files, make_tumour, read_source_label


@dataclass(frozen=True, eq=False)
class SynthCase:
    """A synthetic case with its ground-truth anatomy.

    Attributes:
        case_id: ``BRATS_001`` for index 0.
        image: float32 (X, Y, Z, 4), channels FLAIR, T1w, T1gd, T2w; 0 outside the brain (skull-stripped,
            the default) or outside the head, at least 1 inside.
        label: uint8 (X, Y, Z), MSD convention.
        tissue: uint8 (X, Y, Z), :class:`~brainprep.synth.anatomy.Tissue` values (under the tumour too) of
            what the image shows (mimics included: label 0 there): no scalp or skull in a skull-stripped
            case, so ``tissue > 0`` is exactly where the image is nonzero.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    tissue: np.ndarray


def case_rng(params: SynthParams, index: int) -> np.random.Generator:
    """The generator of case ``index``: depends on (seed, index) only, not on ``n_cases``."""
    return np.random.default_rng(np.random.SeedSequence([params.seed, index]))


def build_case(params: SynthParams, index: int) -> SynthCase:
    """Make case ``index`` (0-based) of the dataset described by ``params``."""
    rng = case_rng(params, index)
    grid = Grid(params.shape)
    tissue = make_anatomy(grid, rng)
    if params.labels_from is not None:
        files = label_files(Path(params.labels_from))
        label = read_source_label(files[index % len(files)], params.shape)
        # A real lesion may reach past our synthetic brain: make the brain hold it.
        tumour = label > 0
        outside = tumour & ~np.isin(tissue, [int(t) for t in BRAIN_TISSUES])
        tissue[outside] = Tissue.WHITE_MATTER
    else:
        label = make_tumour(
            grid,
            tissue,
            rng,
            small=params.is_small_tumour_case(index),
            patch=params.patch_size,
            max_fraction=SMALL_TUMOUR_MAX_FRACTION,
        )
    mimics = None
    if params.mimics:
        mimics = mimic_rng(params.seed, index)
        add_mimics(tissue, label, grid, params.mimics, mimics)
    image = render_image(class_map(tissue, label), grid, rng, mimics)
    if params.skull_stripped:
        # The distributed MSD / BraTS images were skull-stripped after co-registration: exactly 0 outside
        # the brain mask. The whole head is rendered first, so both settings make the same random draws
        # and a stripped case is its head case with the outside of the brain set to 0.
        outside = ~brain_mask(tissue, label)
        image[outside] = 0.0
        tissue[outside] = Tissue.BACKGROUND
    return SynthCase(params.case_id(index), image, label, tissue)


def synth_case(params: SynthParams, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Make case ``index`` (0-based; id ``BRATS_{index+1:03d}``).

    Returns:
        image float32 (X, Y, Z, 4), channels FLAIR, T1w, T1gd, T2w (integer values, 0 outside the
        brain, or outside the head when ``params.skull_stripped`` is False); label uint8 (X, Y, Z) in
        the MSD convention (0 background, 1 edema, 2 non-enhancing, 3 enhancing).
    """
    case = build_case(params, index)
    return case.image, case.label
