"""Write the HDF5 volume store (same names and metadata as the Zarr one, see :mod:`.volume_schema`).

As for the patch store (:mod:`.hdf5_store`): workers never write ``STORE.h5``. Each compresses its case's
chunks through HDF5's own filter pipeline (:func:`encode_chunks`, in an in-memory file with the store's
dataset options: shuffle + gzip + fletcher32) and stages them with the case's sampling tables in
``STORE.build/parts/`` (:func:`write_volume_part`, atomic); at the end the driver copies the compressed
chunks into ``STORE.h5.partial`` with ``write_direct_chunk`` and renames it (:func:`assemble_volume_hdf5`),
in the checksummed file format (:data:`~brainprep.store.hdf5_store.LIBVER`: a flipped bit in a
dataset's header is refused, not read).
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.store import schema
from brainprep.store import volume_schema as vs
from brainprep.store.hdf5_store import LIBVER, _dataset_options, _pack, _unpack


def encode_chunks(data: np.ndarray, chunks: tuple[int, ...], level: int) -> tuple[np.ndarray, list[bytes]]:
    """Every chunk of ``data`` compressed exactly as a store dataset of ``chunks`` would hold it.

    Returns:
        (int64 (n, ndim) chunk offsets in C order, the n compressed chunks, each ending in its fletcher32).
    """
    import h5py

    with h5py.File(io.BytesIO(), "w") as memory:
        dataset = memory.create_dataset("d", data=data, chunks=chunks, **_dataset_options(level))
        infos = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
        offsets = sorted(tuple(int(v) for v in info.chunk_offset) for info in infos)
        encoded = [bytes(dataset.id.read_direct_chunk(offset)[1]) for offset in offsets]
    return np.array(offsets, dtype=np.int64).reshape(-1, data.ndim), encoded


def write_volume_part(
    path: Path, image: np.ndarray, label: np.ndarray, tables: Mapping[str, np.ndarray], level: int
) -> dict[str, list[bytes]]:
    """Stage a case (compressed chunks and sampling tables) in one ``.npz`` (temporary name, rename).

    Returns:
        ``{"images": chunks, "labels": chunks}``, for the case's digest.
    """
    spatial = vs.volume_chunk_shape(label.shape)
    parts: dict[str, Any] = {}
    chunks: dict[str, list[bytes]] = {}
    for name, data, shape in ((vs.IMAGES, image, (image.shape[0], *spatial)), (vs.LABELS, label, spatial)):
        coords, encoded = encode_chunks(data, shape, level)
        stem = {vs.IMAGES: "image", vs.LABELS: "label"}[name]
        parts[f"{stem}_data"], parts[f"{stem}_offsets"] = _pack(encoded)
        parts[f"{stem}_coords"] = coords
        parts[f"{stem}_shape"] = np.array(data.shape, dtype=np.int64)
        parts[f"{stem}_chunks"] = np.array(shape, dtype=np.int64)
        chunks[name] = encoded
    parts["image_dtype"] = np.array(str(image.dtype))
    for name in vs.SAMPLING_TABLES:
        parts[f"table_{name}"] = tables[name]
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.npz")
    np.savez(tmp, **parts)
    os.replace(tmp, path)
    return chunks


def _table_dataset(out: Any, name: str, data: np.ndarray) -> None:
    chunks = tuple(max(1, int(s)) for s in data.shape)  # a filter needs chunks, even of an empty table
    # an empty table's chunk is larger than it, which h5py allows only for a resizable dataset
    maxshape = (None,) * data.ndim if data.size == 0 else None
    out.create_dataset(name, data=data, chunks=chunks, maxshape=maxshape, fletcher32=True)


def _copy_part(out: Any, index: int, part: Path, level: int) -> None:
    with np.load(part) as staged:
        for name, stem in ((vs.IMAGES, "image"), (vs.LABELS, "label")):
            dtype = str(staged["image_dtype"]) if stem == "image" else "uint8"
            dataset = out.create_dataset(
                vs.case_key(name, index),
                shape=tuple(int(s) for s in staged[f"{stem}_shape"]),
                dtype=dtype,
                chunks=tuple(int(s) for s in staged[f"{stem}_chunks"]),
                fillvalue=0,
                **_dataset_options(level),
            )
            encoded = _unpack(staged[f"{stem}_data"], staged[f"{stem}_offsets"])
            for coords, chunk in zip(staged[f"{stem}_coords"], encoded, strict=True):
                dataset.id.write_direct_chunk(tuple(int(c) for c in coords), chunk)
        for name in vs.SAMPLING_TABLES:
            _table_dataset(out, vs.case_key(name, index), staged[f"table_{name}"])


def assemble_volume_hdf5(
    path: Path,
    parts: Mapping[int, Path],
    arrays: Mapping[str, np.ndarray],
    metadata: dict[str, Any],
    level: int,
) -> None:
    """Write the whole HDF5 volume store from staged parts into ``STORE.h5.partial``, then rename it.

    Args:
        path: ``STORE.h5``.
        parts: case index -> staged part (skipped cases absent).
        arrays: the case tables (name -> array).
        metadata: the ``brainprep`` attribute (``complete: true``), stored as a JSON string.
        level: gzip level.
    """
    import h5py

    partial = path.with_name(path.name + schema.PARTIAL_SUFFIX)
    with h5py.File(partial, "w", libver=LIBVER) as out:  # checksummed object headers
        for name in (vs.IMAGES, vs.LABELS, *vs.SAMPLING_TABLES):
            out.create_group(name)
        for index in sorted(parts):
            _copy_part(out, index, parts[index], level)
        for name, array in arrays.items():
            _table_dataset(out, name, array)
        out.attrs[schema.ATTRS_KEY] = json.dumps(metadata, sort_keys=True)
    os.replace(partial, path)
