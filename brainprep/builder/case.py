"""The per-case work of a build: read -> standardize -> cut -> write -> done marker.

:func:`cut_patches` is the pure array function; :func:`write_case` does the I/O of one case and runs on
a dask worker. A worker holds one case at a time: the decoded image files (read once each, hashed from
the same bytes, voxels viewed in place in their own dtype: ~140 MB for a float32 240x240x155x4 case, see
:func:`brainprep.read.case.read_case_arrays`) and the K patches in the store dtype. Only the K patches
are standardized (``patch-slice``); ``volume-nonzero`` needs the whole float32 volume for its statistics
and makes it. The label file is not read here: its patches come with the plan, cut when the plan read it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.builder.plan import CasePlan, file_entry, file_record
from brainprep.errors import CaseError, ShapeMismatchError
from brainprep.params import BuildParams
from brainprep.read import CaseFiles
from brainprep.read.case import CaseArrays, read_case_arrays
from brainprep.read.nifti import ReadBuffers
from brainprep.sample import cut_label_patches, extract_patch
from brainprep.spacing import geometry_entries, resample_case_arrays
from brainprep.standardize import (
    background_values,
    brain_mask,
    nonzero_statistics,
    standardize_channel_slices,
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


def cut_image_patches(
    image: np.ndarray, corners: np.ndarray, params: BuildParams, n_slots: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Standardize and cut the image patches of one case.

    Args:
        image: float32 (4, X, Y, Z) RAS volume.
        corners: int (n, 3) patch corners, n <= ``n_slots``.
        params: standardization method, patch size and store dtype.
        n_slots: K; slots past ``n`` stay zero.

    Returns:
        (images (K, 4, px, py, pz) store dtype, mean float64 (4,) or None, std float64 (4,) or None);
        mean/std are the volume statistics of ``volume-nonzero``.
    """
    size = params.sampling.patch_size
    images = np.zeros((n_slots, image.shape[0], *size), dtype=params.store.dtype)
    mean = std = background = None
    if params.standardize.method == "volume-nonzero" and len(corners):
        background = background_values(image)  # the volume's: a patch's border is not the volume's
        mean, std = nonzero_statistics(image, background)
    for i, corner in enumerate(corners):
        patch = extract_patch(image, corner, size)
        if mean is not None and std is not None:
            # brain_mask is voxelwise given the background, so the patch's mask is the volume mask cut
            # at the same corner.
            images[i] = standardize_with_statistics(patch, mean, std, mask=brain_mask(patch, background))
        else:
            standardize_patch_slices(patch, images[i])
    return images, mean, std


def slot_labels(label_patches: np.ndarray, n_slots: int) -> np.ndarray:
    """uint8 (K, px, py, pz): the n label patches in the first slots, zeros after."""
    labels = np.zeros((n_slots, *label_patches.shape[1:]), dtype=np.uint8)
    labels[: len(label_patches)] = label_patches
    return labels


