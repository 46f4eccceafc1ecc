"""Import the "AI for Medicine" course's legacy patch folder into a patch store.

The course wrote one HDF5 file per patch, ``BRATS_NNN.nii.gz_K_xX_yY_zZ.h5`` (case, 1-based patch index,
corner), holding ``x`` float64 (4, 160, 160, 16) RAW intensities (FLAIR, T1w, T1gd, T2w) and ``y`` float64
(160, 160, 16, 4) one-hot labels, channels LAST, over background / edema / non-enhancing / enhancing; a
``config.json`` ``{"train": [file names], "valid": [file names]}`` names the split. Everything about a patch
but its pixels lives in its file name, which this module turns into the store's patch table.

The import standardizes each patch as the course's loader did (each channel of each z-slice to mean 0 /
std 1, :func:`brainprep.standardize.standardize_patch_slices`), stores labels as the argmax of ``y`` (MSD
labels 0..3) and keeps the course's patch index: patch ``K`` of a case goes to slot ``K - 1`` of that case,
so a file left out leaves an empty slot rather than shifting the others. The corners are on the MSD
Task01 array grid the course read with nibabel (identity affine, so also the RAS grid of the schema).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.errors import (
    BrainprepError,
    ConfigError,
    InvalidValueError,
    ShapeMismatchError,
    UnreadableFileError,
    one_line,
)
from brainprep.params import BuildParams, SamplingParams, SplitParams, StoreParams
from brainprep.read.case import check_real_dtype
from brainprep.sample import patch_fractions
from brainprep.spec import MSD_SPEC
from brainprep.standardize import standardize_patch_slices
from brainprep.store import schema
from brainprep.store.locations import format_for_new_store

logger = logging.getLogger(__name__)

#: ``BRATS_009.nii.gz_4_x16_y62_z63.h5`` -> case BRATS_009, patch 4, corner (16, 62, 63).
PATCH_NAME = re.compile(
    r"^(?P<case>.+?)\.nii(?:\.gz)?_(?P<index>\d+)_x(?P<x>\d+)_y(?P<y>\d+)_z(?P<z>\d+)\.h5$"
)
CONFIG_FILE = "config.json"
#: config.json split names -> store split names.
COURSE_SPLITS: dict[str, str] = {"train": "train", "valid": "val"}
#: What to do with patch files on disk that config.json does not list.
UNLISTED_POLICIES: tuple[str, ...] = ("skip", "train")
N_CLASSES = 4
#: The course's get_sub_volume threshold (background share < 0.95).
COURSE_BACKGROUND_THRESHOLD = 0.95


@dataclass(frozen=True)
class CoursePatch:
    """One legacy patch file.

    Attributes:
        path: the ``.h5`` file.
        case_id: ``BRATS_009``.
        index: the course's 1-based patch index ``K`` of the name.
        corner: (x, y, z) from the name.
        split: ``train`` or ``val``.
    """

    path: Path
    case_id: str
    index: int
    corner: tuple[int, int, int]
    split: str


@dataclass(frozen=True)
class CourseImport:
    """What :func:`import_course` did.

    Attributes:
        store: the store written.
        n_patches: patches written.
        cases: ``{case_id: split}``.
        unlisted: file names on disk but not in config.json (skipped or imported as train, by
            ``unlisted_policy``).
        missing: file names listed in config.json but not on disk.
        unlisted_policy: ``skip`` or ``train``.
        seconds: wall time of the import.
    """

    store: Path
    n_patches: int
    cases: dict[str, str]
    unlisted: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unlisted_policy: str = "skip"
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------------
# Pure pieces.


def parse_patch_name(name: str) -> tuple[str, int, tuple[int, int, int]]:
    """``(case_id, index, corner)`` from a course file name.

    Raises:
        ConfigError: the name does not follow ``CASE.nii.gz_K_xX_yY_zZ.h5``.
    """
    match = PATCH_NAME.match(name)
    if match is None:
        raise ConfigError(
            f"course patch file name must look like BRATS_NNN.nii.gz_K_xX_yY_zZ.h5, found {name!r}"
        )
    corner = (int(match["x"]), int(match["y"]), int(match["z"]))
    index = int(match["index"])
    if index < 1:  # the course numbers patches from 1; patch K is stored in slot K - 1 of its case
        raise ConfigError(f"course patch numbers start at 1, found patch {index} in {name!r}")
    return match["case"], index, corner


def onehot_to_labels(y: np.ndarray, *, path: Path | None = None, case_id: str | None = None) -> np.ndarray:
    """MSD labels from the course's channels-last one-hot.

    Args:
        y: float (X, Y, Z, 4), one-hot over background, edema, non-enhancing, enhancing.

    Returns:
        uint8 (X, Y, Z), the index of the 1 of each voxel.

    Raises:
        ShapeMismatchError: ``y`` is not (X, Y, Z, 4).
        InvalidValueError: a value is not 0 or 1, or a voxel has no or several ones.
    """
    if y.ndim != 4 or y.shape[-1] != N_CLASSES:
        raise ShapeMismatchError(
            f"y must be one-hot (X, Y, Z, {N_CLASSES}) channels last, found shape {y.shape}",
            case_id=case_id,
            path=path,
        )
    not_binary = ~((y == 0) | (y == 1))
    if not_binary.any():
        bad = np.unique(y[not_binary])[:5].tolist()
        raise InvalidValueError(f"y must hold only 0 and 1, found {bad}", case_id=case_id, path=path)
    ones = y.sum(axis=-1)
    if not (ones == 1).all():
        voxel = tuple(int(i) for i in np.argwhere(ones != 1)[0])
        raise InvalidValueError(
            f"y must have exactly one 1 per voxel, found {int(ones[voxel])} at voxel {voxel} "
            f"({int((ones != 1).sum())} such voxels)",
            case_id=case_id,
            path=path,
        )
    return np.argmax(y, axis=-1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Per-file I/O.


def read_course_patch(patch: CoursePatch, patch_size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Read, check and convert one legacy patch file.

    Returns:
        ``(image, label)``: float32 (4, X, Y, Z) standardized per channel and z-slice; uint8 (X, Y, Z).

    Raises:
        UnreadableFileError: see :func:`_course_datasets`.
        ShapeMismatchError: ``x`` is not (4, *patch_size) or ``y`` not (*patch_size, 4).
        InvalidValueError: ``x`` or ``y`` is not numeric (:func:`~brainprep.read.case.check_real_dtype`),
            ``x`` holds NaN or Inf, ``y`` is not one-hot.
    """
    with _course_datasets(patch) as (x_data, y_data):
        x, y = x_data[()], y_data[()]
    if x.shape != (schema.N_CHANNELS, *patch_size):
        raise ShapeMismatchError(
            f"x must be ({schema.N_CHANNELS}, {', '.join(map(str, patch_size))}), found {x.shape}",
            case_id=patch.case_id,
            path=patch.path,
        )
    if y.shape[:3] != patch_size:
        raise ShapeMismatchError(
            f"y must be ({', '.join(map(str, patch_size))}, {N_CLASSES}), found {y.shape}",
            case_id=patch.case_id,
            path=patch.path,
        )
    for name, array in (("x", x), ("y", y)):  # np.isfinite would raise a TypeError on text or compounds
        check_real_dtype(array.dtype, patch.case_id, patch.path, name)
    if not np.isfinite(x).all():
        raise InvalidValueError("x holds NaN or Inf", case_id=patch.case_id, path=patch.path)
    label = onehot_to_labels(y, path=patch.path, case_id=patch.case_id)
    return standardize_patch_slices(x), label


