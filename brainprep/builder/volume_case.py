"""The per-case work of a volume-store build: read -> crop -> tables -> write -> done marker.

The driver (:mod:`brainprep.builder.driver`) runs these instead of :mod:`.plan` / :mod:`.case`'s when
``params.store.kind == "volumes"``: the same lock, build state, resume, refusals and sealing. The plan
reads and checks the label (as a patch build's does, so a bad case stops the build before anything is
written) and carries it, packed, to the write stage, which reads the image once; no corner is drawn at
build time (training draws them), so a case whose brain is smaller than the patch is padded, not refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.builder.case import CaseTask, _source_records, borrowed_buffers, on_plan_grid
from brainprep.builder.plan import CasePlan, file_entry, file_record, pack_label_patches, read_plan_label
from brainprep.errors import CaseError, InvalidValueError
from brainprep.params import BuildParams
from brainprep.read import CaseFiles
from brainprep.read.case import CaseArrays, read_case_arrays
from brainprep.read.nifti import scale_voxels
from brainprep.sample import case_rng
from brainprep.spacing import geometry_entries
from brainprep.spec import CHANNEL_NAMES
from brainprep.standardize import border_voxels, channel_background, nonzero_statistics
from brainprep.store import schema
from brainprep.store import volume_schema as vs
from brainprep.store.lock import BuildState
from brainprep.volume import (
    Crop,
    axis_hits,
    class_locations,
    crop_corner_counts,
    crop_from_hits,
    cut_crop,
    passing_corners,
    window_parts,
)

logger = logging.getLogger(__name__)


def plan_volume_case(files: CaseFiles, index: int, split: str, params: BuildParams, root: Path) -> CasePlan:
    """Read and check the case's label and pack it for the write stage (never raises for a bad case).

    Returns:
        A :class:`CasePlan` without corners; ``packed_labels`` holds the whole label (X, Y, Z), packed
        by :func:`~brainprep.builder.plan.pack_label_patches`; a bad case has ``problem`` set.
    """
    empty = (np.zeros((0, 3), dtype=np.int32), np.zeros(0, dtype=np.float32), np.zeros((0, 3), np.float32))
    try:
        labels, geometry = read_plan_label(files, params.spacing)
    except CaseError as err:
        problem = " ".join(err.message.split())
        logger.info("bad case: %s", problem)
        records = tuple(file_record(p, root) for p in files.all_paths if p.is_file())
        return CasePlan(
            index, files.case_id, split, records, *empty, 0.0, 0.0, f"bad case: {problem}", problem
        )
    assert files.label_path is not None  # read_plan_label checked it; not an input check
    entry = file_entry(files.label_path, root, labels.size, labels.sha256)
    packed = pack_label_patches(np.ascontiguousarray(labels.label)[None])
    return CasePlan(
        index, files.case_id, split, (entry,), *empty, 0.0, 0.0, None, packed_labels=packed, geometry=geometry
    )


def float16_problem(image: np.ndarray, stored: np.ndarray) -> tuple[int, str] | None:
    """Why ``image`` (float32 (C, X, Y, Z)) cannot be stored as float16 without changing it beyond
    rounding: (the first channel that cannot, one line), ``None`` when it can. A magnitude beyond
    float16's range, or a nonzero voxel that became 0 in ``stored`` (``image`` as float16: magnitudes up
    to 2**-25 round to 0, the nearest-even neighbour of float16's smallest 2**-24). Rounding never turns a
    0 into a nonzero, so the vanished voxels are the difference of the two nonzero counts (a float16 -0.0
    counts as 0: its magnitude bits are 0)."""
    if image.size == 0:
        return None
    for c, (channel, rounded) in enumerate(zip(image, stored, strict=True)):
        peak = max(float(channel.max()), -float(channel.min()))
        if peak > vs.FLOAT16_MAX:
            problem = f"exceeds the float16 range ({vs.FLOAT16_MAX:g}); build with --dtype float32"
            return c, f"intensity {peak:g} in channel {CHANNEL_NAMES[c]} {problem}"
        vanished = np.count_nonzero(channel) - np.count_nonzero(rounded.view(np.uint16) << np.uint16(1))
        if vanished:
            problem = "round to 0 in float16; build with --dtype float32"
            return c, f"{vanished} nonzero voxels of channel {CHANNEL_NAMES[c]} {problem}"
    return None


def case_background(arrays: CaseArrays) -> np.ndarray:
    """float64 (4,): :func:`~brainprep.standardize.background_values` of ``arrays.volume()``, from each
    channel's border voxels alone (scaled as the volume is: scaling is elementwise)."""
    values = []
    for channel, (slope, inter) in zip(arrays.channels, arrays.scaling, strict=True):
        values.append(channel_background(scale_voxels(border_voxels(channel), slope, inter, np.float32)))
    return np.array(values, dtype=np.float64)


