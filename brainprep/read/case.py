"""Read one case, in any known layout, into the canonical form every later stage uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.errors import CaseError, InvalidValueError, ShapeMismatchError
from brainprep.read.layouts import CaseFiles
from brainprep.read.nifti import (
    ReadBuffers,
    from_ras,
    ras_spacing,
    ras_view,
    read_nifti_voxels,
    scale_voxels,
    write_nifti,
)
from brainprep.spec import CHANNEL_NAMES, DatasetSpec

N_CHANNELS = len(CHANNEL_NAMES)
AFFINE_TOLERANCE = 1e-3  # mm; BraTS exports differ in float rounding of the same affine


@dataclass(frozen=True, eq=False)
class Case:
    """One case in canonical form.

    Attributes:
        case_id: e.g. ``BRATS_001``.
        image: float32 (4, X, Y, Z), channels FLAIR, T1w, T1gd, T2w, axes R, A, S.
        label: uint8 (X, Y, Z) canonical classes of ``files.spec`` (glioma family: 0 background,
            1 edema, 2 non-enhancing, 3 enhancing, as MSD), axes R, A, S; ``None`` for an unlabelled case.
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
        """Voxel size in mm along R, A, S (:func:`~brainprep.read.nifti.ras_spacing`)."""
        return ras_spacing(self.affine)

    @property
    def has_label(self) -> bool:
        return self.label is not None


def _check_affine(affine: np.ndarray, case_id: str, path: Path) -> None:
    """Raise unless the (4, 4) voxel-to-world affine is finite and invertible (has axis directions)."""
    linear = affine[:3, :3]
    if not np.isfinite(affine).all() or abs(np.linalg.det(linear)) < 1e-12:
        raise InvalidValueError(
            f"image affine must be finite and invertible, found {np.round(affine[:3], 3).tolist()}",
            case_id=case_id,
            path=path,
        )


def dtype_name(dtype: np.dtype) -> str:
    """A file dtype as NIfTI names it where numpy's words are unreadable: ``RGB24`` for the record of
    3 uint8 fields ``R, G, B`` (numpy: ``[('R', 'u1'), ...]``), else numpy's name (``complex64``)."""
    dtype = np.dtype(dtype)
    return f"{''.join(dtype.names)}{dtype.itemsize * 8}" if dtype.names else str(dtype)


def check_real_dtype(dtype: np.dtype, case_id: str, path: Path, what: str) -> None:
    """Refuse a file whose voxels are not real numbers (NIfTI's RGB24/RGBA32 records, complex64/128):
    reading one as a scan would fail on its first reduction, or drop the imaginary part without a word.

    Args:
        what: the voxels' role in the message: ``"image"``, ``"label"`` (a course patch: ``"x"``, ``"y"``).
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise InvalidValueError(
            f"{what} voxels must be real numbers (an integer or float dtype), found {dtype_name(dtype)}",
            case_id=case_id,
            path=path,
        )


def channel_file_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial shape of a per-channel file: its shape, less a trailing axis of length 1 (some writers
    save a 3D volume as (X, Y, Z, 1), as some label files are)."""
    shape = tuple(int(s) for s in shape)
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


def _check_channel_files(files: CaseFiles, channels: Sequence[Any]) -> None:
    """Each per-channel file is 3D (or (X, Y, Z, 1)) with the shape and affine of the first one.

    Args:
        channels: one object per file of ``files.image_paths`` with ``.shape`` and ``.affine`` (an opened
            nibabel image or decoded voxels).
    """
    first_path, first = files.image_paths[0], channel_file_shape(channels[0].shape)
    for path, channel in zip(files.image_paths, channels, strict=True):
        shape = channel_file_shape(channel.shape)
        if len(shape) != 3:
            raise ShapeMismatchError(
                f"expected a 3D channel image, found shape {tuple(channel.shape)}",
                case_id=files.case_id,
                path=path,
            )
        if shape != first:
            raise ShapeMismatchError(
                f"channel shape {shape} differs from {first} of {first_path.name}",
                case_id=files.case_id,
                path=path,
            )
        if not np.allclose(channel.affine, channels[0].affine, atol=AFFINE_TOLERANCE):
            raise ShapeMismatchError(
                f"channel affine differs from that of {first_path.name}", case_id=files.case_id, path=path
            )


