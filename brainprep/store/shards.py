"""Read the chunks of a local Zarr v3 patch store without zarr's per-read machinery.

A brainprep Zarr array stores one patch per chunk and one case per shard (``sharding_indexed``, index at
the end, see :mod:`brainprep.store.schema`). :class:`LocalShardReader` reads each shard's index once
(checking its crc32c) and then each chunk with one ``os.pread`` and one Blosc decode straight into the
caller's array. On one core that decodes a 4x160x160x16 float16 patch in ~1.5 ms, while
``zarr.Array.__getitem__`` of the same chunk takes ~4 ms, most of it in its asynchronous pipeline: the
difference between a loader that keeps a GPU fed and one that does not. Remote and zip stores keep
zarr's reader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.errors import StoreError

#: offset and length of a chunk that is not stored (it reads as the fill value)
MISSING = np.iinfo(np.uint64).max
_CRC_BYTES = 4


class LocalShardReader:
    """Chunks of one local brainprep Zarr array, decoded into caller-provided arrays (thread-safe).

    Args:
        folder: the array's folder (``STORE.zarr/images``).
        array: the open ``zarr.Array`` (its metadata gives the codecs and the chunk keys).

    Raises:
        StoreError: the array is not laid out as a brainprep store writes it (then use zarr's reader).
    """

    def __init__(self, folder: Path, array: Any) -> None:
        from numcodecs import Blosc
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec

        metadata = array.metadata
        codecs = tuple(metadata.codecs)
        sharding = codecs[0] if len(codecs) == 1 else None
        inner = tuple(sharding.codecs) if isinstance(sharding, ShardingCodec) else ()
        if (
            not isinstance(sharding, ShardingCodec)
            or len(inner) != 2
            or not isinstance(inner[0], BytesCodec)
            or not isinstance(inner[1], BloscCodec)
            or sharding.index_location.value != "end"
            or tuple(type(c) for c in sharding.index_codecs) != (BytesCodec, Crc32cCodec)
            or sharding.chunk_shape[0] != 1
            or tuple(sharding.chunk_shape[1:]) != tuple(array.shape[1:])
            or np.dtype(array.dtype).byteorder not in "=<|"
            or array.fill_value != 0
        ):
            raise StoreError(f"{folder}: not a brainprep shard layout (one patch per chunk, Blosc)")
        self.folder = Path(folder)
        self.dtype = np.dtype(array.dtype)
        self.patch_shape = tuple(int(s) for s in array.shape[1:])
        self.per_shard = int(metadata.chunk_grid.chunk_shape[0])
        self._key = metadata.encode_chunk_key
        self._codec = Blosc()  # decoding reads the codec settings from each chunk's Blosc header
        self._indexes: dict[int, np.ndarray | None] = {}

    def _index(self, shard: int) -> np.ndarray | None:
        """uint64 (per_shard, 2) (offset, length) of each chunk of ``shard``; None when the shard file
        is absent (every chunk reads as zeros)."""
        if shard in self._indexes:
            return self._indexes[shard]
        import google_crc32c  # zarr's crc32c (a zarr dependency)

        path = self._shard_path(shard)
        size = 16 * self.per_shard + _CRC_BYTES
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            index = None
        else:
            try:
                total = os.fstat(fd).st_size
                raw = os.pread(fd, size, total - size) if total >= size else b""
            finally:
                os.close(fd)
            if len(raw) != size:
                raise StoreError(f"{path}: shard too short for its index ({total} bytes)")
            body, crc = raw[:-_CRC_BYTES], raw[-_CRC_BYTES:]
            if np.uint32(google_crc32c.value(body)).astype("<u4").tobytes() != crc:
                raise StoreError(f"{path}: shard index checksum mismatch (a damaged shard)")
            index = np.frombuffer(body, dtype="<u8").reshape(self.per_shard, 2)
        self._indexes[shard] = index
        return index

    def _shard_path(self, shard: int) -> Path:
        return self.folder / self._key((shard,) + (0,) * len(self.patch_shape))

    def read_into(self, slot: int, out: np.ndarray) -> None:
        """Decode the chunk of ``slot`` into ``out`` (C-contiguous, the array's patch shape and dtype)."""
        if out.shape != self.patch_shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise StoreError(
                f"out must be a C-contiguous {self.dtype} array of shape {self.patch_shape}, "
                f"found {out.dtype} {out.shape}"
            )
        shard, position = divmod(int(slot), self.per_shard)
        index = self._index(shard)
        if index is None or index[position, 0] == MISSING:
            out[...] = 0
            return
        offset, length = (int(v) for v in index[position])
        path = self._shard_path(shard)
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise StoreError(f"{path}: chunk {position} cut short ({len(data)} of {length} bytes)")
        decoded = out.reshape(-1).view(np.uint8)
        self._codec.decode(data, out=decoded)

    def read(self, slot: int) -> np.ndarray:
        """The patch of ``slot`` as a new array."""
        out = np.empty(self.patch_shape, dtype=self.dtype)
        self.read_into(slot, out)
        return out
