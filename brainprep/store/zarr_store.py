"""Write the Zarr v3 patch store: one patch per chunk, one case per shard (see :mod:`.schema`).

Workers write the shards of their own cases directly (:func:`write_case_zarr`): shards are disjoint
files, so a parallel build needs no locking and a resumed build rewrites a case by rewriting its shard.
The driver creates the arrays (:func:`create_zarr_store`) and, at the very end, the patch table and the
metadata (:func:`finish_zarr_store`). zarr's LocalStore writes every file through a temporary name and a
rename, so a killed build leaves whole shards or none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from brainprep.store import schema


def image_codec(dtype: str, level: int) -> Any:
    """Blosc zstd with byte shuffle: a core Zarr v3 codec (no numcodecs extension needed to read)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(
        cname="zstd",
        clevel=int(level),
        shuffle="shuffle",
        typesize=np.dtype(dtype).itemsize,
        blocksize=schema.BLOSC_BLOCKSIZE,
    )


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
) -> None:
    """Write the K slots (one whole shard per array) of case ``index``.

    Args:
        path: ``STORE.zarr`` folder created by :func:`create_zarr_store`.
        images: (K, 4, X, Y, Z) in the store dtype; slots without a patch are zeros.
        labels: uint8 (K, X, Y, Z).
    """
    import zarr

    from brainprep.store.shards import LocalShardWriter

    group = zarr.open_group(str(path), mode="r+")
    # A case is one shard of each array, written whole by LocalShardWriter: the bytes zarr would write
    # with write_empty_chunks (every chunk stored; an empty slot holds a few hundred bytes of compressed
    # zeros and reads as zeros, as an absent chunk does), in under half of zarr's time.
    for name, data in ((schema.IMAGES, images), (schema.LABELS, labels)):
        LocalShardWriter(Path(path) / name, group[name]).write(index, np.ascontiguousarray(data))


def write_table_zarr(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write (replacing) the patch table and case statistics arrays, each as one chunk."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    for name, array in arrays.items():
        group.create_array(name, data=array, chunks=array.shape, overwrite=True)


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
