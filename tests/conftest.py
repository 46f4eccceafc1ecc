"""Shared test fixtures: small synthetic cases written as NIfTI files in every BraTS layout.

The helpers start from a case in canonical form -- image float32 (4, X, Y, Z) in MSD channel order
(FLAIR, T1w, T1gd, T2w) and label uint8 (X, Y, Z) in the MSD convention, both on a RAS grid -- and write
it the way a release would: reoriented to a source orientation (``"LPS"`` like BraTS), with the matching
non-identity affine, and with labels in the layout's own convention. Reading the files back with
:func:`brainprep.read_case` must give the canonical arrays exactly, so a test can compare against them.

The label conventions below are written out by hand rather than imported from brainprep, so that a
wrong table in :mod:`brainprep.read.labels` cannot hide behind the same wrong table here.

Helpers (plain functions, importable as ``from conftest import ...`` inside tests):

- :func:`box_label` / :func:`small_case`: a hand-countable tumour and a matching 4-channel image.
- :func:`ras_affine`, :func:`orient_from_ras`: a canonical affine and its reorientation to any axcodes.
- :func:`write_nifti_file`: one NIfTI file, with control over dtype.
- :func:`write_msd_case`, :func:`write_brats_case`: one case in the MSD / BraTS 2021 / BraTS 2023 layout.
- :class:`WrittenCase`: what was written and what reading it back must give.

Fixtures: ``small_case_arrays``, ``msd_dataset``, ``brats2021_dataset``, ``brats2023_dataset`` (two cases
each, in ``tmp_path``) and ``shared_data`` (the real data folder, or a skip).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: small grid and patch used by unit tests (a real case is 240x240x155 with 160x160x16 patches).
SMALL_SHAPE: tuple[int, int, int] = (48, 48, 20)
SMALL_PATCH: tuple[int, int, int] = (32, 32, 8)
#: voxel size (mm) of the synthetic cases: anisotropic, so a swapped axis shows in the affine.
SMALL_SPACING: tuple[float, float, float] = (1.0, 1.25, 2.5)
SMALL_ORIGIN: tuple[float, float, float] = (-20.0, -30.0, -10.0)

#: MSD label -> label of each release's convention (MSD: 1 edema, 2 non-enhancing, 3 enhancing;
#: BraTS 2017-2021: 1 necrotic/non-enhancing core, 2 edema, 4 enhancing; BraTS 2023: 1, 2, 3).
MSD_TO_CONVENTION: dict[str, dict[int, int]] = {
    "msd": {0: 0, 1: 1, 2: 2, 3: 3},
    "brats2021": {0: 0, 1: 2, 2: 1, 3: 4},
    "brats2023": {0: 0, 1: 2, 2: 1, 3: 3},
}
#: per-file channel keys in MSD channel order, and the label key, of the per-case-folder layouts.
BRATS_CHANNEL_KEYS: dict[str, tuple[str, ...]] = {
    "brats2021": ("flair", "t1", "t1ce", "t2"),
    "brats2023": ("t2f", "t1n", "t1c", "t2w"),
}
BRATS_SEPARATOR: dict[str, str] = {"brats2021": "_", "brats2023": "-"}


def box_label(
    shape: tuple[int, int, int] = SMALL_SHAPE, offset: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """A hand-countable tumour: uint8 (X, Y, Z), MSD convention, on the RAS grid.

    A 10x10x5 box at ``[10:20, 10:20, 5:10] + offset`` (500 voxels) of edema (1), holding a 4x4x3 block of
    non-enhancing tumour (2) at ``[12:16, 12:16, 6:9]`` (48 voxels) and a 2x2x1 block of enhancing tumour
    (3) at ``[17:19, 17:19, 7:8]`` (4 voxels): 448 edema, 48 non-enhancing, 4 enhancing voxels.

    With 32x32x8 patches on 48x48x20 (17*17*13 = 3757 corners) a corner is valid (more than 5%, i.e.
    more than 409.6 tumour voxels) when the patch holds all 10 box rows in x, y and all 5 in z (11*11*4),
    or 9 of 10 rows in x or y (450 voxels; 11*4 corners each way), but not 4 of 5 slices in z (400):
    572 valid corners, a share of 572/3757.
    """
    label = np.zeros(shape, dtype=np.uint8)
    ox, oy, oz = offset
    label[10 + ox : 20 + ox, 10 + oy : 20 + oy, 5 + oz : 10 + oz] = 1
    label[12 + ox : 16 + ox, 12 + oy : 16 + oy, 6 + oz : 9 + oz] = 2
    label[17 + ox : 19 + ox, 17 + oy : 19 + oy, 7 + oz : 8 + oz] = 3
    return label


#: voxel counts (background, edema, non-enhancing, enhancing) and valid-corner share of box_label().
BOX_COUNTS: tuple[int, int, int, int] = (48 * 48 * 20 - 500, 448, 48, 4)
BOX_VALID_SHARE: float = 572 / 3757


def small_case(shape: tuple[int, int, int] = SMALL_SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic case in canonical form: image float32 (4, X, Y, Z) RAS and :func:`box_label`.

    Intensities are integers (so an int16 file holds them exactly), different in every channel and
    asymmetric along every axis (so a missed flip or swapped channel changes the array).
    """
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ramp = 3 * x + 2 * y + z  # rises along every axis: a flipped axis never reads back equal
    image = np.stack([100 * (c + 1) + ramp + rng.integers(0, 50, size=shape) for c in range(4)])
    return image.astype(np.float32), box_label(shape)


