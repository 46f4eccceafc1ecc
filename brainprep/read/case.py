"""Read one case, in any known layout, into the canonical form every later stage uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainprep.errors import InvalidValueError, ShapeMismatchError
from brainprep.read.labels import LabelConvention, from_msd_labels, to_msd_labels
from brainprep.read.layouts import CHANNEL_NAMES, CaseFiles
from brainprep.read.nifti import from_ras, open_nifti, read_voxels, to_ras, write_nifti

N_CHANNELS = len(CHANNEL_NAMES)
AFFINE_TOLERANCE = 1e-3  # mm; BraTS exports differ in float rounding of the same affine


@dataclass(frozen=True, eq=False)
class Case:
    """One case in canonical form.

    Attributes:
        case_id: e.g. ``BRATS_001``.
        image: float32 (4, X, Y, Z), channels FLAIR, T1w, T1gd, T2w, axes R, A, S.
        label: uint8 (X, Y, Z) in the MSD convention (0 bg, 1 edema, 2 non-enhancing, 3 enhancing),
            axes R, A, S; ``None`` for an unlabelled case.
        affine: (4, 4) voxel-to-world affine of ``image``/``label``.
        source_affine: (4, 4) affine of the source files, to write results back in their space.
        source_shape: spatial shape of the source files.
        files: where the case came from.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    files: CaseFiles

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def has_label(self) -> bool:
        return self.label is not None


def _check_finite(image: np.ndarray, case_id: str, paths: tuple[Path, ...]) -> None:
    """Raise on NaN/Inf; ``image`` is (X, Y, Z, C) in source order."""
    finite = np.isfinite(image.reshape(-1, image.shape[-1])).all(axis=0)
    for channel in np.flatnonzero(~finite):
        path = paths[channel] if len(paths) > 1 else paths[0]
        count = int((~np.isfinite(image[..., channel])).sum())
        raise InvalidValueError(
            f"image holds {count} NaN/Inf voxels in channel {CHANNEL_NAMES[channel]}",
            case_id=case_id,
            path=path,
        )


def _check_affine(affine: np.ndarray, case_id: str, path: Path) -> None:
    """Raise unless the (4, 4) voxel-to-world affine is finite and invertible (has axis directions)."""
    linear = affine[:3, :3]
    if not np.isfinite(affine).all() or abs(np.linalg.det(linear)) < 1e-12:
        raise InvalidValueError(
            f"image affine must be finite and invertible, found {np.round(affine[:3], 3).tolist()}",
            case_id=case_id,
            path=path,
        )


def _read_image(files: CaseFiles) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z, 4) float32 in source orientation, and the source affine."""
    case_id = files.case_id
    if len(files.image_paths) == 1:
        path = files.image_paths[0]
        nifti = open_nifti(path, case_id)
        if len(nifti.shape) != 4 or nifti.shape[3] != N_CHANNELS:
            raise ShapeMismatchError(
                f"expected a 4D image (X, Y, Z, {N_CHANNELS}) with channels "
                f"{', '.join(CHANNEL_NAMES)}, found shape {tuple(nifti.shape)}",
                case_id=case_id,
                path=path,
            )
        _check_affine(nifti.affine, case_id, path)
        return read_voxels(nifti, path, np.float32, case_id), nifti.affine
    headers = [open_nifti(p, case_id) for p in files.image_paths]
    first_path, first = files.image_paths[0], headers[0]
    _check_affine(first.affine, case_id, first_path)
    for path, nifti in zip(files.image_paths, headers, strict=True):
        if len(nifti.shape) != 3:
            raise ShapeMismatchError(
                f"expected a 3D channel image, found shape {tuple(nifti.shape)}",
                case_id=case_id,
                path=path,
            )
        if nifti.shape != first.shape:
            raise ShapeMismatchError(
                f"channel shape {tuple(nifti.shape)} differs from {tuple(first.shape)} of {first_path.name}",
                case_id=case_id,
                path=path,
            )
        if not np.allclose(nifti.affine, first.affine, atol=AFFINE_TOLERANCE):
            raise ShapeMismatchError(
                f"channel affine differs from that of {first_path.name}", case_id=case_id, path=path
            )
    image = np.empty((*first.shape, N_CHANNELS), dtype=np.float32)
    for channel, (path, nifti) in enumerate(zip(files.image_paths, headers, strict=True)):
        image[..., channel] = read_voxels(nifti, path, np.float32, case_id)
    return image, first.affine


def _read_label(files: CaseFiles, image_shape: tuple[int, ...], image_affine: np.ndarray) -> np.ndarray:
    """(X, Y, Z) uint8 MSD labels in source orientation."""
    path = files.label_path
    assert path is not None  # callers check; not an input check
    nifti = open_nifti(path, files.case_id)
    shape = tuple(nifti.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if shape != tuple(image_shape):
        raise ShapeMismatchError(
            f"label shape {tuple(nifti.shape)} does not match image shape {tuple(image_shape)}",
            case_id=files.case_id,
            path=path,
        )
    if not np.allclose(nifti.affine, image_affine, atol=AFFINE_TOLERANCE):
        raise ShapeMismatchError(
            "label affine does not match the image affine "
            f"(label {np.round(nifti.affine[:3], 3).tolist()}, "
            f"image {np.round(image_affine[:3], 3).tolist()})",
            case_id=files.case_id,
            path=path,
        )
    raw = read_voxels(
        nifti, path, np.float64 if nifti.get_data_dtype().kind == "f" else int, files.case_id
    ).reshape(shape)
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise InvalidValueError("label holds NaN/Inf values", case_id=files.case_id, path=path)
    return to_msd_labels(raw, files.label_convention, case_id=files.case_id, path=str(path))


def read_case(files: CaseFiles, *, with_label: bool = True) -> Case:
    """Read, validate and reorient one case.

    Args:
        files: the case's files, from :func:`brainprep.discover_cases`.
        with_label: read the label file when the case has one.

    Returns:
        The case in canonical form (see :class:`Case`).

    Raises:
        CaseError: any problem with the files, as one line naming the case and the file.
    """
    image, source_affine = _read_image(files)
    _check_finite(image, files.case_id, files.image_paths)
    label = None
    if with_label and files.label_path is not None:
        label = _read_label(files, image.shape[:3], source_affine)
    source_shape = tuple(int(s) for s in image.shape[:3])
    image_ras, affine = to_ras(image, source_affine)
    del image  # a full case is ~140 MB float32: hold at most two copies while moving channels first
    image_ras = np.ascontiguousarray(np.moveaxis(image_ras, -1, 0))
    label_ras = to_ras(label, source_affine)[0] if label is not None else None
    return Case(files.case_id, image_ras, label_ras, affine, source_affine, source_shape, files)  # type: ignore[arg-type]


def write_label_in_source_space(
    label: np.ndarray,
    case: Case,
    path: Path,
    convention: LabelConvention | str = LabelConvention.MSD,
) -> Path:
    """Write a canonical (RAS, MSD) uint8 label map in the case's source orientation and affine.

    Args:
        label: uint8 (X, Y, Z) on the case's canonical grid.
        convention: label convention of the written file (``msd`` or the source's).
    """
    if label.shape != case.shape:
        raise ShapeMismatchError(
            f"label shape {label.shape} does not match case shape {case.shape}", case_id=case.case_id
        )
    source = from_ras(label, case.source_affine)
    return write_nifti(from_msd_labels(source, convention), case.source_affine, path)