def check_image_headers(files: CaseFiles, headers: Sequence[Any]) -> tuple[tuple[int, int, int], np.ndarray]:
    """The case's spatial shape and source affine, after checking what its image headers say.

    Every file must hold real numbers (not RGB or complex voxels); one 4D file must hold the 4 channels;
    per-channel files must be 3D (or (X, Y, Z, 1)) with the shape and affine of the first; the first
    affine must be finite and invertible. Every reader of a case (:func:`read_case`,
    :func:`read_case_arrays`, the build plan) checks here, so a case fails with the same words on each.

    Args:
        headers: one object per file of ``files.image_paths`` with ``.shape``, ``.affine`` and
            ``.get_data_dtype()`` (a header from :func:`~brainprep.read.nifti.read_nifti_header` or
            decoded voxels).

    Raises:
        ShapeMismatchError: wrong dimensions or channel count, channel files that disagree.
        InvalidValueError: a degenerate affine, voxels that are not real numbers.
    """
    for path, header in zip(files.image_paths, headers, strict=True):
        check_real_dtype(header.get_data_dtype(), files.case_id, path, "image")
    first_path, first = files.image_paths[0], headers[0]
    if len(headers) == 1 and (len(first.shape) != 4 or first.shape[3] != N_CHANNELS):
        raise ShapeMismatchError(
            f"expected a 4D image (X, Y, Z, {N_CHANNELS}) with channels "
            f"{', '.join(CHANNEL_NAMES)}, found shape {tuple(first.shape)}",
            case_id=files.case_id,
            path=first_path,
        )
    _check_affine(first.affine, files.case_id, first_path)
    if len(headers) > 1:
        _check_channel_files(files, headers)
    return tuple(int(s) for s in first.shape[:3]), first.affine  # type: ignore[return-value]


def _check_label_header(
    path: Path, case_id: str, shape: tuple[int, ...], affine: np.ndarray, image_shape, image_affine
) -> tuple[int, ...]:
    """The label's spatial shape, checked against the image's (both optional); raises on a mismatch."""
    spatial = tuple(shape)
    if len(spatial) == 4 and spatial[3] == 1:
        spatial = spatial[:3]
    if image_shape is not None and spatial != tuple(image_shape):
        raise ShapeMismatchError(
            f"label shape {tuple(shape)} does not match image shape {tuple(image_shape)}",
            case_id=case_id,
            path=path,
        )
    if image_affine is not None and not np.allclose(affine, image_affine, atol=AFFINE_TOLERANCE):
        raise ShapeMismatchError(
            "label affine does not match the image affine "
            f"(label {np.round(affine[:3], 3).tolist()}, "
            f"image {np.round(image_affine[:3], 3).tolist()})",
            case_id=case_id,
            path=path,
        )
    return spatial


def canonical_label_table(raw: np.ndarray, spec: DatasetSpec, case_id: str, path: Path) -> np.ndarray:
    """256-entry uint8 table taking the values of ``spec``'s convention to its canonical classes, after
    checking ``raw`` holds no other value.

    The check costs one ``max`` when every value up to the maximum is defined (MSD, BraTS 2023), plus one
    comparison per undefined value below it (3 in BraTS 2021); only a bad file pays for a ``bincount``,
    to name its values in the same error as :meth:`~brainprep.spec.DatasetSpec.to_canonical`.

    Args:
        raw: uint8 label voxels, any shape and layout.

    Raises:
        InvalidValueError: a value the convention does not define.
    """
    known = sorted(spec.source_values)
    top = int(raw.max()) if raw.size else 0
    gaps = [value for value in range(top + 1) if value not in known]
    if top > known[-1] or any((raw == value).any() for value in gaps):
        present = np.flatnonzero(np.bincount(raw.reshape(-1, order="A"), minlength=256))
        raise spec.values_error(spec.unexpected_values(present), case_id=case_id, path=path)
    return spec.label_table()


def _apply_label_table(raw: np.ndarray, table: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """``table[raw]``, or ``raw`` itself when the table leaves every value of the convention alone (the
    MSD convention): :func:`canonical_label_table` checked that ``raw`` holds no other value."""
    if all(int(table[value]) == value for value in spec.source_values):
        return raw
    return table[raw]


@dataclass(frozen=True, eq=False)
class LabelVoxels:
    """A label file read once (see :func:`read_label`).

    Attributes:
        label: uint8 (X, Y, Z) canonical labels (``files.spec``) on the RAS grid (a view when possible,
            read-only).
        affine: (4, 4) source affine of the label file.
        shape: spatial shape of the file.
        sha256, size: of the file's stored bytes.
    """

    label: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]
    sha256: str
    size: int


