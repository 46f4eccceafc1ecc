"""MRI intensities: per-class contrasts of the four sequences, bias field, Rician noise.

Relative signal of each tissue / tumour class (white matter = 1 in every sequence), after the usual
appearance of gliomas on the BraTS sequences:

- FLAIR: CSF suppressed (dark); edema the brightest; the core and the rim bright too.
- T1w: white matter brighter than grey, CSF dark; the tumour hypointense, the necrotic core darkest.
- T1gd: as T1w, but the enhancing rim takes up gadolinium and is the brightest structure.
- T2w: CSF brightest; edema and the (fluid-rich) necrotic core bright.
Scalp fat is bright on T1 and T2, cortical bone dark on everything (but above zero: it is inside the head).
"""

from __future__ import annotations

import numpy as np

from brainprep.spec import CHANNEL_NAMES
from brainprep.synth.anatomy import Tissue
from brainprep.synth.fields import Grid, interpolated_noise, smooth_field
from brainprep.synth.mimics import mimic_signal_table

#: rows: Tissue values 0..5, then edema, non-enhancing core, enhancing rim (tissue code 5 + MSD label);
#: columns: FLAIR, T1w, T1gd, T2w.
RELATIVE_SIGNAL = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # background
        [1.30, 1.60, 1.60, 1.40],  # scalp (fat)
        [0.12, 0.15, 0.15, 0.12],  # skull (cortical bone)
        [0.25, 0.35, 0.40, 3.00],  # CSF
        [1.20, 0.78, 0.80, 1.35],  # grey matter
        [1.00, 1.00, 1.00, 1.00],  # white matter
        [1.90, 0.72, 0.76, 2.10],  # edema
        [1.35, 0.48, 0.52, 2.50],  # non-enhancing / necrotic core
        [1.55, 0.85, 2.10, 1.60],  # enhancing rim
    ],
    dtype=np.float32,
)
#: white-matter signal of each channel, the scale of the stored intensities (like BraTS int16 images).
WHITE_MATTER_LEVEL = np.array([150.0, 380.0, 430.0, 95.0], dtype=np.float32)
N_CLASSES = RELATIVE_SIGNAL.shape[0]
TUMOUR_CODE_OFFSET = int(Tissue.WHITE_MATTER)
#: noise sigma of each channel relative to its white-matter level (FLAIR, T1w, T1gd, T2w). Measured on the
#: two real BraTS 2023 cases of shared/data, 5x5x5 white-matter patches (medians over patches): the
#: first-difference noise is 4.5-6.0 %, 1.3-1.8 %, 1.9-3.2 %, 3.8-5.4 % of the patch mean; the patch
#: std / mean, which includes real tissue variation, 8.5-9.8 %, 2.5-2.6 %, 4.4-4.7 %, 7.0-8.4 %. The noise is
#: interpolated (:func:`~brainprep.synth.fields.interpolated_noise`), so its first-difference level is
#: sqrt(1/3) = 0.58 of these sigmas: under the real values, like the patch std / mean (with texture).
NOISE_SHARE = np.array([0.05, 0.02, 0.025, 0.045], dtype=np.float32)
BIAS_STRENGTH = 0.12  # std of the log bias field
TEXTURE_STRENGTH = 0.03

if RELATIVE_SIGNAL.shape[1] != len(CHANNEL_NAMES) or NOISE_SHARE.shape != (len(CHANNEL_NAMES),):
    raise RuntimeError("RELATIVE_SIGNAL and NOISE_SHARE need one column per channel")  # pragma: no cover


def class_map(tissue: np.ndarray, label: np.ndarray) -> np.ndarray:
    """uint8 (X, Y, Z): the tissue code, or ``5 + label`` inside the tumour."""
    return np.where(label > 0, label + np.uint8(TUMOUR_CODE_OFFSET), tissue).astype(np.uint8)


def draw_signal_table(rng: np.random.Generator) -> np.ndarray:
    """(N_CLASSES, 4) float32 signal of each class and channel for one case (scanner variation)."""
    jitter = rng.uniform(0.95, 1.05, RELATIVE_SIGNAL.shape).astype(np.float32)
    jitter[Tissue.WHITE_MATTER] = 1.0
    level = WHITE_MATTER_LEVEL * rng.uniform(0.75, 1.3, len(CHANNEL_NAMES)).astype(np.float32)
    return RELATIVE_SIGNAL * jitter * level[None, :]


def render_image(
    classes: np.ndarray, grid: Grid, rng: np.random.Generator, mimic_rng: np.random.Generator | None = None
) -> np.ndarray:
    """Intensities of the four channels.

    Signal = class contrast x tissue texture x per-channel smooth multiplicative bias field, then
    Rician noise (magnitude of a complex signal with Gaussian noise in both parts; the noise is
    correlated over neighbouring voxels like that of the resampled BraTS images), rounded to whole
    numbers like scanner output. Voxels outside the head are exactly 0, voxels inside at least 1.

    Args:
        classes: uint8 (X, Y, Z) from :func:`class_map`.
        grid: the whole-volume grid.
        rng: the case's generator.
        mimic_rng: the generator of the case's mimics (:mod:`brainprep.synth.mimics`), needed where
            ``classes`` holds their codes; their signal is drawn from it, so ``rng`` draws the same.

    Returns:
        float32 (X, Y, Z, 4), channels FLAIR, T1w, T1gd, T2w, integer-valued (fits int16).
    """
    table = draw_signal_table(rng)
    if mimic_rng is not None:
        table = np.concatenate([table, mimic_signal_table(table[Tissue.WHITE_MATTER], mimic_rng)])
    if int(classes.max(initial=0)) >= len(table):
        raise ValueError(f"class code {int(classes.max())} has no signal (mimics need mimic_rng)")
    # Only head voxels get signal and noise (a third of a BraTS volume): work on their flat indices.
    head = np.flatnonzero(classes.ravel())
    head_classes = classes.ravel()[head]
    texture = smooth_field(grid, 3.0, rng).ravel()[head]
    texture *= np.float32(TEXTURE_STRENGTH)
    texture += np.float32(1.0)
    image = np.zeros((*classes.shape, len(CHANNEL_NAMES)), dtype=np.float32)
    flat = image.reshape(-1, len(CHANNEL_NAMES))
    for channel in range(len(CHANNEL_NAMES)):
        signal = table[:, channel][head_classes]
        signal *= texture
        signal *= np.exp(np.float32(BIAS_STRENGTH) * smooth_field(grid, 60.0, rng).ravel()[head])
        sigma = NOISE_SHARE[channel] * table[Tissue.WHITE_MATTER, channel]
        real = signal + sigma * interpolated_noise(grid.shape, rng).ravel()[head]
        imaginary = sigma * interpolated_noise(grid.shape, rng).ravel()[head]
        flat[head, channel] = np.maximum(np.rint(np.sqrt(real * real + imaginary * imaginary)), 1.0)
    return image
