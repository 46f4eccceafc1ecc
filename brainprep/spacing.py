"""Voxel spacing: which spacing a dataset holds most, which cases differ from it, and resampling to it.

Spacings are those of the canonical RAS grid (:func:`brainprep.read.nifti.ras_spacing`, from the
header's affine), so a file stored in another axis order compares axis by axis with the others.

Two spacings are the same when every axis agrees within :data:`SPACING_RTOL` (relative): BraTS exports
write the same 1 mm grid with float rounding (differences of ~1e-7 mm, and up to the 1e-3 mm the affine
check of :mod:`brainprep.read.case` allows), while spacings of different protocols differ by tenths of a
millimetre at least (1 vs 1.2 mm, 1 vs 3 mm slices). 1e-3 sits between the two.

Resampling (:func:`resample_image`, :func:`resample_label`) uses ``scipy.ndimage.affine_transform``
with a diagonal matrix (scipy's zoom-and-shift path): images trilinear (``order=1``), labels nearest
neighbour (``order=0``, so a label map keeps only values it had). nnU-Net resamples images with
third-order splines and labels per class with linear interpolation (``resample_data_or_seg`` in
nnunetv2/preprocessing/resampling/default_resampling.py); trilinear keeps every value within the range of
its neighbours (no overshoot at the skull edge, a background stays its constant) and the nearest label
needs no class loop. The new grid has exactly the target spacing and is centred on the old one: its
voxel ``j`` lies at source voxel ``j * target / spacing + offset`` with ``offset`` putting the middle of
both grids at the same point; positions past the last source voxel (at most half a voxel) take the
edge value (``mode="nearest"``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from brainprep.errors import ConfigError
from brainprep.params import SpacingParams
from brainprep.read import CaseFiles
from brainprep.read.case import CaseArrays
from brainprep.read.nifti import ras_spacing, read_nifti_header
from brainprep.store.schema import GEOMETRY_KEYS

logger = logging.getLogger(__name__)

#: relative tolerance per axis of :func:`same_spacing` (see the module docstring)
SPACING_RTOL = 1e-3

Spacing = tuple[float, float, float]


def same_spacing(a: Sequence[float], b: Sequence[float], rtol: float = SPACING_RTOL) -> bool:
    """Whether two (x, y, z) spacings agree on every axis within ``rtol`` of the larger of the two."""
    pairs = zip(a, b, strict=True)
    return all(abs(float(u) - float(v)) <= rtol * max(abs(float(u)), abs(float(v))) for u, v in pairs)


def format_spacing(spacing: Sequence[float]) -> str:
    """``1x1x3 mm``-style text of a spacing (4 significant digits)."""
    return "x".join(f"{float(s):.4g}" for s in spacing) + " mm"


def majority_spacing(spacings: Sequence[Sequence[float] | None]) -> Spacing | None:
    """The spacing most cases share (``None`` entries, unreadable headers, are left out).

    Cases are grouped in order: each joins the first group whose first case has the same spacing
    (:func:`same_spacing`), else starts one; the largest group wins, the earliest on a tie, and its first
    case's spacing is the result. ``None`` when no spacing is given.
    """
    groups: list[tuple[Spacing, int]] = []
    for spacing in spacings:
        if spacing is None:
            continue
        for i, (first, count) in enumerate(groups):
            if same_spacing(first, spacing):
                groups[i] = (first, count + 1)
                break
        else:
            groups.append((tuple(float(s) for s in spacing), 1))  # type: ignore[arg-type]
    if not groups:
        return None
    return max(groups, key=lambda group: group[1])[0]  # max keeps the first of equal counts


def off_majority(
    case_ids: Sequence[str], spacings: Sequence[Sequence[float] | None], majority: Sequence[float] | None
) -> list[tuple[str, Spacing]]:
    """(case id, spacing) of every case whose spacing differs from ``majority``, in case order."""
    if majority is None:
        return []
    return [
        (case_id, tuple(float(s) for s in spacing))  # type: ignore[misc]
        for case_id, spacing in zip(case_ids, spacings, strict=True)
        if spacing is not None and not same_spacing(spacing, majority)
    ]


def header_spacing(files: CaseFiles) -> Spacing | None:
    """RAS spacing of a case from its first image header; ``None`` when that header cannot be read (the
    case's own check then says why)."""
    from brainprep.errors import CaseError

    try:
        return ras_spacing(read_nifti_header(files.image_paths[0], files.case_id).affine)
    except (CaseError, ValueError):  # ValueError: a degenerate affine, which the plan reports
        return None


def resolve_spacing(cases: Sequence[CaseFiles], params: SpacingParams) -> SpacingParams:
    """The spacing policy of a build over ``cases``, resolved against their headers (nothing written).

    ``uniform`` passes when every readable case has the majority spacing; ``resample`` gets the majority
    as its target unless it names one; ``allow-mixed`` passes with a log line.

    Raises:
        ConfigError: ``uniform`` and a case whose spacing differs (one line: the first such case, its
            spacing, the majority, and the two ways to build anyway).
    """
    spacings = [header_spacing(files) for files in cases]
    majority = majority_spacing(spacings)
    off = off_majority([c.case_id for c in cases], spacings, majority)
    if params.policy == "resample":
        target = params.target if params.target is not None else majority
        logger.info("resampling to %s", format_spacing(target) if target else "nothing (no readable case)")
        return dataclasses.replace(params, target=target)
    if off and params.policy == "uniform":
        case_id, spacing = off[0]
        raise ConfigError(
            f"mixed voxel spacing: case {case_id} is {format_spacing(spacing)}, the majority of the "
            f"{sum(s is not None for s in spacings)} cases is {format_spacing(majority)} "  # type: ignore[arg-type]
            f"({len(off)} case(s) differ); pass --resample (to the majority) or --allow-mixed-spacing "
            "(as they are)"
        )
    if off:
        logger.warning("%d case(s) off the majority spacing %s, built as they are", len(off), majority)
    return params


def spacing_mismatch(spacing: Sequence[float], params: SpacingParams) -> str | None:
    """One line when a scan of ``spacing`` is not at the spacing a store was built at (known when the store
    was resampled to ``params.target``), else ``None``: the network saw other voxel sizes in training."""
    if params.target is None or same_spacing(spacing, params.target):
        return None
    return (
        f"scan spacing {format_spacing(spacing)} differs from the {format_spacing(params.target)} the model "
        "was trained on (its store was resampled to it); predicted as it is, without resampling"
    )


def needs_resampling(spacing: Sequence[float], params: SpacingParams) -> bool:
    """Whether a case of ``spacing`` is resampled under ``params`` (``resample`` and off its target)."""
    return (
        params.policy == "resample" and params.target is not None and not same_spacing(spacing, params.target)
    )


def resampled_grid(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """The grid of spacing ``target`` over the same field of view as ``shape`` voxels of ``spacing``.

    Returns:
        (new shape, step float64 (3,) in source voxels per new voxel, offset float64 (3,): the source
        voxel coordinate of new voxel 0), so new voxel ``j`` samples source coordinate
        ``step * j + offset``. New shape: ``round(shape * spacing / target)``, at least 1 (nnU-Net's
        ``compute_new_shape``).
    """
    shape_ = np.asarray(shape, dtype=np.float64)
    step = np.asarray(target, dtype=np.float64) / np.asarray(spacing, dtype=np.float64)
    new_shape = np.maximum(np.round(shape_ / step), 1).astype(int)
    offset = ((shape_ - 1) - (new_shape - 1) * step) / 2  # the middles coincide
    return tuple(int(n) for n in new_shape), step, offset  # type: ignore[return-value]


def resampled_affine(
    affine: np.ndarray, shape: Sequence[int], spacing: Sequence[float], target
) -> np.ndarray:
    """(4, 4) voxel-to-world affine of the :func:`resampled_grid` of a RAS grid with ``affine``."""
    _, step, offset = resampled_grid(shape, spacing, target)
    to_source = np.eye(4)
    to_source[:3, :3] = np.diag(step)
    to_source[:3, 3] = offset
    return np.asarray(affine, dtype=np.float64) @ to_source


def _resample(volume: np.ndarray, spacing, target, order: int, dtype) -> np.ndarray:
    from scipy.ndimage import affine_transform  # only a resampling build needs scipy

    new_shape, step, offset = resampled_grid(volume.shape, spacing, target)
    out = np.empty(new_shape, dtype=dtype)
    affine_transform(volume, step, offset, output_shape=new_shape, output=out, order=order, mode="nearest")
    return out


def resample_image(image: np.ndarray, spacing: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """float32 (C, *new shape): every channel of ``image`` (C, X, Y, Z) resampled trilinearly from
    ``spacing`` to ``target`` (:func:`resampled_grid`)."""
    return np.stack([_resample(np.asarray(c, np.float32), spacing, target, 1, np.float32) for c in image])


def resample_label(label: np.ndarray, spacing: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """uint8 (*new shape): ``label`` (X, Y, Z) resampled to ``target`` by nearest neighbour."""
    return _resample(np.asarray(label, dtype=np.uint8), spacing, target, 0, np.uint8)


def resample_case_arrays(arrays: CaseArrays, target: Sequence[float]) -> CaseArrays:
    """``arrays`` on the grid of spacing ``target``: float32 channels (scaled, unscaled from then on),
    the resampled affine; the source affine, shape and digests stay those of the files."""
    if target is None:
        raise ConfigError("resampling needs a target spacing")
    spacing = ras_spacing(arrays.affine)
    channels = tuple(resample_image(arrays.volume(), spacing, target))
    affine = resampled_affine(arrays.affine, arrays.shape, spacing, target)
    label = None if arrays.label is None else resample_label(arrays.label, spacing, target)
    scaling = tuple((1.0, 0.0) for _ in channels)
    return dataclasses.replace(arrays, channels=channels, scaling=scaling, label=label, affine=affine)


def case_geometry(shape: Sequence[int], affine: np.ndarray, params: SpacingParams) -> dict:
    """The grid a build stores a case on, as the JSON its case entry records.

    Args:
        shape: spatial shape of the source files; affine: their (4, 4) affine (source orientation).
        params: the build's resolved spacing policy.

    Returns:
        ``{"source_spacing", "spacing", "affine", "resampled"}``: the files' RAS spacing, the spacing of
        the grid the store's corners and crops refer to, that grid's (4, 4) RAS affine (nested lists),
        and whether the case was resampled to get it.
    """
    from brainprep.read.nifti import ras_affine

    source = ras_spacing(affine)
    grid = ras_affine(affine, shape)
    resampled = needs_resampling(source, params)
    if resampled:
        ras_shape = [int(shape[int(axis)]) for axis in np.argsort(_ras_axes(affine))]
        grid = resampled_affine(grid, ras_shape, source, params.target)
    return {
        "source_spacing": list(source),
        "spacing": list(params.target) if resampled else list(source),  # type: ignore[arg-type]
        "affine": np.asarray(grid, dtype=np.float64).tolist(),
        "resampled": resampled,
    }


def _ras_axes(affine: np.ndarray) -> np.ndarray:
    """int (3,): the RAS axis each source axis becomes."""
    from brainprep.read.nifti import ras_transform

    return ras_transform(affine)[:, 0].astype(int)


def geometry_entries(geometry: dict | None) -> dict:
    """The :data:`~brainprep.store.schema.GEOMETRY_KEYS` entries of a case record (``None`` each when
    there is no geometry)."""
    return {key: None if geometry is None else geometry[key] for key in GEOMETRY_KEYS}
