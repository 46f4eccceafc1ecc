"""The per-case work of a build: read -> standardize -> cut -> write -> done marker.

:func:`cut_patches` is the pure array function; :func:`write_case` does the I/O of one case and runs on
a dask worker. A worker holds one case at a time: the decoded files (read once each, hashed from the same
bytes, voxels viewed in place in their own dtype: ~140 MB for a float32 240x240x155x4 case, see
:func:`brainprep.read.case.read_case_arrays`) and the K patches in the store dtype. Only the K patches
are converted to float32 and standardized (``patch-slice``); ``volume-nonzero`` needs the whole float32
volume for its statistics and makes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.build.plan import CasePlan, file_entry, file_record
from brainprep.errors import CaseError
from brainprep.params import BuildParams
from brainprep.read import CaseFiles
from brainprep.read.case import CaseArrays, msd_label_table, read_case_arrays, read_label
from brainprep.read.labels import LABEL_MAPS, LabelConvention
from brainprep.read.nifti import ras_view, read_nifti_voxels
from brainprep.sample import extract_patch
from brainprep.standardize import (
    brain_mask,
    nonzero_statistics,
    standardize_patch_slices,
    standardize_with_statistics,
)
from brainprep.store import schema
from brainprep.store.lock import BuildState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseTask:
    """Everything a worker needs for one case (small and picklable).

    Attributes:
        files: the case's files.
        plan: its plan (corners, fractions, hashes).
        params: the build parameters.
        layout: the store layout.
        store: the store path (``.zarr`` folder or ``.h5`` file).
        skip_bad: record a case that fails to read as skipped instead of raising.
        root: the data folder (file paths are recorded relative to it); ``None``: the paths as given.
    """

    files: CaseFiles
    plan: CasePlan
    params: BuildParams
    layout: schema.StoreLayout
    store: Path
    skip_bad: bool
    root: Path | None = None


def cut_patches(
    image: np.ndarray,
    label: np.ndarray,
    corners: np.ndarray,
    params: BuildParams,
    n_slots: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Standardize and cut the patches of one case.

    Args:
        image: float32 (4, X, Y, Z) RAS volume.
        label: uint8 (X, Y, Z) RAS labels.
        corners: int (n, 3) patch corners, n <= ``n_slots``.
        params: standardization method, patch size and store dtype.
        n_slots: K; slots past ``n`` stay zero.

    Returns:
        (images (K, 4, px, py, pz) store dtype, labels uint8 (K, px, py, pz), mean float64 (4,) or None,
        std float64 (4,) or None); mean/std are the volume statistics of ``volume-nonzero``.
    """
    size = params.sampling.patch_size
    images = np.zeros((n_slots, image.shape[0], *size), dtype=params.store.dtype)
    labels = np.zeros((n_slots, *size), dtype=np.uint8)
    mean = std = None
    if params.standardize.method == "volume-nonzero" and len(corners):
        mean, std = nonzero_statistics(image)
    for i, corner in enumerate(corners):
        patch = extract_patch(image, corner, size)
        if mean is not None and std is not None:
            # brain_mask is voxelwise, so the patch's mask is the volume mask cut at the same corner.
            images[i] = standardize_with_statistics(patch, mean, std, mask=brain_mask(patch))
        else:
            images[i] = standardize_patch_slices(patch)
        labels[i] = extract_patch(label, corner, size)
    return images, labels, mean, std