def cut_patches(
    image: np.ndarray,
    label: np.ndarray,
    corners: np.ndarray,
    params: BuildParams,
    n_slots: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Standardize and cut the patches of one case: :func:`cut_image_patches` plus the label patches.

    Args:
        image: float32 (4, X, Y, Z) RAS volume.
        label: uint8 (X, Y, Z) RAS labels.
        corners, params, n_slots: as for :func:`cut_image_patches`.

    Returns:
        (images (K, 4, px, py, pz) store dtype, labels uint8 (K, px, py, pz), mean, std).
    """
    images, mean, std = cut_image_patches(image, corners, params, n_slots)
    labels = slot_labels(cut_label_patches(label, corners, params.sampling.patch_size), n_slots)
    return images, labels, mean, std


def cut_case_images(
    arrays: CaseArrays,
    corners: np.ndarray,
    params: BuildParams,
    n_slots: int,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`cut_image_patches` on a case read with :func:`read_case_arrays` (same arrays, same bits).

    ``patch-slice`` standardizes each patch straight from the file's voxels into the store dtype (a few
    float64 slices at a time); ``volume-nonzero`` makes the float32 volume and calls
    :func:`cut_image_patches`.

    Args:
        arrays: the case's channels as views.
        corners, params, n_slots: as for :func:`cut_image_patches`.
        out: (K, 4, px, py, pz) store-dtype array to fill (``patch-slice``; any content, every slot is
            written); ``None``: a new one.

    Returns:
        As :func:`cut_image_patches`.
    """
    if params.standardize.method != "patch-slice":
        return cut_image_patches(arrays.volume(), corners, params, n_slots)
    size = params.sampling.patch_size
    shape = (n_slots, len(arrays.channels), *size)
    if out is None:
        out = np.empty(shape, dtype=params.store.dtype)
    elif out.shape != shape or out.dtype != np.dtype(params.store.dtype):
        raise ShapeMismatchError(f"out must be {params.store.dtype} {shape}, found {out.dtype} {out.shape}")
    images = out
    images[len(corners) :] = 0
    for i, corner in enumerate(corners):
        for c in range(len(arrays.channels)):
            standardize_channel_slices(arrays.channel_window(c, corner, size), images[i, c])
    return images, None, None


@dataclass(eq=False)
class WorkerBuffers:
    """Memory a build worker reuses from one case to the next: the inflated image files and the K image
    patches (~210 MB for a float32 240x240x155x4 case and 20 float16 patches of 160x160x16). Fresh memory
    for every case costs the kernel time to map it; see :class:`~brainprep.read.nifti.ReadBuffers`."""

    files: ReadBuffers = field(default_factory=ReadBuffers)
    patches: ReadBuffers = field(default_factory=ReadBuffers)

    def images(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """An uninitialized array of ``shape`` and ``dtype`` in the reused memory."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.patches.take(0, nbytes)[:nbytes].view(dtype).reshape(shape)

    def slice_major(self, position: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialized slice-major array (:func:`brainprep.store.volume_schema.slice_major`) in the
        reused memory ``position`` (a volume build's crop and its stored copy: 0 and 1)."""
        from brainprep.store.volume_schema import slice_major

        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return slice_major(shape, dtype, self.patches.take(position, nbytes))


_FREE_BUFFERS: list[WorkerBuffers] = []
_BUFFERS_LOCK = threading.Lock()


@contextmanager
def borrowed_buffers() -> Iterator[WorkerBuffers]:
    """One :class:`WorkerBuffers` for the duration of a case (each thread of a process gets its own)."""
    with _BUFFERS_LOCK:
        buffers = _FREE_BUFFERS.pop() if _FREE_BUFFERS else WorkerBuffers()
    try:
        yield buffers
    finally:
        with _BUFFERS_LOCK:
            _FREE_BUFFERS.append(buffers)


def release_buffers() -> None:
    """Free the buffers this process keeps between cases (the driver calls it when a build ends)."""
    with _BUFFERS_LOCK:
        _FREE_BUFFERS.clear()


def case_record(
    plan: CasePlan,
    n_slots: int,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    problem: str | None = None,
    files: tuple[dict[str, Any], ...] | None = None,
    data_digest: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The done marker of a case: its case-table entry plus its rows of the patch table (JSON types).

    ``files``: the records of every source file (default: the plan's). ``data_digest``: the
    :func:`~brainprep.store.shards.checksum_digest` of the case's stored image and label chunks.
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
        "data_digest": data_digest,
        "mean": None if mean is None else [float(v) for v in mean],
        "std": None if std is None else [float(v) for v in std],
        "corners": plan.corners.tolist() if written else [],
        "tumour_fraction": [float(v) for v in plan.tumour_fraction] if written else [],
        "class_fractions": plan.class_fractions.tolist() if written else [],
        **geometry_entries(plan.geometry),
    }


def on_plan_grid(arrays: CaseArrays, plan: CasePlan) -> CaseArrays:
    """``arrays`` on the grid the plan put the case's label on: resampled (trilinear) when its geometry
    says so (``--resample`` and a case off the target spacing), else as read."""
    if plan.geometry is not None and plan.geometry["resampled"]:
        return resample_case_arrays(arrays, plan.geometry["spacing"])
    return arrays


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
        with borrowed_buffers() as buffers:
            try:
                arrays = on_plan_grid(
                    read_case_arrays(task.files, with_label=False, buffers=buffers.files), plan
                )
            except CaseError as err:
                if not task.skip_bad:
                    raise
                problem = " ".join(err.message.split())
                logger.warning("skipping bad case: %s", problem)
                record = case_record(plan, k, problem=problem)
            else:
                size = task.params.sampling.patch_size
                out = buffers.images((k, len(arrays.channels), *size), task.params.store.dtype)
                images, mean, std = cut_case_images(arrays, plan.corners, task.params, k, out)
                files = _source_records(task, arrays)
                del arrays
                labels = slot_labels(plan.label_patches(size), k)
                digest = _write_patches(task, images, labels, plan.n_patches)
                record = case_record(plan, k, mean, std, files=files, data_digest=digest)
    state.mark_done(plan.index, record)
    return record


def _write_patches(task: CaseTask, images: np.ndarray, labels: np.ndarray, n_patches: int) -> dict[str, str]:
    """Write a case's chunks; returns their ``{"images", "labels"}`` checksum digests."""
    if task.params.store.format == "hdf5":
        from brainprep.store.hdf5_store import encode_case_chunks, write_case_part
        from brainprep.store.shards import checksum_digest

        image_chunks, label_chunks = encode_case_chunks(images, labels, task.layout, n_patches)
        write_case_part(BuildState(task.store).part_path(task.plan.index), image_chunks, label_chunks)
        return {"images": checksum_digest(image_chunks), "labels": checksum_digest(label_chunks)}
    from brainprep.store.zarr_store import write_case_zarr

    return write_case_zarr(task.store, task.layout, task.plan.index, images, labels)
