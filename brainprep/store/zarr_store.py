"""Write the Zarr v3 patch store: one patch per chunk, one case per shard (see :mod:`.schema`).

Workers write the shards of their own cases directly (:func:`write_case_zarr`): shards are disjoint
files, so a parallel build needs no locking and a resumed build rewrites a case by rewriting its shard.
The driver creates the arrays (:func:`create_zarr_store`) and, at the very end, writes the patch table
(:func:`write_table_zarr`) and the metadata (:func:`set_metadata_zarr`). Shards and zarr's own files are
written through a temporary name and a rename, so a killed build leaves whole shards or none.

Every chunk carries a crc32c (the core Zarr v3 ``crc32c`` codec after Blosc, and after zstd in the
tables), so every Zarr v3 reader checks it on every read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from brainprep.store import schema


def image_codec(dtype: str, level: int, cname: str = "zstd", shuffle: str = "shuffle") -> tuple[Any, Any]:
    """Blosc (zstd with byte shuffle by default) then crc32c: core Zarr v3 codecs (no numcodecs extension
    needed to read); the crc32c lets every reader tell a damaged chunk, which Blosc alone decodes silently."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    blosc = BloscCodec(
        cname=cname,
        clevel=int(level),
        shuffle=shuffle,
        typesize=np.dtype(dtype).itemsize,
        blocksize=schema.BLOSC_BLOCKSIZE,
    )
    return blosc, Crc32cCodec()


def table_codec() -> tuple[Any, Any]:
    """zstd (zarr's default compressor) then crc32c, for the patch table and case statistics."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return ZstdCodec(level=0, checksum=False), Crc32cCodec()


def create_zarr_store(path: Path, layout: schema.StoreLayout, metadata: dict[str, Any]) -> None:
    """Create (replacing any previous one) the group with empty arrays and ``complete: false`` metadata.

    Args:
        path: ``STORE.zarr`` folder.
        layout: shapes, dtype and compression level.
        metadata: the ``brainprep`` attribute (must say ``complete: false``).
    """
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs[schema.ATTRS_KEY] = metadata
    k, patch = layout.patches_per_case, layout.patch_size
    group.create_array(
        schema.IMAGES,
        shape=layout.image_shape,
        dtype=layout.dtype,
        chunks=(1, schema.N_CHANNELS, *patch),
        shards=(k, schema.N_CHANNELS, *patch),
        compressors=image_codec(layout.dtype, layout.compression_level),
        fill_value=0,
        dimension_names=schema.CHANNEL_AXIS_NAMES,
    )
    group.create_array(
        schema.LABELS,
        shape=layout.label_shape,
        dtype="uint8",
        chunks=(1, *patch),
        shards=(k, *patch),
        compressors=image_codec("uint8", layout.compression_level),
        fill_value=0,
        dimension_names=schema.LABEL_AXIS_NAMES,
    )


def write_case_zarr(
    path: Path, layout: schema.StoreLayout, index: int, images: np.ndarray, labels: np.ndarray
) -> dict[str, str]:
    """Write the K slots (one whole shard per array) of case ``index``.

    Args:
        path: ``STORE.zarr`` folder created by :func:`create_zarr_store`.
        images: (K, 4, X, Y, Z) in the store dtype; slots without a patch are zeros.
        labels: uint8 (K, X, Y, Z).

    Returns:
        ``{"images": digest, "labels": digest}``: each shard's
        :func:`~brainprep.store.shards.checksum_digest`, recorded in the case table.
    """
    import zarr

    from brainprep.store.shards import ShardWriter, shard_layout

    group = zarr.open_group(str(path), mode="r+")
    # A case is one shard of each array, written whole by ShardWriter: the bytes zarr would write with
    # write_empty_chunks (every chunk stored: an empty slot holds a few hundred bytes of compressed zeros,
    # and a chunk that is absent from a complete store is damage, not zeros), in under half of zarr's time.
    digests = {}
    for name, data in ((schema.IMAGES, images), (schema.LABELS, labels)):
        writer = ShardWriter(Path(path) / name, shard_layout(name, group[name]))
        digests[name] = writer.write(index, np.ascontiguousarray(data))
    return digests


def write_table_zarr(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write (replacing) the patch table and case statistics arrays, each as one chunk."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    for name, array in arrays.items():
        group.create_array(name, data=array, chunks=array.shape, compressors=table_codec(), overwrite=True)


def set_metadata_zarr(path: Path, metadata: dict[str, Any]) -> None:
    """Replace the ``brainprep`` attribute (an atomic rewrite of the group's zarr.json)."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    group.attrs[schema.ATTRS_KEY] = metadata


def store_bytes(path: Path) -> int:
    """Bytes on disk of a store (a folder's files, or one file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