def cut_case_patches(
    arrays: CaseArrays,
    label: np.ndarray,
    corners: np.ndarray,
    params: BuildParams,
    n_slots: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`cut_patches` on a case read with :func:`read_case_arrays` (same arrays, same bits).

    ``patch-slice`` converts only the K patches to float32, one at a time (peak: one float64 patch);
    ``volume-nonzero`` makes the float32 volume and calls :func:`cut_patches`.

    Args:
        arrays: the case's channels as views.
        label: uint8 (X, Y, Z) RAS labels (a view is fine).
        corners, params, n_slots: as for :func:`cut_patches`.

    Returns:
        As :func:`cut_patches`.
    """
    if params.standardize.method != "patch-slice":
        return cut_patches(arrays.volume(), label, corners, params, n_slots)
    size = params.sampling.patch_size
    images = np.zeros((n_slots, len(arrays.channels), *size), dtype=params.store.dtype)
    labels = np.zeros((n_slots, *size), dtype=np.uint8)
    for i, corner in enumerate(corners):
        images[i] = standardize_patch_slices(arrays.patch(corner, size))
        labels[i] = extract_patch(label, corner, size)
    return images, labels, None, None


def case_record(
    plan: CasePlan,
    n_slots: int,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    problem: str | None = None,
    files: tuple[dict[str, Any], ...] | None = None,
) -> dict[str, Any]:
    """The done marker of a case: its case-table entry plus its rows of the patch table (JSON types).

    ``files``: the records of every source file (default: the plan's).
    """
    written = problem is None
    return {
        "index": plan.index,
        "case_id": plan.case_id,
        "split": plan.split,
        "files": list(plan.files if files is None else files),
        "n_slots": n_slots,
        "n_patches": plan.n_patches if written else 0,
        "valid_corner_share": plan.valid_corner_share,
        "best_tumour_fraction": plan.best_tumour_fraction,
        "skip_reason": plan.skip_reason if written else f"bad case: {problem}",
        "mean": None if mean is None else [float(v) for v in mean],
        "std": None if std is None else [float(v) for v in std],
        "corners": plan.corners.tolist() if written else [],
        "tumour_fraction": [float(v) for v in plan.tumour_fraction] if written else [],
        "class_fractions": plan.class_fractions.tolist() if written else [],
    }


def planned_label(files: CaseFiles, plan: CasePlan) -> np.ndarray:
    """The case's uint8 MSD RAS label, read again for its patches: when the file still has the planned
    sha256 its values were checked by the plan, so only a lookup table is applied (no second check of the
    volume); otherwise (or for a non-uint8 file) it is read and checked in full.

    Raises:
        CaseError: the label changed since planning, or cannot be read.
    """
    path = files.label_path
    if path is None:
        raise CaseError("the label disappeared since planning", case_id=files.case_id)
    planned = {record["sha256"] for record in plan.files}
    voxels = read_nifti_voxels(path, files.case_id)
    if voxels.sha256 not in planned:
        raise CaseError("the label file changed since planning", case_id=files.case_id, path=path)
    shape = voxels.shape[:3]
    if voxels.raw.dtype != np.uint8 or voxels.slope != 1.0 or voxels.inter != 0.0 or len(shape) != 3:
        return read_label(files).label
    convention = LabelConvention(files.label_convention)
    known = np.array(sorted(LABEL_MAPS[convention]), dtype=np.uint8)
    table = msd_label_table(known, convention, files.case_id, path)
    return table[ras_view(voxels.raw.reshape(shape), voxels.affine)[0]]


def _source_records(task: CaseTask, arrays: CaseArrays) -> tuple[dict[str, Any], ...]:
    """Records of every source file, in ``files.all_paths`` order: images hashed on reading, label planned."""
    root = task.root if task.root is not None else Path("/")
    label = task.plan.files[-1:] if task.files.label_path is not None else ()
    images = tuple(file_entry(p, root, *arrays.digests[p]) for p in task.files.image_paths)
    return images + tuple(label)


def write_case(task: CaseTask) -> dict[str, Any]:
    """Read, standardize, cut and write one case, then mark it done.

    The done marker is written only after the case's data is in place (Zarr shards renamed into the
    store, or the HDF5 part staged), so a case without marker is simply rewritten by a resumed build.

    Returns:
        The case's record (also the marker's content), see :func:`case_record`.

    Raises:
        CaseError: the case cannot be read, unless ``task.skip_bad`` (then it is recorded as skipped).
    """
    plan, layout = task.plan, task.layout
    state = BuildState(task.store)
    k = layout.patches_per_case
    if plan.n_patches == 0:
        # Nothing to read for the patches, but the case table records every file's hash.
        root = task.root if task.root is not None else Path("/")
        images = tuple(file_record(p, root) for p in task.files.image_paths if p.is_file())
        record = case_record(plan, k, files=images + plan.files)
    else:
        try:
            arrays = read_case_arrays(task.files, with_label=False)
            label = planned_label(task.files, plan)
        except CaseError as err:
            if not task.skip_bad:
                raise
            problem = " ".join(err.message.split())
            logger.warning("skipping bad case: %s", problem)
            record = case_record(plan, k, problem=problem)
        else:
            images, labels, mean, std = cut_case_patches(arrays, label, plan.corners, task.params, k)
            files = _source_records(task, arrays)
            del arrays, label
            _write_patches(task, images, labels, plan.n_patches)
            record = case_record(plan, k, mean, std, files=files)
    state.mark_done(plan.index, record)
    return record


def _write_patches(task: CaseTask, images: np.ndarray, labels: np.ndarray, n_patches: int) -> None:
    if task.params.store.format == "hdf5":
        from brainprep.store.hdf5_store import encode_case_chunks, write_case_part

        image_chunks, label_chunks = encode_case_chunks(images, labels, task.layout, n_patches)
        write_case_part(BuildState(task.store).part_path(task.plan.index), image_chunks, label_chunks)
    else:
        from brainprep.store.zarr_store import write_case_zarr

        write_case_zarr(task.store, task.layout, task.plan.index, images, labels)