@contextlib.contextmanager
def _course_datasets(patch: CoursePatch) -> Iterator[tuple[Any, Any]]:
    """The open ``x`` and ``y`` datasets of a course patch file.

    Raises:
        UnreadableFileError: the file is not HDF5 (corrupt, truncated, unreadable), it lacks dataset ``x``
            or ``y``, or reading them in the ``with`` body fails (a corrupt chunk).
    """
    import h5py

    try:
        with h5py.File(patch.path, "r") as handle:
            found = {name: handle.get(name) for name in ("x", "y")}
            absent = [name for name, item in found.items() if not isinstance(item, h5py.Dataset)]
            if absent:
                raise UnreadableFileError(
                    f"course patch file must hold datasets x and y, found no dataset {' or '.join(absent)} "
                    f"(it holds {sorted(handle)})",
                    case_id=patch.case_id,
                    path=patch.path,
                )
            yield found["x"], found["y"]
    except BrainprepError:
        raise
    except (OSError, KeyError, RuntimeError) as error:  # h5py raises all three for damaged files
        raise UnreadableFileError(
            f"cannot read course patch file as HDF5: {one_line(error)}",
            case_id=patch.case_id,
            path=patch.path,
        ) from None


def _file_record(path: Path, root: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "path": path.relative_to(root).as_posix(),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


# ---------------------------------------------------------------------------------------------------------
# Discovery.


def discover_course_patches(
    source: Path, unlisted_policy: str = "skip"
) -> tuple[list[CoursePatch], tuple[str, ...], tuple[str, ...]]:
    """Find the patch files under ``source`` and give each its split from ``source/config.json``.

    Returns:
        ``(patches, unlisted, missing)``: patches sorted by case and index (unlisted ones included only with
        ``unlisted_policy="train"``), file names on disk that config.json does not list, and file names it
        lists that are not on disk.

    Raises:
        ConfigError: bad policy, missing or malformed config.json (see :func:`read_course_config`), two
            files of the same name in different subfolders, a case in two splits, two files with the same
            case and index, or no patch file at all.
    """
    if unlisted_policy not in UNLISTED_POLICIES:
        raise ConfigError(f"unlisted policy must be one of {UNLISTED_POLICIES}, got {unlisted_policy!r}")
    config_path = source / CONFIG_FILE
    listed = read_course_config(source)
    files = _patch_files(source)
    unlisted = tuple(sorted(set(files) - set(listed)))
    missing = tuple(sorted(set(listed) - set(files)))
    patches, seen, case_split = [], {}, {}
    for name, path in files.items():
        split = listed.get(name, "train" if unlisted_policy == "train" else None)
        if split is None:
            continue
        case_id, index, corner = parse_patch_name(name)
        if case_split.setdefault(case_id, split) != split:
            raise ConfigError(f"{config_path}: case {case_id} has patches in both train and val ({name})")
        if (case_id, index) in seen:
            raise ConfigError(
                f"two files hold patch {index} of case {case_id}: {seen[case_id, index]} and {name}"
            )
        seen[case_id, index] = name
        patches.append(CoursePatch(path, case_id, index, corner, split))
    patches.sort(key=lambda p: (p.case_id, p.index))
    return patches, unlisted, missing


def read_course_config(source: Path) -> dict[str, str]:
    """``{file name: store split}`` from ``source/config.json``.

    Raises:
        ConfigError: config.json is missing or not JSON, repeats a key, is not
            ``{"train": [...], "valid": [...]}``, a split is not a list of file names, or a file is listed in
            both splits.
    """
    config_path = source / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(), object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise ConfigError(f"course folder {source} has no {CONFIG_FILE}") from None
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, not JSON, a repeated key
        raise ConfigError(f"{config_path} is not readable JSON: {error}") from None
    if not isinstance(config, dict) or set(config) - set(COURSE_SPLITS):
        found = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ConfigError(f'{config_path} must be {{"train": [...], "valid": [...]}}, found {found}')
    listed: dict[str, str] = {}
    for course_split, names in config.items():
        _check_names(names, f'{config_path}: "{course_split}"')
        for name in names:
            # without this check a file in both lists would silently end up in the last one
            if listed.setdefault(name, COURSE_SPLITS[course_split]) != COURSE_SPLITS[course_split]:
                raise ConfigError(f"{config_path}: {name} is listed in both train and valid")
    return listed


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict; a repeated key (json.loads would silently keep the last) is refused."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"repeated key {', '.join(map(repr, repeated))} (only its last list would count)")
    return dict(pairs)


def _check_names(names: Any, where: str) -> None:
    """Refuse a config.json split that is not a list of file names (``null``, a string, a number in it)."""
    if not isinstance(names, list):
        raise ConfigError(f"{where} must be a list of file names, found {_json_excerpt(names)}")
    for position, name in enumerate(names):
        if not isinstance(name, str):
            raise ConfigError(
                f"{where} must be a list of file names, found {_json_excerpt(name)} at position {position}"
            )


def _json_excerpt(value: Any, limit: int = 60) -> str:
    """``value`` as JSON on one line, cut to ``limit`` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _patch_files(source: Path) -> dict[str, Path]:
    """``{file name: path}`` of the ``.h5`` files under ``source``, in subfolders or not.

    Raises:
        ConfigError: no ``.h5`` file, or two of the same name (config.json names files by name alone, so
            it cannot tell them apart).
    """
    files: dict[str, Path] = {}
    for path in sorted(source.rglob("*.h5")):
        if path.name in files:
            raise ConfigError(f"two course patch files are named {path.name}: {files[path.name]} and {path}")
        files[path.name] = path
    if not files:
        raise ConfigError(f"course folder {source} holds no .h5 patch file")
    return files


# ---------------------------------------------------------------------------------------------------------
# Driver.


def import_course(
    source: Path,
    store: Path,
    *,
    unlisted_policy: str = "skip",
    store_params: StoreParams | None = None,
    progress: bool = False,
) -> CourseImport:
    """Convert a legacy course patch folder into a complete Zarr v3 (``*.zarr``) or HDF5 (``*.h5``) store.

    Every case gets K slots, K = the largest patch index found; patch ``k`` of a case goes to slot
    ``case_index * K + k - 1``. The store's ``params`` record what is known of the course's build: patch
    size, K, threshold 0.95, the rejection sampler and the patch-slice standardization.

    Args:
        source: the course folder (``config.json`` and the ``.h5`` files, in subfolders or not).
        store: output store; its suffix picks the format (replaced if it exists; missing folders above it
            are made).
        unlisted_policy: ``skip`` files not in config.json, or put them in ``train``.
        store_params: dtype and compression level (its ``format`` is taken from the suffix).
        progress: tqdm bar over cases.
    """
    from brainprep import __version__

    start = time.perf_counter()
    source, store = Path(source), Path(store)
    fmt = format_for_new_store(store)
    store_params = (store_params or StoreParams()).replace(format=fmt)
    patches, unlisted, missing = discover_course_patches(source, unlisted_policy)
    # INFO, not WARNING: the result (and the CLI) lists them; config.json of the course omits 3 train files.
    for name in unlisted:
        action = "skipped" if unlisted_policy == "skip" else "imported as train"
        logger.info("%s: %s is not in config.json; %s", source, name, action)
    for name in missing:
        logger.info("%s: config.json lists %s, which is not on disk", source, name)
    if not patches:
        raise ConfigError(f"course folder {source}: no patch file is listed in config.json")

    by_case: dict[str, list[CoursePatch]] = defaultdict(list)
    for patch in patches:
        by_case[patch.case_id].append(patch)
    case_ids = sorted(by_case)
    per_case = max(p.index for p in patches)
    patch_size = _patch_size(patches[0])
    layout = schema.StoreLayout(
        len(case_ids), per_case, patch_size, store_params.dtype, store_params.compression_level
    )
    params = BuildParams(
        sampling=SamplingParams(patch_size, per_case, COURSE_BACKGROUND_THRESHOLD, sampler="rejection"),
        store=store_params,
        split=SplitParams(val_fraction=0.0, split_file=str(source / CONFIG_FILE)),
    )
    table = _empty_table(layout.n_slots)
    records = []
    writer = _ZarrWriter(store, layout) if fmt == "zarr" else _Hdf5Writer(store, layout)
    try:
        writer.create(_metadata(__version__, params, source, records, complete=False))
        _import_cases(writer, by_case, layout, table, records, source, progress)
        n_patches = len(patches)
        metadata = _metadata(__version__, params, source, records, complete=True)
        metadata["summary"] = {
            "cases": len(case_ids),
            "patches": n_patches,
            "skipped": 0,
            "seconds": round(time.perf_counter() - start, 3),
            "unlisted_files": list(unlisted),
            "unlisted_policy": unlisted_policy,
            "missing_files": list(missing),
        }
        table[schema.CASE_MEAN] = np.full((len(case_ids), schema.N_CHANNELS), np.nan, dtype=np.float32)
        table[schema.CASE_STD] = np.full((len(case_ids), schema.N_CHANNELS), np.nan, dtype=np.float32)
        writer.finish(table, metadata)
    except BaseException:
        writer.abort()  # no half-written store left behind
        raise
    logger.info("imported %d course patches of %d cases into %s", n_patches, len(case_ids), store)
    return CourseImport(
        store=store,
        n_patches=n_patches,
        cases={case_id: by_case[case_id][0].split for case_id in case_ids},
        unlisted=unlisted,
        missing=missing,
        unlisted_policy=unlisted_policy,
        seconds=time.perf_counter() - start,
    )


def _import_cases(
    writer: Any,
    by_case: dict[str, list[CoursePatch]],
    layout: schema.StoreLayout,
    table: dict[str, np.ndarray],
    records: list[dict[str, Any]],
    source: Path,
    progress: bool,
) -> None:
    """Read each case's course patches, write its K slots and fill its table rows and case record."""
    case_ids, per_case, patch_size = sorted(by_case), layout.patches_per_case, layout.patch_size
    iterator = case_ids
    if progress:
        from tqdm import tqdm

        iterator = tqdm(case_ids, desc="importing cases", unit="case")
    for case_index, case_id in enumerate(iterator):
        images = np.zeros((per_case, schema.N_CHANNELS, *patch_size), dtype=layout.dtype)
        labels = np.zeros((per_case, *patch_size), dtype=np.uint8)
        for patch in by_case[case_id]:
            image, label = read_course_patch(patch, patch_size)
            offset = patch.index - 1
            images[offset], labels[offset] = image, label
            slot = case_index * per_case + offset
            tumour, classes = patch_fractions(label, MSD_SPEC.n_classes)
            table[schema.PATCH_VALID][slot] = True
            table[schema.PATCH_CASE][slot] = case_index
            table[schema.PATCH_CORNER][slot] = patch.corner
            table[schema.PATCH_TUMOUR_FRACTION][slot] = tumour
            table[schema.PATCH_CLASS_FRACTIONS][slot] = classes
            table[schema.PATCH_SPLIT][slot] = schema.SPLIT_CODES[patch.split]
        digest = writer.write_case(case_index, images, labels)
        case_rows = by_case[case_id]
        fractions = table[schema.PATCH_TUMOUR_FRACTION][case_index * per_case : (case_index + 1) * per_case]
        records.append(
            {
                "index": case_index,
                "case_id": case_id,
                "split": case_rows[0].split,
                "files": [_file_record(p.path, source) for p in case_rows],
                "n_patches": len(case_rows),
                "n_slots": per_case,
                "valid_corner_share": None,
                "best_tumour_fraction": float(fractions.max()),
                "skip_reason": None
                if len(case_rows) == per_case
                else f"{per_case - len(case_rows)} of {per_case} course patches not imported",
                "data_digest": digest,
            }
        )


def _patch_size(patch: CoursePatch) -> tuple[int, int, int]:
    """(X, Y, Z) of the ``x`` of ``patch`` (the first patch fixes the store's patch size)."""
    with _course_datasets(patch) as (x_data, _):
        shape = x_data.shape
    if len(shape) != 4 or shape[0] != schema.N_CHANNELS:
        raise ShapeMismatchError(
            f"x must be ({schema.N_CHANNELS}, X, Y, Z), found {shape}", case_id=patch.case_id, path=patch.path
        )
    return (int(shape[1]), int(shape[2]), int(shape[3]))


def _empty_table(n_slots: int) -> dict[str, np.ndarray]:
    return {
        schema.PATCH_VALID: np.zeros(n_slots, dtype=bool),
        schema.PATCH_CASE: np.full(n_slots, schema.EMPTY_SLOT, dtype=np.int32),
        schema.PATCH_CORNER: np.zeros((n_slots, 3), dtype=np.int32),
        schema.PATCH_TUMOUR_FRACTION: np.zeros(n_slots, dtype=np.float32),
        schema.PATCH_CLASS_FRACTIONS: np.zeros((n_slots, MSD_SPEC.n_classes), dtype=np.float32),
        schema.PATCH_SPLIT: np.full(n_slots, schema.EMPTY_SLOT, dtype=np.int8),
    }


def _metadata(
    version: str, params: BuildParams, source: Path, records: list, *, complete: bool
) -> dict[str, Any]:
    digests = sorted(f["sha256"] for record in records for f in record["files"])
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "tool_version": version,
        "params": params.to_dict(),
        "source": {
            "root": str(source),
            "layout": "course-patches",
            "fingerprint": hashlib.sha256("\n".join(digests).encode()).hexdigest(),
        },
        # the course's one-hot channels are MSD's classes (edema, non-enhancing, enhancing)
        "spec": MSD_SPEC.to_dict(),
        "channel_names": list(MSD_SPEC.channels),
        "class_names": list(MSD_SPEC.classes),
        "split_names": list(schema.SPLIT_NAMES),
        "cases": list(records),
        "complete": complete,
        "summary": {},
    }