def ras_affine(
    spacing: tuple[float, float, float] = SMALL_SPACING, origin: tuple[float, float, float] = SMALL_ORIGIN
) -> np.ndarray:
    """(4, 4) affine of a RAS grid: ``diag(spacing)`` with ``origin`` as the world position of voxel 0."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def orient_from_ras(array: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a RAS (X, Y, Z, ...) array to ``axcodes`` (e.g. ``"LPS"``), keeping world positions.

    Args:
        array: (X, Y, Z, ...) on a RAS grid whose voxel-to-world affine is ``affine``.
        affine: (4, 4) RAS affine of ``array``.
        axcodes: three axis codes of the source orientation, a permutation and flip of R/L, A/P, S/I.

    Returns:
        The array on the ``axcodes`` grid and its (4, 4) affine: every voxel keeps its world position.
    """
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    source = np.ascontiguousarray(apply_orientation(array, transform))
    return source, affine @ inv_ornt_aff(transform, array.shape[:3])


def write_nifti_file(path: Path, array: np.ndarray, affine: np.ndarray, dtype: str | None = None) -> Path:
    """Write ``array`` (cast to ``dtype`` if given) with ``affine`` as both qform and sform."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = array.astype(dtype) if dtype is not None else array
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
    return path


def to_convention(label: np.ndarray, convention: str) -> np.ndarray:
    """MSD uint8 labels -> ``convention`` (``msd``, ``brats2021``, ``brats2023``), by the hand table."""
    table = np.zeros(256, dtype=np.uint8)
    for msd, value in MSD_TO_CONVENTION[convention].items():
        table[msd] = value
    return table[label]


@dataclass(frozen=True)
class WrittenCase:
    """A case written to disk, and what reading it back must give.

    Attributes:
        case_id: the case id the layout gives it.
        image: float32 (4, X, Y, Z) RAS, MSD channel order, as :func:`brainprep.read_case` must return it.
        label: uint8 (X, Y, Z) RAS, MSD convention, or ``None`` when no label was written.
        affine: (4, 4) RAS affine read_case must return.
        source_affine: (4, 4) affine written into the files.
        image_paths: files written for the image, in MSD channel order.
        label_path: the label file, or ``None``.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    source_affine: np.ndarray
    image_paths: tuple[Path, ...]
    label_path: Path | None


def write_msd_case(
    root: Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray | None = None,
    axcodes: str = "RAS",
    image_dtype: str = "float32",
) -> WrittenCase:
    """Write one case in the MSD layout: ``imagesTr/<id>.nii.gz`` (4D, channels last) and
    ``labelsTr/<id>.nii.gz`` (or ``imagesTs/`` without a label).

    Args:
        image: float32 (4, X, Y, Z) canonical image; label: uint8 (X, Y, Z) MSD labels or ``None``.
        affine: RAS affine of the canonical arrays (default :func:`ras_affine`).
        axcodes: orientation of the written files.
    """
    affine = ras_affine() if affine is None else affine
    source, source_affine = orient_from_ras(np.moveaxis(image, 0, -1), affine, axcodes)
    folder = "imagesTr" if label is not None else "imagesTs"
    image_path = write_nifti_file(root / folder / f"{case_id}.nii.gz", source, source_affine, image_dtype)
    label_path = None
    if label is not None:
        source_label, _ = orient_from_ras(label, affine, axcodes)
        label_path = write_nifti_file(root / "labelsTr" / f"{case_id}.nii.gz", source_label, source_affine)
    return WrittenCase(case_id, image, label, affine, source_affine, (image_path,), label_path)