def read_label(
    files: CaseFiles,
    image_shape: tuple[int, ...] | None = None,
    image_affine: np.ndarray | None = None,
) -> LabelVoxels:
    """Read the case's label file once (one read, one hash, one inflate), as canonical classes (RAS grid).

    Gives the same labels as ``read_case(files).label``; a gzip stream cut inside its trailer or with
    a bad CRC is an error here (see :func:`~brainprep.read.nifti.read_nifti_voxels`).

    Args:
        files: the case's files (``files.label_path`` must be set).
        image_shape, image_affine: the image's spatial shape and source affine, checked when given;
            the label is put on the RAS grid of ``image_affine`` when given (of its own affine if not).

    Raises:
        CaseError: no label file, unreadable file, voxels that are not real numbers, shape/affine
            mismatch, NaN/Inf or values outside the convention.
    """
    path = files.label_path
    if path is None:
        raise CaseError("the case has no label file", case_id=files.case_id)
    voxels = read_nifti_voxels(path, files.case_id)
    check_real_dtype(voxels.get_data_dtype(), files.case_id, path, "label")
    shape = _check_label_header(path, files.case_id, voxels.shape, voxels.affine, image_shape, image_affine)
    raw = voxels.raw.reshape(shape, order="A")  # "A": a view of the file's (Fortran-ordered) voxels
    if raw.dtype == np.uint8 and not voxels.scaled:
        table = canonical_label_table(raw, files.spec, files.case_id, path)
        source = _apply_label_table(raw, table, files.spec)
    else:
        # Float files as float64, integer files as nibabel's dataobj gives them (float64 when scaled).
        if raw.dtype.kind == "f":
            values = scale_voxels(raw, voxels.slope, voxels.inter, np.float64)
        else:
            values = voxels.values().reshape(shape, order="A")
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise InvalidValueError("label holds NaN/Inf values", case_id=files.case_id, path=path)
        source = files.spec.to_canonical(values, case_id=files.case_id, path=path)
    # Reoriented as the image is: the label's affine only has to match the image's within
    # AFFINE_TOLERANCE, and near 45 degrees of obliquity two such affines give different axes.
    label, _ = ras_view(source, voxels.affine if image_affine is None else image_affine)
    return LabelVoxels(label, voxels.affine, shape, voxels.sha256, voxels.size)  # type: ignore[arg-type]


def _check_channel_values(channel: np.ndarray, slope: float, inter: float) -> str | None:
    """What is wrong with one channel's voxels (file dtype), or ``None``, in two fast reductions.

    Two faults: a NaN/Inf voxel once scaled, and a channel with every voxel equal (an all-zero or
    constant file: a scan with no image in it, which would otherwise build a store of blank patches
    with tumour labels and train without complaint). NaN propagates through ``min``/``max`` and Inf
    is an extreme, so checking the scaled extremes (scaling is monotonic) is exact; integers are
    finite, but a huge slope could overflow float32. Constancy is judged on the file's values, so a
    normalized input whose background is a constant such as -0.7 passes as long as the brain differs.
    """
    if channel.size == 0:
        return None
    extremes = np.array([channel.min(), channel.max()])
    if not np.isfinite(scale_voxels(extremes, slope, inter, np.float32)).all():
        count = int((~np.isfinite(scale_voxels(channel, slope, inter, np.float32))).sum())
        return f"image holds {count} NaN/Inf voxels"
    if extremes[0] == extremes[1]:
        value = float(scale_voxels(extremes[:1], slope, inter, np.float32)[0])
        return f"image is constant ({value:g} in every voxel): no scan in it"
    return None


