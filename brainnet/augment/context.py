"""How much context a spatial transform reads: the margin of the window a volume store reads around a patch.

A rotated or scaled patch samples positions beyond its faces (a 160x160 patch turned by 45 degrees reaches
41% beyond them, a scale of 1.4 20%). nnU-Net therefore reads a larger window, ``initial_patch_size``
(``nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size``,
``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py:472-513`` at github.com/MIC-DKFZ/nnUNet 0e49508), and
its ``SpatialTransform`` maps it to the patch about the centre (``patch_center_dist_from_border=0,
random_crop=False``, ``trainer.py:760``). Its size comes from ``get_patch_size``
(``nnunetv2/training/data_augmentation/compute_initial_patch_size.py``): the patch's corner vector rotated
about each axis alone by the largest angle (capped at 90 degrees), the largest absolute coordinate per axis,
divided by the smallest scale of a fixed ``(0.85, 1.25)`` rather than the range the transform draws from.
That under-reads in three ways: a corner's other sign reaches further than the one it rotates, rotations
about several axes at once reach further than each alone, and nnU-Net's scales go to 0.7 (``trainer.py:763``).

:func:`context_margin` bounds instead what any draw of :class:`~brainnet.augment.config.SpatialParams`
can read: the extent ``sum_j |M_ij| h_j`` of the output grid (half-sides ``h``) under ``M`` =
:func:`~brainnet.augment.functional.rotation_scaling_matrices` is evaluated on a grid of angles over the
ranges (and 0, the angle of a sample that does not rotate) at the largest scale, plus the most the extent
can grow between grid angles (it changes by at most ``|S h|`` per radian of each angle), so a window with
this margin holds every position a rotation or a scaling reads, and the resampling reads no padding where
the scan has data. An elastic deformation adds three standard deviations of its largest magnitude (a
Gaussian displacement has no bound: a rarer, larger one reads the window's padding rule). The margin is
even on both sides, so the window's centre is the patch's and a sample that is not resampled is the
window's centre exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from brainnet.augment import functional as AF
from brainnet.augment.compose import short_axis
from brainnet.augment.config import SpatialParams

#: Step of the angle grid (0.5 degree: the bound is then within ~0.013 |S h| voxels per rotated axis).
ANGLE_STEP = math.radians(0.5)
#: Largest angle grid (rotation matrices) searched for the extent: a 3D range of +-30 degrees per axis is
#: 1.8 M; wider ones (time and memory grow as the cube of the range) take the corner radius instead.
MAX_GRID_MATRICES = 4_000_000
#: Standard deviations of the elastic displacement the margin covers.
ELASTIC_SIGMAS = 3.0


def _angles(bounds: tuple[float, float]) -> tuple[torch.Tensor, float]:
    """Grid angles (radians, float64) covering ``bounds`` (degrees) and 0, and half their largest gap."""
    low, high = (math.radians(b) for b in bounds)
    steps = max(1, math.ceil((high - low) / ANGLE_STEP))
    grid = torch.linspace(low, high, steps + 1, dtype=torch.float64)
    return torch.cat([grid, torch.zeros(1, dtype=torch.float64)]), (high - low) / steps / 2


def _largest_extent(axes: list[torch.Tensor], scales: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """float64 (3,): max over the angle grid (``axes[k]``: angles about axis k) of ``|M| @ half``.

    ``M = R2 @ (R1 R0 S)`` (:func:`~brainnet.augment.functional.rotation_scaling_matrices` turns about Z
    last): the inner product for every (X, Y) angle pair, then each Z rotation applied to all of them.
    """
    first, second = torch.meshgrid(axes[0], axes[1], indexing="ij")
    zeros = torch.zeros_like(first)
    inner = torch.stack([first, second, zeros], dim=-1).reshape(-1, 3)
    inner = AF.rotation_scaling_matrices(inner, scales.expand(len(inner), 3))
    about_z = torch.stack([torch.zeros_like(axes[2])] * 2 + [axes[2]], dim=-1)
    about_z = AF.rotation_scaling_matrices(about_z, torch.ones_like(about_z))
    extent = torch.zeros(3, dtype=torch.float64)
    for block in about_z.split(16):  # (16, P, 3, 3) at a time: a few MB
        matrices = torch.einsum("aik,pkj->apij", block, inner)
        extent = torch.maximum(extent, (matrices.abs() @ half).flatten(0, 1).amax(dim=0))
    return extent


def context_margin(spatial: SpatialParams, patch_size: Sequence[int]) -> tuple[int, int, int]:
    """Voxels to read beyond each face of a ``patch_size`` patch so that no draw of ``spatial`` reads
    outside the window (see the module docstring); ``(0, 0, 0)`` when no spatial transform can fire.

    An anisotropic patch (:func:`~brainnet.augment.compose.short_axis`) turns and scales in-plane only,
    so its short axis gets no margin.

    Args:
        spatial: the rotation, scaling and elastic parameters.
        patch_size: (X, Y, Z) of the patch the transform outputs.

    Returns:
        (mx, my, mz): the window is ``patch_size + 2 * margin``, centred on the patch.
    """
    if not spatial.active:
        return (0, 0, 0)
    size = np.asarray(patch_size, dtype=np.float64)
    half = torch.from_numpy((size - 1) / 2)
    short = short_axis(patch_size, spatial)
    turned = [0, 1, 2] if short is None else [short]  # axes rotated about
    zero = torch.zeros(1, dtype=torch.float64)
    axes, gaps = [zero] * 3, [0.0] * 3
    if spatial.p_rotation > 0:
        bounds = spatial.rotation_degrees if short is None else spatial.rotation_degrees_2d
        for axis in turned:
            axes[axis], gaps[axis] = _angles(bounds)
    largest = max(1.0, spatial.scaling[1]) if spatial.p_scaling > 0 else 1.0
    scales = torch.full((1, 3), largest, dtype=torch.float64)
    if short is not None:
        scales[0, short] = 1.0
    radius = float(torch.linalg.vector_norm(scales[0] * half))  # of the scaled patch's corners
    if math.prod(len(a) for a in axes) > MAX_GRID_MATRICES:
        # a wide 3D range: no rotated corner reaches past the radius along any axis (a safe bound,
        # exact once the range spans every orientation)
        extent = torch.full((3,), radius, dtype=torch.float64)
    else:
        extent = _largest_extent(axes, scales, half) + radius * sum(gaps)
    plane = 3 if short is None else 2
    if spatial.p_elastic > 0:
        extent += ELASTIC_SIGMAS * spatial.elastic_magnitude[1] * largest * math.sqrt(plane)
    margin = [max(0, math.ceil(float(e - h) - 1e-9)) for e, h in zip(extent, half, strict=True)]
    if short is not None:
        margin[short] = 0  # neither turned nor scaled nor deformed across the slices
    return tuple(margin)  # type: ignore[return-value]