def write_brats_case(
    root: Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray | None,
    layout: str = "brats2023",
    affine: np.ndarray | None = None,
    axcodes: str = "LPS",
    image_dtype: str = "int16",
) -> WrittenCase:
    """Write one case in a per-case-folder layout: ``<root>/<id>/<id><sep><key>.nii.gz``.

    Args:
        layout: ``brats2021`` (``_flair, _t1, _t1ce, _t2, _seg``; labels 0,1,2,4) or ``brats2023``
            (``-t2f, -t1n, -t1c, -t2w, -seg``; labels 0,1,2,3).
        image: float32 (4, X, Y, Z) canonical image; label: uint8 (X, Y, Z) MSD labels or ``None``.
        affine: RAS affine of the canonical arrays (default :func:`ras_affine`).
        axcodes: orientation of the written files (BraTS releases are LPS).
        image_dtype: on-disk dtype of the channel files (BraTS 2023 ships int16).
    """
    affine = ras_affine() if affine is None else affine
    separator = BRATS_SEPARATOR[layout]
    folder = root / case_id
    paths = []
    source_affine = affine
    for channel, key in enumerate(BRATS_CHANNEL_KEYS[layout]):
        source, source_affine = orient_from_ras(image[channel], affine, axcodes)
        path = folder / f"{case_id}{separator}{key}.nii.gz"
        paths.append(write_nifti_file(path, source, source_affine, image_dtype))
    label_path = None
    if label is not None:
        source_label, _ = orient_from_ras(to_convention(label, layout), affine, axcodes)
        label_path = write_nifti_file(folder / f"{case_id}{separator}seg.nii.gz", source_label, source_affine)
    return WrittenCase(case_id, image, label, affine, source_affine, tuple(paths), label_path)


@dataclass(frozen=True)
class WrittenDataset:
    """A data folder written by a fixture: its root, layout and cases by id."""

    root: Path
    layout: str
    cases: dict[str, WrittenCase]


@pytest.fixture
def small_case_arrays() -> tuple[np.ndarray, np.ndarray]:
    """:func:`small_case`: image float32 (4, 48, 48, 20) and box label uint8 (48, 48, 20), RAS."""
    return small_case()


@pytest.fixture
def msd_dataset(tmp_path: Path) -> WrittenDataset:
    """Two labelled MSD cases (``BRATS_001``, ``BRATS_002``), LPS on disk, plus a ``dataset.json``."""
    root = tmp_path / "Task01_BrainTumour"
    cases = {}
    for seed, case_id in enumerate(("BRATS_001", "BRATS_002")):
        image, label = small_case(seed=seed)
        cases[case_id] = write_msd_case(root, case_id, image, label, axcodes="LPS")
    description = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return WrittenDataset(root, "msd", cases)


def _brats_dataset(root: Path, layout: str, ids: tuple[str, str]) -> WrittenDataset:
    cases = {}
    for seed, case_id in enumerate(ids):
        image, label = small_case(seed=seed)
        cases[case_id] = write_brats_case(root, case_id, image, label, layout=layout)
    return WrittenDataset(root, layout, cases)


@pytest.fixture
def brats2021_dataset(tmp_path: Path) -> WrittenDataset:
    """Two labelled BraTS 2021 cases (LPS, int16 channels, labels 0,1,2,4)."""
    return _brats_dataset(tmp_path / "brats2021", "brats2021", ("BraTS2021_00000", "BraTS2021_00002"))


@pytest.fixture
def brats2023_dataset(tmp_path: Path) -> WrittenDataset:
    """Two labelled BraTS 2023 cases (LPS, int16 channels, labels 0,1,2,3)."""
    return _brats_dataset(tmp_path / "brats2023", "brats2023", ("BraTS-GLI-00000-000", "BraTS-GLI-00002-000"))


@pytest.fixture
def shared_data() -> Path:
    """The real data folder ``../shared/data`` (relative to the project), or skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def copy_store(source: Path, folder: Path) -> Path:
    """A copy of the store ``source`` (a folder or a file) in ``folder``, to damage in a test."""
    target = folder / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return target


def edit_store_metadata(store: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``edit`` to the ``brainprep`` metadata of a Zarr (zarr.json) or HDF5 (root attribute) store,
    the way a user would by hand (no digest updated)."""
    if store.is_dir():
        document = store / "zarr.json"
        meta = json.loads(document.read_text())
        edit(meta["attributes"]["brainprep"])
        document.write_text(json.dumps(meta))
        return
    import h5py

    with h5py.File(store, "r+") as handle:
        metadata = json.loads(handle.attrs["brainprep"])
        edit(metadata)
        handle.attrs["brainprep"] = json.dumps(metadata)


def flip_byte(path: Path, offset: int) -> None:
    """Invert the byte at ``offset`` of ``path`` (a damaged disk or download)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