class _ZarrWriter:
    """The build's Zarr writer functions (:mod:`brainprep.store.zarr_store`), in import order.

    The store is written in a hidden folder beside ``STORE.zarr`` and renamed into place by
    :meth:`finish`, so a failed import leaves no store (an import, unlike a build, does not resume).
    """

    def __init__(self, final: Path, layout: schema.StoreLayout):
        self.final, self.layout = final, layout
        final.parent.mkdir(parents=True, exist_ok=True)  # as every writer does: a missing folder is fine
        self.staging = Path(tempfile.mkdtemp(prefix=".import-", dir=final.parent))
        self.path = self.staging / final.name

    def create(self, metadata: dict[str, Any]) -> None:
        from brainprep.store.zarr_store import create_zarr_store

        create_zarr_store(self.path, self.layout, metadata)

    def write_case(self, index: int, images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
        from brainprep.store.zarr_store import write_case_zarr

        return write_case_zarr(self.path, self.layout, index, images, labels)

    def finish(self, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
        from brainprep.store.integrity import seal
        from brainprep.store.zarr_store import set_metadata_zarr, write_table_zarr

        write_table_zarr(self.path, arrays)
        set_metadata_zarr(self.path, seal(metadata, arrays))
        if self.final.exists():  # replaced: the old store moves out of the way first
            os.replace(self.final, self.staging / "replaced")
        os.replace(self.path, self.final)
        self.abort()

    def abort(self) -> None:
        """Remove what was written (and a replaced store, once the new one is in place)."""
        shutil.rmtree(self.staging, ignore_errors=True)


class _Hdf5Writer:
    """The build's HDF5 writer (:mod:`brainprep.store.hdf5_store`): chunks staged in a temporary folder,
    then assembled into ``STORE.h5.partial`` and renamed, so ``STORE.h5`` only ever exists complete."""

    def __init__(self, path: Path, layout: schema.StoreLayout):
        self.path, self.layout = path, layout
        path.parent.mkdir(parents=True, exist_ok=True)  # as every writer does: a missing folder is fine
        self.staging = tempfile.TemporaryDirectory(prefix=".import-", dir=path.parent)
        self.parts: dict[int, Path] = {}

    def create(self, metadata: dict[str, Any]) -> None:
        del metadata  # written once, complete, by assemble_hdf5

    def write_case(self, index: int, images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
        from brainprep.store.hdf5_store import encode_case_chunks, write_case_part
        from brainprep.store.shards import checksum_digest

        # encode_case_chunks encodes the first n slots; course patches may leave holes, so encode all K
        # (an empty slot's chunk is a compressed block of zeros, read back as zeros like an unwritten one).
        image_chunks, label_chunks = encode_case_chunks(images, labels, self.layout, len(images))
        part = Path(self.staging.name) / f"{index:06d}.npz"
        write_case_part(part, image_chunks, label_chunks)
        self.parts[index] = part
        return {"images": checksum_digest(image_chunks), "labels": checksum_digest(label_chunks)}

    def finish(self, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
        from brainprep.store.hdf5_store import assemble_hdf5
        from brainprep.store.integrity import seal

        try:
            assemble_hdf5(self.path, self.layout, self.parts, arrays, seal(metadata, arrays))
        finally:
            self.abort()

    def abort(self) -> None:
        """Remove the staged parts."""
        self.staging.cleanup()