def case_crop(
    arrays: CaseArrays, label: np.ndarray, patch_size: tuple[int, int, int], background: np.ndarray
) -> Crop | None:
    """:func:`~brainprep.volume.brain_crop` of a case read with
    :func:`~brainprep.read.case.read_case_arrays`, from each channel's own voxels (no float32 volume).

    Args:
        background: float64 (4,), from :func:`case_background`.
    """
    hits = axis_hits(label > 0)
    for c, channel in enumerate(arrays.channels):
        slope, inter = arrays.scaling[c]
        # scaled = raw * slope + inter: zero exactly where raw is, unless inter shifts it
        if slope != 0 and inter == 0 and background[c] == 0:
            brain = channel != 0
        else:
            brain = arrays.channel_window(c, (0, 0, 0), arrays.shape) != np.float32(background[c])
        hits = tuple(a | b for a, b in zip(hits, axis_hits(brain), strict=True))
    return crop_from_hits(hits, arrays.shape, patch_size)


def cut_case_crop(
    arrays: CaseArrays, crop: Crop, background: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """float32 (4, *crop.shape), slice-major (:func:`~brainprep.store.volume_schema.slice_major`: x
    fastest, the NIfTI's own order, so each channel is copied without a transposition): the
    :func:`~brainprep.volume.cut_crop` of ``arrays.volume() - background`` (each channel less its
    background, in float32; so the background is 0, as outside the crop), cut from each channel's voxels.
    With a background of 0 (BraTS) it is the crop of the volume bit for bit. ``out``: a slice-major
    float32 array of that shape to fill (a worker's reused memory, any content), else a new one."""
    shape = (len(arrays.channels), *crop.shape)
    if out is None:
        out = vs.slice_major(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, found {out.dtype} {out.shape}")
    parts = window_parts(arrays.shape, crop.offset, crop.shape)
    if crop.padded or parts is None:
        out[...] = 0
    if parts is not None:
        source, target = parts
        start, size = [s.start for s in source], [s.stop - s.start for s in source]
        for c in range(len(arrays.channels)):
            out[(c, *target)] = arrays.channel_window(c, start, size)
            if background[c] != 0:
                out[(c, *target)] -= np.float32(background[c])
    return out


@dataclass(frozen=True, eq=False)
class VolumeCase:
    """What the store keeps of one case (the pure result of :func:`volume_case`).

    Attributes:
        crop: where the crop lies on the source grid.
        image: (4, X, Y, Z) crop in the store dtype; label: uint8 (X, Y, Z) crop.
        tables: ``tumour_corners`` int32 (M, 3), ``tumour_voxels`` int32 (M,), ``class_locations`` int32
            (L, 4).
        mean, std: float64 (4,) volume-nonzero statistics (of the stored image, less its background).
        n_brain_corners: corners of the crop; best_tumour_fraction: the highest of the corner table's.
        background: float64 (4,) what was subtracted from each channel (0 for BraTS).
    """

    crop: Crop
    image: np.ndarray
    label: np.ndarray
    tables: dict[str, np.ndarray]
    mean: np.ndarray
    std: np.ndarray
    n_brain_corners: int
    best_tumour_fraction: float
    background: np.ndarray


def volume_case(
    cropped: np.ndarray,
    label_crop: np.ndarray,
    crop: Crop,
    params: BuildParams,
    rng: np.random.Generator,
    n_classes: int,
    source_shape: tuple[int, ...],
    background: np.ndarray | None = None,
    stored: np.ndarray | None = None,
    files: CaseFiles | None = None,
) -> VolumeCase:
    """What the store keeps of one case, from its crop (:func:`~brainprep.volume.brain_crop`).

    Args:
        cropped: float32 (4, X, Y, Z), the crop of the RAS image less its background
            (:func:`cut_case_crop`: slice-major; any memory order works, the stored image keeps it);
            label_crop: uint8 (X, Y, Z), its label.
        crop: where the crop lies.
        params: patch size, threshold and store dtype.
        rng: the case's generator (for the class-location sample).
        n_classes: foreground classes of the dataset spec (each gets class locations).
        source_shape: (..., X, Y, Z) of the source volume: the corner table covers its grid.
        background: float64 (4,) subtracted from the image (recorded); ``None``: zeros.
        stored: an array of ``cropped``'s shape in the store dtype to hold the stored image (a worker's
            reused memory); ``None``: a new one (or ``cropped`` itself when the dtypes agree).
        files: the case's files, to name the one a refusal comes from.

    Raises:
        InvalidValueError: a float16 store cannot hold the image (:func:`float16_problem`).
    """
    size = params.sampling.patch_size
    with np.errstate(over="ignore"):  # a value beyond float16's range is refused just below
        if stored is None or np.dtype(params.store.dtype) == cropped.dtype:
            stored = cropped.astype(params.store.dtype, copy=False)  # in cropped's memory order
        else:
            np.copyto(stored, cropped, casting="same_kind")
    if params.store.dtype == "float16":
        found = float16_problem(cropped, stored)
        if found is not None:
            channel, problem = found
            path = None if files is None else files.channel_path(channel)
            raise InvalidValueError(problem, case_id=None if files is None else files.case_id, path=path)
    # The crop holds every brain voxel, less the background, so its brain is its nonzero voxels (float16
    # rounding keeps them nonzero: checked above). The statistics are those of the values as stored, the
    # ones a read standardizes: a channel constant over the brain then has a std of exactly 0 and reads as
    # 0, where float32 statistics would divide float16 rounding errors by max(std, 1e-8). For a float32
    # store they are the whole volume's, bit for bit when summed in the same order: the crop's memory
    # order (x fastest for a slice-major crop, :func:`~brainprep.store.volume_schema.memory_order`).
    mean, std = nonzero_statistics(vs.memory_order(stored), 0.0)
    threshold = params.sampling.background_threshold
    counts, start = crop_corner_counts(label_crop, crop, source_shape, size)
    corners, voxels = passing_corners(counts, size, threshold, start)
    n_corners = int(np.prod([c - p + 1 for c, p in zip(crop.shape, size, strict=True)]))
    # over every corner, passing or not: a patch store's best_tumour_fraction (0.0 only without tumour)
    best = float(counts.max()) / float(np.prod(size)) if counts.size else 0.0
    tables = {
        vs.TUMOUR_CORNERS: corners,
        vs.TUMOUR_VOXELS: voxels,
        vs.CLASS_LOCATIONS: class_locations(label_crop, rng, n_classes),
    }
    background = np.zeros(len(cropped)) if background is None else np.asarray(background, dtype=np.float64)
    return VolumeCase(crop, stored, label_crop, tables, mean, std, n_corners, best, background)


def volume_case_record(
    plan: CasePlan,
    case: VolumeCase | None = None,
    *,
    source_shape: tuple[int, ...] | None = None,
    skip_reason: str | None = None,
    files: tuple[dict[str, Any], ...] | None = None,
    data_digest: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The done marker of a case (JSON types): its ``cases[i]`` entry (:data:`volume_schema.CASE_KEYS`)."""
    crop = case.crop if case is not None else None
    return {
        "index": plan.index,
        "case_id": plan.case_id,
        "split": plan.split,
        "files": list(plan.files if files is None else files),
        "source_shape": None if source_shape is None else [int(s) for s in source_shape],
        "crop_offset": None if crop is None else list(crop.offset),
        "crop_shape": None if crop is None else list(crop.shape),
        "padding": None if crop is None else [list(p) for p in crop.padding],
        "n_brain_corners": 0 if case is None else case.n_brain_corners,
        "n_tumour_corners": 0 if case is None else len(case.tables[vs.TUMOUR_VOXELS]),
        "best_tumour_fraction": 0.0 if case is None else case.best_tumour_fraction,
        "mean": None if case is None else [float(v) for v in case.mean],
        "std": None if case is None else [float(v) for v in case.std],
        "background": None if case is None else [float(v) for v in case.background],
        "skip_reason": skip_reason,
        "data_digest": data_digest,
        **geometry_entries(plan.geometry),
    }


def bad_volume_record(plan: CasePlan, problem: str) -> dict[str, Any]:
    """The done marker of a case that cannot be read."""
    return volume_case_record(plan, skip_reason=f"bad case: {problem}")


def write_volume_case(task: CaseTask) -> dict[str, Any]:
    """Read, crop and write one case, then mark it done (the marker after the data, as for patches).

    Raises:
        CaseError: the case cannot be read or stored, unless ``task.skip_bad``.
    """
    plan, params = task.plan, task.params
    with borrowed_buffers() as buffers:
        try:
            arrays = on_plan_grid(read_case_arrays(task.files, with_label=False, buffers=buffers.files), plan)
            label = np.frombuffer(_unpacked(plan.packed_labels), dtype=np.uint8).reshape(arrays.shape)
            background = case_background(arrays)
            crop = case_crop(arrays, label, params.sampling.patch_size, background)
            case = None
            if crop is not None:
                rng = case_rng(params.seed, plan.case_id)
                shape = (len(arrays.channels), *crop.shape)
                cropped = cut_case_crop(arrays, crop, background, buffers.slice_major(0, shape, np.float32))
                stored = buffers.slice_major(1, shape, params.store.dtype)
                label_crop, n_classes = cut_crop(label, crop), task.files.spec.n_classes
                case = volume_case(
                    cropped,
                    label_crop,
                    crop,
                    params,
                    rng,
                    n_classes,
                    arrays.shape,
                    background,
                    stored,
                    task.files,
                )
        except CaseError as err:
            if err.case_id is None:  # volume_case's float16 check does not know the case
                err.case_id = plan.case_id
            if not task.skip_bad:
                raise
            problem = " ".join(err.message.split())
            logger.warning("skipping bad case: %s", problem)
            record = bad_volume_record(plan, problem)
        else:
            files = _source_records(task, arrays)
            if case is None:
                reason = "no brain voxel: every channel is its background and the label is 0"
                record = volume_case_record(plan, source_shape=arrays.shape, skip_reason=reason, files=files)
            else:
                digest = _write(task, case)
                record = volume_case_record(
                    plan, case, source_shape=arrays.shape, files=files, data_digest=digest
                )
    BuildState(task.store).mark_done(plan.index, record)
    return record


def _unpacked(data: bytes) -> bytes:
    from numcodecs import Blosc

    return Blosc().decode(data)


def _write(task: CaseTask, case: VolumeCase) -> dict[str, str]:
    level, index = task.params.store.compression_level, task.plan.index
    if task.params.store.format == "hdf5":
        from brainprep.store.integrity import array_digest
        from brainprep.store.shards import checksum_digest
        from brainprep.store.volume_hdf5 import write_volume_part

        part = BuildState(task.store).part_path(index)
        chunks = write_volume_part(part, case.image, case.label, case.tables, level)
        digest = {name: checksum_digest(encoded) for name, encoded in chunks.items()}
        digest.update({name: array_digest(case.tables[name]) for name in vs.SAMPLING_TABLES})
        return digest
    from brainprep.store.volume_zarr import write_volume_case_zarr

    return write_volume_case_zarr(task.store, index, case.image, case.label, case.tables, level)


def volume_table_arrays(records: dict[int, dict[str, Any]], n_cases: int) -> dict[str, np.ndarray]:
    """The case tables (:data:`volume_schema.CASE_TABLE_ARRAYS`) from the done markers."""
    split = np.full(n_cases, schema.EMPTY_SLOT, dtype=np.int8)
    offset = np.zeros((n_cases, 3), dtype=np.int32)
    shape = np.zeros((n_cases, 3), dtype=np.int32)
    padding = np.zeros((n_cases, 3, 2), dtype=np.int32)
    brain = np.zeros(n_cases, dtype=np.int64)
    tumour = np.zeros(n_cases, dtype=np.int64)
    mean = np.full((n_cases, schema.N_CHANNELS), np.nan, dtype=np.float32)
    std = np.full((n_cases, schema.N_CHANNELS), np.nan, dtype=np.float32)
    for index, record in records.items():
        if record["crop_shape"] is None:
            continue
        split[index] = schema.SPLIT_CODES[record["split"]]
        offset[index], shape[index] = record["crop_offset"], record["crop_shape"]
        padding[index] = record["padding"]
        brain[index], tumour[index] = record["n_brain_corners"], record["n_tumour_corners"]
        mean[index], std[index] = record["mean"], record["std"]
    return {
        vs.CASE_SPLIT: split,
        vs.CASE_CROP_OFFSET: offset,
        vs.CASE_CROP_SHAPE: shape,
        vs.CASE_PADDING: padding,
        vs.CASE_BRAIN_CORNERS: brain,
        vs.CASE_TUMOUR_CORNERS: tumour,
        vs.CASE_MEAN: mean,
        vs.CASE_STD: std,
    }
