"""NIfTI input/output with one-line errors, and reorientation to and from the canonical RAS grid."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from brainprep.errors import MissingFileError, UnreadableFileError

CANONICAL_AXCODES: tuple[str, str, str] = ("R", "A", "S")

_DECODE_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, ImageFileError, OSError, ValueError)


def _describe(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, EOFError) or "end-of-stream" in text or "ended before" in text:
        return f"truncated file ({text})"
    if isinstance(err, gzip.BadGzipFile | zlib.error):
        return f"corrupt gzip data ({text})"
    return text.splitlines()[0]


def open_nifti(path: Path, case_id: str | None = None) -> nib.Nifti1Image:
    """Open the header of a NIfTI file (no voxel data read yet).

    Raises:
        MissingFileError: ``path`` does not exist.
        UnreadableFileError: ``path`` is not a readable NIfTI file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("file not found", case_id=case_id, path=path)
    try:
        return nib.load(path)
    except _DECODE_ERRORS as err:
        raise UnreadableFileError(
            f"cannot read NIfTI header: {_describe(err)}", case_id=case_id, path=path
        ) from err


def read_voxels(
    image: nib.Nifti1Image, path: Path, dtype: type = np.float32, case_id: str | None = None
) -> np.ndarray:
    """Decode the voxel array of an opened image as ``dtype`` (scaling slopes applied)."""
    try:
        if np.issubdtype(dtype, np.floating):
            return np.asarray(image.get_fdata(dtype=dtype))
        return np.asarray(image.dataobj)
    except _DECODE_ERRORS as err:
        raise UnreadableFileError(
            f"cannot read voxel data: {_describe(err)}", case_id=case_id, path=path
        ) from err


def ras_transform(affine: np.ndarray) -> np.ndarray:
    """Orientation transform (nibabel ``ornt``, shape (3, 2)) that takes ``affine``'s axes to RAS."""
    return ornt_transform(io_orientation(affine), axcodes2ornt(CANONICAL_AXCODES))


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute the first three axes of ``array`` so that they run R, A, S.

    Args:
        array: (X, Y, Z, ...) voxel array in the source orientation.
        affine: (4, 4) source voxel-to-world affine.

    Returns:
        The C-contiguous reoriented array and its (4, 4) affine (same world coordinates).
    """
    transform = ras_transform(affine)
    shape = array.shape[:3]
    reoriented = np.ascontiguousarray(apply_orientation(array, transform))
    new_affine = affine @ inv_ornt_aff(transform, shape)
    return reoriented, new_affine


def from_ras(array: np.ndarray, source_affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ras`: put a RAS (X, Y, Z, ...) array back on the source voxel grid."""
    inverse = ornt_transform(axcodes2ornt(CANONICAL_AXCODES), io_orientation(source_affine))
    return np.ascontiguousarray(apply_orientation(array, inverse))


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path, header=None) -> Path:
    """Write ``array`` with ``affine`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine, header=header)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name}.partial{suffix}")
    nib.save(image, tmp)
    tmp.replace(path)
    return path
