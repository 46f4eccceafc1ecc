"""Verify a volume store without its manifest (:func:`brainprep.verify.check_store_consistency` calls it).

What a sealed volume store says about itself, checked, as :class:`~brainprep.manifest.Difference` rows
naming the array, case and problem: the case tables against their digests; per case, every chunk of its
image and label (decoded, so every crc32c / fletcher32 is checked; a missing chunk or shard is a row),
the chunks against the case's recorded data digest (a chunk swapped for another valid one), the image
finite, each array's dtype, shape and codec layout against the store's dtype and the case's crop (the
reader's own check, ``VolumeStore._array``: a damaged ``zarr.json`` or HDF5 header reads other values or
another shape, and the chunk checksums do not cover it), and the sampling tables against their digests
and against the stored label (the corner table recomputed, every class location on its class).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from brainprep.errors import StoreCorruptError, StoreError
from brainprep.manifest import Difference, _progress
from brainprep.store import integrity
from brainprep.store import volume_schema as vs
from brainprep.store.shards import checksum_digest
from brainprep.store.volume_zarr import shard_digest, shard_key
from brainprep.verify import short_problem
from brainprep.volume import crop_corner_table


def check_volume_store(store: Any, progress: bool = False) -> list[Difference]:
    """Every way the complete volume ``store`` (an open ``VolumeStore``) disagrees with itself."""
    out: list[Difference] = []
    metadata = store.metadata
    for name in vs.CASE_TABLE_ARRAYS:
        try:
            integrity.check_table(store.location, metadata, name, store.read_table_array(name, check=False))
        except StoreCorruptError as error:
            out.append(Difference(name, "(table)", short_problem(error, store.location)))
    for entry in _progress(metadata.get("cases", []), progress, "checking cases", "case"):
        if entry.get("crop_shape") is not None:
            out.extend(_case_differences(store, entry))
    return out


def _case_differences(store: Any, entry: dict[str, Any]) -> list[Difference]:
    index, case = int(entry["index"]), (entry["case_id"],)
    out: list[Difference] = []
    arrays: dict[str, np.ndarray] = {}
    every = (slice(None),) * 3
    for name, selection in ((vs.IMAGES, (slice(None), *every)), (vs.LABELS, every)):
        key = vs.case_key(name, index)
        try:  # a wrong dtype or shape is refused here, as every read refuses it
            arrays[name] = store._read(name, index, selection)
        except (StoreError, KeyError) as error:
            out.append(Difference(name, key, short_problem(error, store.location), None, case))
            continue
        if integrity.is_sealed(store.metadata) and _chunk_digest(store, name, index) != (
            entry.get("data_digest") or {}
        ).get(name):
            problem = "stored chunks no longer give the case's recorded data digest (a chunk was replaced)"
            out.append(Difference(name, key, problem, None, case))
    if vs.IMAGES in arrays and not np.isfinite(arrays[vs.IMAGES]).all():
        out.append(Difference(vs.IMAGES, vs.case_key(vs.IMAGES, index), "image holds NaN or Inf", None, case))
    label = arrays.get(vs.LABELS)
    if label is None:
        return out
    tables = {}
    for name in vs.SAMPLING_TABLES:
        try:
            tables[name] = store.sampling_table(index, name)
        except (StoreError, KeyError) as error:
            out.append(
                Difference(name, vs.case_key(name, index), short_problem(error, store.location), None, case)
            )
    if len(tables) == len(vs.SAMPLING_TABLES):
        out.extend(_table_problems(store, index, label, tables, case))
    return out


def _table_problems(
    store: Any, index: int, label: np.ndarray, tables: dict[str, np.ndarray], case: tuple[str, ...]
) -> list[Difference]:
    params = store.params.sampling
    source_shape = store.cases[index]["source_shape"]
    corners, voxels = crop_corner_table(
        label, store.crop(index), source_shape, params.patch_size, params.background_threshold
    )
    out = []
    if not (
        np.array_equal(corners, tables[vs.TUMOUR_CORNERS])
        and np.array_equal(voxels, tables[vs.TUMOUR_VOXELS])
    ):
        problem = (
            f"corner table ({len(tables[vs.TUMOUR_VOXELS])} corners) differs from the label's ({len(voxels)})"
        )
        out.append(Difference(vs.TUMOUR_CORNERS, vs.case_key(vs.TUMOUR_CORNERS, index), problem, None, case))
    rows = tables[vs.CLASS_LOCATIONS]
    inside = ((rows[:, 1:] >= 0) & (rows[:, 1:] < label.shape)).all(axis=1)
    if not inside.all() or not (label[tuple(rows[:, 1:].T)] == rows[:, 0]).all():
        problem = "class locations point at voxels of another class or outside the crop"
        out.append(
            Difference(vs.CLASS_LOCATIONS, vs.case_key(vs.CLASS_LOCATIONS, index), problem, None, case)
        )
    return out


def _chunk_digest(store: Any, name: str, index: int) -> str | None:
    """:func:`checksum_digest` of the stored chunks of case ``index``'s array ``name`` (``None`` when one
    is missing)."""
    array = store._array(name, index)
    if store.format == "hdf5":
        count = array.id.get_num_chunks()
        offsets = sorted(tuple(int(v) for v in array.id.get_chunk_info(i).chunk_offset) for i in range(count))
        return checksum_digest([bytes(array.id.read_direct_chunk(o)[1]) for o in offsets])
    source = store.source(vs.case_key(name, index))
    return shard_digest(source.read_whole(shard_key(array)) or b"", array)