@dataclass(frozen=True, eq=False)
class CaseArrays:
    """One case read once, as views of the decoded file bytes (the build's fast path).

    ``read_case_arrays(files).patch(corner, size)`` equals ``extract_patch(read_case(files).image, corner,
    size)``, and :attr:`label` equals ``read_case(files).label``; nothing of the volume is converted or
    copied until a patch is asked for.

    Attributes:
        case_id: e.g. ``BRATS_001``.
        channels: 4 read-only (X, Y, Z) views in the file's dtype on the RAS grid, unscaled.
        scaling: (slope, inter) of each channel's file.
        label: uint8 (X, Y, Z) canonical labels on the RAS grid, or ``None``.
        affine: (4, 4) RAS affine; source_affine: (4, 4) affine of the files; source_shape: their shape.
        digests: ``{path: (size, sha256)}`` of every file read.
    """

    case_id: str
    channels: tuple[np.ndarray, ...]
    scaling: tuple[tuple[float, float], ...]
    label: np.ndarray | None
    affine: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    digests: dict[Path, tuple[int, str]]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.channels[0].shape)  # type: ignore[return-value]

    def channel_window(
        self, channel: int, corner: tuple[int, int, int] | np.ndarray, size: tuple[int, int, int]
    ) -> np.ndarray:
        """(px, py, pz) window of one channel at ``corner``, with :meth:`patch`'s values: a view when the
        file holds unscaled float32 (no copy), else a float32 copy scaled as nibabel's ``get_fdata``.

        Raises:
            ShapeMismatchError: the window does not fit in the volume.
        """
        window = tuple(slice(int(c), int(c) + int(s)) for c, s in zip(corner, size, strict=True))
        block = self.channels[channel][window]
        if block.shape != tuple(int(s) for s in size):
            raise ShapeMismatchError(
                f"patch {tuple(size)} at corner {tuple(int(v) for v in corner)} does not fit in "
                f"(X, Y, Z) = {self.shape}",
                case_id=self.case_id,
            )
        slope, inter = self.scaling[channel]
        if block.dtype == np.float32 and slope == 1.0 and inter == 0.0:
            return block
        return scale_voxels(block, slope, inter, np.float32)

    def patch(self, corner: tuple[int, int, int] | np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
        """float32 (4, px, py, pz) C-contiguous patch at ``corner``, scaled as nibabel's ``get_fdata``."""
        out = np.empty((len(self.channels), *(int(s) for s in size)), dtype=np.float32)
        for c in range(len(self.channels)):
            out[c] = self.channel_window(c, corner, size)
        return out

    def volume(self) -> np.ndarray:
        """float32 (4, X, Y, Z) C-contiguous: the whole image as :attr:`Case.image` holds it."""
        return self.patch((0, 0, 0), self.shape)


def read_case_arrays(
    files: CaseFiles, *, with_label: bool = True, buffers: ReadBuffers | None = None
) -> CaseArrays:
    """Read one case the fast way: every file read once, hashed, inflated in one shot, viewed in place.

    Checks shapes and affines (:func:`check_image_headers`), NaN/Inf, label values, and the whole gzip
    stream of every file (:func:`~brainprep.read.nifti.read_nifti_voxels`); :func:`read_case` is this plus
    the float32 volume. Peak memory is the decoded files (the float32 volume is never made).

    Args:
        files: the case's files.
        with_label: also read the label.
        buffers: inflate the image files into these (a worker reading case after case); the returned
            arrays are then valid until the next read with the same buffers. ``None``: new memory.

    Raises:
        CaseError: any problem with the files, as one line naming the case and the file.
    """
    case_id = files.case_id
    read = [read_nifti_voxels(path, case_id, buffers, i) for i, path in enumerate(files.image_paths)]
    source_shape, source_affine = check_image_headers(files, read)
    if len(read) == 1:
        first, path = read[0], files.image_paths[0]
        # channel_index: the file's channel of each canonical one (a dataset.json in another order)
        sources = [(first.raw[..., c], first.slope, first.inter, path) for c in files.channel_index]
    else:
        # an (X, Y, Z, 1) file as its one volume (a view)
        sources = [
            (v.raw.reshape(v.raw.shape[:3], order="A"), v.slope, v.inter, p)
            for p, v in zip(files.image_paths, read, strict=True)
        ]
    for channel, (raw, slope, inter, path) in enumerate(sources):
        problem = _check_channel_values(raw, slope, inter)
        if problem is not None:
            raise InvalidValueError(
                f"{problem} in channel {CHANNEL_NAMES[channel]}", case_id=case_id, path=path
            )
    digests = {p: (v.size, v.sha256) for p, v in zip(files.image_paths, read, strict=True)}
    label = None
    if with_label and files.label_path is not None:
        labels = read_label(files, source_shape, source_affine)
        label = labels.label
        digests[files.label_path] = (labels.size, labels.sha256)
    channels = tuple(ras_view(raw, source_affine)[0] for raw, _, _, _ in sources)
    affine = ras_view(sources[0][0], source_affine)[1]
    scaling = tuple((slope, inter) for _, slope, inter, _ in sources)
    return CaseArrays(case_id, channels, scaling, label, affine, source_affine, source_shape, digests)  # type: ignore[arg-type]


def read_case(files: CaseFiles, *, with_label: bool = True) -> Case:
    """Read, validate and reorient one case.

    The whole volume made from :func:`read_case_arrays` (the same decode, checks and errors).

    Args:
        files: the case's files, from :func:`brainprep.discover_cases`.
        with_label: read the label file when the case has one.

    Returns:
        The case in canonical form (see :class:`Case`).

    Raises:
        CaseError: any problem with the files, as one line naming the case and the file.
    """
    arrays = read_case_arrays(files, with_label=with_label)
    label = None if arrays.label is None else np.array(arrays.label, order="C")  # writable, C order
    return Case(
        files.case_id,
        arrays.volume(),
        label,
        arrays.affine,
        arrays.source_affine,
        arrays.source_shape,
        files,
    )


def write_label_in_source_space(
    label: np.ndarray, case: Case, path: Path, spec: DatasetSpec | None = None
) -> Path:
    """Write a canonical (RAS) uint8 label map in the case's source orientation and affine.

    Args:
        label: uint8 (X, Y, Z) canonical classes on the case's canonical grid.
        spec: write the source values of this spec's convention; ``None``: the canonical classes as they
            are (for the glioma family the MSD values).
    """
    if label.shape != case.shape:
        raise ShapeMismatchError(
            f"label shape {label.shape} does not match case shape {case.shape}", case_id=case.case_id
        )
    source = from_ras(label, case.source_affine)
    return write_nifti(source if spec is None else spec.to_source(source), case.source_affine, path)
