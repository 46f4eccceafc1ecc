"""Write the HDF5 patch store (same names and metadata as the Zarr store, see :mod:`.schema`).

HDF5 has one writer per file and a file being written is not safe against ``kill -9``. So a build
never writes ``STORE.h5`` while workers run: each worker compresses its case's chunks itself (in
parallel, :func:`encode_case_chunks`) and stages them in ``STORE.build/parts/`` (:func:`write_case_part`,
atomic); at the end the driver copies the already-compressed chunks into ``STORE.h5.partial`` with
``write_direct_chunk`` (no recompression, I/O bound) and renames it to ``STORE.h5``
(:func:`assemble_hdf5`). A killed build leaves the staged parts; ``STORE.h5`` exists only complete.

Filters: shuffle + gzip (deflate) + fletcher32, which every HDF5 library has built in, so plain h5py reads
the file and checks every chunk's fletcher32 checksum on every read (gzip alone would not notice a flipped
byte that still inflates). The tables carry fletcher32 too.

File format: :data:`LIBVER`. fletcher32 covers chunk bytes only; how they are read (the datatype, the
shape, the chunk index) lives in the object headers, which HDF5's default (earliest) file format stores
without a checksum: a flipped bit in an image dataset's datatype message silently rescales every value.
From the 1.10 format on, the superblock, object headers and chunk indexes carry a checksum that HDF5
checks when it opens them, so such a flip is refused instead of read.
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

from brainprep.errors import StoreCorruptError
from brainprep.store import schema

#: ``h5py.File(..., libver=LIBVER)`` of every store file: the earliest format whose metadata is checksummed
#: (HDF5 1.10, 2017), so any HDF5 >= 1.10 reads the stores.
LIBVER = ("v110", "latest")

IMAGE_CHUNKS_KEY = "image_chunks"
LABEL_CHUNKS_KEY = "label_chunks"


def _dataset_options(level: int) -> dict[str, Any]:
    return {"compression": "gzip", "compression_opts": int(level), "shuffle": True, "fletcher32": True}


def encode_case_chunks(
    images: np.ndarray, labels: np.ndarray, layout: schema.StoreLayout, n_patches: int
) -> tuple[list[bytes], list[bytes]]:
    """Compress each patch exactly as the store's datasets would (one patch per chunk).

    The chunks go through HDF5's own filter pipeline, in an in-memory file with the store's dataset
    creation properties, so ``write_direct_chunk`` of these bytes is byte-for-byte a normal write.

    Args:
        images: (K, 4, X, Y, Z) in the store dtype.
        labels: uint8 (K, X, Y, Z).
        n_patches: only the first ``n_patches`` slots hold patches (the rest stay unallocated: zeros).

    Returns:
        (image chunks, label chunks): ``n_patches`` compressed byte strings each.
    """
    import h5py

    with h5py.File(io.BytesIO(), "w") as memory:
        options = _dataset_options(layout.compression_level)
        image_set = memory.create_dataset(
            "i", shape=images.shape, dtype=images.dtype, chunks=(1, *images.shape[1:]), **options
        )
        label_set = memory.create_dataset(
            "l", shape=labels.shape, dtype=labels.dtype, chunks=(1, *labels.shape[1:]), **options
        )
        image_chunks, label_chunks = [], []
        for slot in range(n_patches):
            image_set[slot] = images[slot]
            label_set[slot] = labels[slot]
            image_chunks.append(bytes(image_set.id.read_direct_chunk((slot, 0, 0, 0, 0))[1]))
            label_chunks.append(bytes(label_set.id.read_direct_chunk((slot, 0, 0, 0))[1]))
    return image_chunks, label_chunks


def stored_slot_chunk(dataset: Any, slot: int) -> tuple[int, ...] | None:
    """The chunk offset of ``slot`` in a one-patch-per-chunk dataset, ``None`` when that chunk was never
    written (h5py would read it as the fill value: zeros)."""
    offset = (int(slot),) + (0,) * (dataset.ndim - 1)
    try:
        info = dataset.id.get_chunk_info_by_coord(offset)
    except (KeyError, OSError, RuntimeError) as err:  # a chunk index (B-tree) node failing its checksum
        raise StoreCorruptError(f"the chunk index of {dataset.name} cannot be read ({err})") from err
    return offset if info.byte_offset is not None else None


def _pack(chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), offsets


def _unpack(data: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    return [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]


def write_case_part(path: Path, image_chunks: list[bytes], label_chunks: list[bytes]) -> None:
    """Stage a case's compressed chunks in one ``.npz`` (temporary name, then rename)."""
    image_data, image_offsets = _pack(image_chunks)
    label_data, label_offsets = _pack(label_chunks)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.npz")
    np.savez(
        tmp,
        image_data=image_data,
        image_offsets=image_offsets,
        label_data=label_data,
        label_offsets=label_offsets,
    )
    os.replace(tmp, path)


def read_case_part(path: Path) -> tuple[list[bytes], list[bytes]]:
    """Inverse of :func:`write_case_part`."""
    with np.load(path) as part:
        return (
            _unpack(part["image_data"], part["image_offsets"]),
            _unpack(part["label_data"], part["label_offsets"]),
        )


def assemble_hdf5(
    path: Path,
    layout: schema.StoreLayout,
    parts: Mapping[int, Path],
    arrays: Mapping[str, np.ndarray],
    metadata: dict[str, Any],
) -> None:
    """Write the whole HDF5 store from staged parts into ``STORE.h5.partial``, then rename it.

    Args:
        path: ``STORE.h5``.
        parts: case index -> staged part (cases without patches may be absent).
        arrays: the patch table and case statistics (name -> array).
        metadata: the ``brainprep`` attribute (``complete: true``), stored as a JSON string.
    """
    import h5py

    partial = path.with_name(path.name + schema.PARTIAL_SUFFIX)
    options = _dataset_options(layout.compression_level)
    patch = layout.patch_size
    with h5py.File(partial, "w", libver=LIBVER) as out:
        images = out.create_dataset(
            schema.IMAGES,
            shape=layout.image_shape,
            dtype=layout.dtype,
            chunks=(1, schema.N_CHANNELS, *patch),
            fillvalue=0,
            **options,
        )
        labels = out.create_dataset(
            schema.LABELS, shape=layout.label_shape, dtype="uint8", chunks=(1, *patch), fillvalue=0, **options
        )
        for index in sorted(parts):
            image_chunks, label_chunks = read_case_part(parts[index])
            first = layout.case_slots(index).start
            for offset, (image_chunk, label_chunk) in enumerate(zip(image_chunks, label_chunks, strict=True)):
                slot = first + offset
                images.id.write_direct_chunk((slot, 0, 0, 0, 0), image_chunk)
                labels.id.write_direct_chunk((slot, 0, 0, 0), label_chunk)
        for name, array in arrays.items():
            out.create_dataset(name, data=array, fletcher32=True)
        out.attrs[schema.ATTRS_KEY] = json.dumps(metadata, sort_keys=True)
    os.replace(partial, path)
