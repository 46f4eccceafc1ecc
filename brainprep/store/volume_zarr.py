"""Write the Zarr v3 volume store: one sharded array per case and array (see :mod:`.volume_schema`).

Workers write the arrays of their own cases (:func:`write_volume_case_zarr`): every case has its own
arrays, so a parallel build needs no locking and a resumed build rewrites a case by recreating them. The
driver creates the group (:func:`create_volume_zarr`) and at the end writes the case tables and the
metadata with :mod:`.zarr_store`'s writers. Codecs are the patch store's (:func:`.zarr_store.image_codec`,
:func:`.zarr_store.table_codec`): every chunk carries a crc32c.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.store import schema
from brainprep.store import volume_schema as vs
from brainprep.store.integrity import array_digest
from brainprep.store.shards import checksum_digest, chunk_ranges
from brainprep.store.zarr_store import image_codec, table_codec

IMAGE_AXES = ("channel", "x", "y", "z")
LABEL_AXES = ("x", "y", "z")


def create_volume_zarr(path: Path, metadata: dict[str, Any]) -> None:
    """Create (replacing any previous one) the group, its per-case subgroups and ``complete: false``."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs[schema.ATTRS_KEY] = metadata
    for name in (vs.IMAGES, vs.LABELS, *vs.SAMPLING_TABLES):
        group.create_group(name)


def chunks_per_shard(array: Any) -> int:
    """Inner chunks in the one shard of a brainprep volume array (a ``zarr.Array``)."""
    chunks = array.metadata.codecs[0].chunk_shape
    return math.prod(math.ceil(s / c) for s, c in zip(array.shards, chunks, strict=True))


def shard_key(array: Any) -> str:
    """The key of the one shard of a volume array, under the array's folder (``c/0/0/0/0``)."""
    return array.metadata.encode_chunk_key((0,) * array.ndim)


def shard_digest(data: bytes, array: Any) -> str | None:
    """:func:`~brainprep.store.shards.checksum_digest` of the chunks of a volume array's shard file
    ``data`` (``None`` when its index fails its crc32c or a chunk is not stored)."""
    ranges = chunk_ranges(data, chunks_per_shard(array))
    if ranges is None or any(r is None for r in ranges):
        return None
    return checksum_digest([data[o : o + n] for o, n in ranges])  # type: ignore[misc]


def write_sharded(
    group: Any, path: Path, name: str, data: np.ndarray, chunks: tuple[int, ...], level: int
) -> str:
    """Write ``data`` as array ``name``, one shard of ``chunks``, each chunk stored z-slice by z-slice
    (:func:`~brainprep.store.volume_schema.stored_axis_order`); returns its chunks' checksum digest.

    zarr creates the array (its metadata); the shard is written by
    :func:`~brainprep.store.volume_chunks.write_volume_shard`, the bytes zarr writes without its pipeline.
    """
    from zarr.codecs import TransposeCodec

    from brainprep.store.volume_chunks import write_volume_shard

    shards = tuple(math.ceil(s / c) * c for s, c in zip(data.shape, chunks, strict=True))
    shuffle = vs.BLOSC_SHUFFLE if data.ndim == 4 else vs.LABEL_SHUFFLE
    array = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        shards=shards,
        filters=[TransposeCodec(order=vs.stored_axis_order(data.ndim))],
        compressors=image_codec(str(data.dtype), level, vs.BLOSC_CNAME, shuffle),
        fill_value=0,
        overwrite=True,
        config={"write_empty_chunks": True},
        dimension_names=IMAGE_AXES if data.ndim == 4 else LABEL_AXES,
    )
    return write_volume_shard(Path(path) / name, array, data)


def case_files(index: int) -> tuple[str, ...]:
    """The files (relative to the store) that writing case ``index`` leaves, whatever its content: each
    array's ``zarr.json`` and the one shard of its image and label (:func:`write_sharded` writes it even
    when all zeros; zarr's default chunk key encoding, ``c/0/0/0/0``). A small table's chunk is not among
    them: zarr does not store a chunk that is all its fill value."""
    files = [f"{vs.case_key(name, index)}/zarr.json" for name in (vs.IMAGES, vs.LABELS, *vs.SAMPLING_TABLES)]
    for name, ndim in ((vs.IMAGES, 4), (vs.LABELS, 3)):
        files.append("/".join((vs.case_key(name, index), "c", *("0",) * ndim)))
    return tuple(files)


def write_small_table(group: Any, name: str, data: np.ndarray) -> str:
    """Write a small table as one chunk (zstd + crc32c); returns its :func:`array_digest`."""
    chunks = tuple(max(1, int(s)) for s in data.shape)
    group.create_array(name, data=data, chunks=chunks, compressors=table_codec(), overwrite=True)
    return array_digest(data)


def write_volume_case_zarr(
    path: Path, index: int, image: np.ndarray, label: np.ndarray, tables: dict[str, np.ndarray], level: int
) -> dict[str, str]:
    """Write the arrays of case ``index``.

    Args:
        path: ``STORE.zarr`` made by :func:`create_volume_zarr`.
        image: (4, X, Y, Z) crop in the store dtype; label: uint8 (X, Y, Z).
        tables: the case's sampling tables (``tumour_corners``, ``tumour_voxels``, ``class_locations``).
        level: the image and label compressor's level (Blosc lz4hc, ``StoreParams.compression_level``).

    Returns:
        The case's data digest: ``{"images", "labels"}`` chunk checksum digests and the array digest
        of each sampling table.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    spatial = vs.volume_chunk_shape(label.shape)
    digest = {
        vs.IMAGES: write_sharded(
            group, path, vs.case_key(vs.IMAGES, index), image, (image.shape[0], *spatial), level
        ),
        vs.LABELS: write_sharded(group, path, vs.case_key(vs.LABELS, index), label, spatial, level),
    }
    for name in vs.SAMPLING_TABLES:
        digest[name] = write_small_table(group, vs.case_key(name, index), tables[name])
    return digest
