"""Direct, checked reads of a window of a Zarr volume array: the chunks it meets, nothing else.

A volume array (:mod:`.volume_schema`) is one shard of chunks ``bytes -> blosc -> crc32c``. zarr-python
reads a window through its asynchronous codec pipeline, which costs more per chunk than decoding it
(:func:`~brainprep.store.volume_schema.volume_chunk_shape` has the numbers). :class:`VolumeArrayReader`
reads the shard index once (checking its crc32c), then per chunk of the window one ranged read, one
crc32c check and one Blosc decode, and copies the part of the chunk the window needs: the same path as
:class:`~brainprep.store.shards.ShardReader` for patches, on a grid of chunks. ``tests/test_volume_store.py``
holds it equal to zarr's reads of the same windows.
"""

from __future__ import annotations

import itertools
import math
import threading
from typing import Any

import numpy as np

from brainprep.errors import StoreCorruptError
from brainprep.store.shards import CRC_BYTES, INDEX_ENTRY_BYTES, MISSING, crc32c, parse_shard_index


def is_direct_layout(array: Any) -> bool:
    """True when ``array`` (a ``zarr.Array``) is one brainprep volume shard this module can read."""
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, TransposeCodec

    codecs = tuple(array.metadata.codecs)
    sharding = codecs[0] if len(codecs) == 1 else None
    if not isinstance(sharding, ShardingCodec) or sharding.index_location.value != "end":
        return False
    inner = tuple(type(c) for c in sharding.codecs)
    if inner[:1] == (TransposeCodec,):
        inner = inner[1:]
    return (
        inner == (BytesCodec, BloscCodec, Crc32cCodec)
        and tuple(type(c) for c in sharding.index_codecs) == (BytesCodec, Crc32cCodec)
        and all(
            math.ceil(s / c) * c == t
            for s, c, t in zip(array.shape, sharding.chunk_shape, array.shards, strict=True)
        )
        and np.dtype(array.dtype).byteorder in "=<|"
    )


class VolumeArrayReader:
    """Windows of one volume array, read chunk by chunk (thread-safe once made).

    Args:
        array: the ``zarr.Array`` (:func:`is_direct_layout`).
        source: :class:`~brainprep.store.shards.LocalFiles` / :class:`~brainprep.store.shards.StoreBytes`
            over the array's folder.
        what: ``"images of case BRATS_003"``, for messages.

    Raises:
        StoreCorruptError: the shard is missing, its index fails its crc32c, or a chunk is not stored.
    """

    def __init__(self, array: Any, source: Any, what: str) -> None:
        from numcodecs import Blosc
        from zarr.codecs import TransposeCodec

        from brainprep.store.volume_zarr import shard_key

        self.shape = tuple(int(s) for s in array.shape)
        self.chunks = tuple(int(c) for c in array.metadata.codecs[0].chunk_shape)
        first = array.metadata.codecs[0].codecs[0]
        # a TransposeCodec stores each chunk as chunk.transpose(order): decode into that shape, view back
        self.order = tuple(int(a) for a in first.order) if isinstance(first, TransposeCodec) else None
        self.stored_shape = self.chunks if self.order is None else tuple(self.chunks[a] for a in self.order)
        self.grid = tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunks, strict=True))
        self.dtype = np.dtype(array.dtype)
        self.source, self.what, self.key = source, what, shard_key(array)
        self._codec = Blosc()  # reads its settings from each chunk's Blosc header
        n = math.prod(self.grid)
        raw = source.read_suffix(self.key, INDEX_ENTRY_BYTES * n + CRC_BYTES)
        if raw is None:
            raise self._corrupt("shard file missing")
        index = parse_shard_index(raw, n)
        if index is None:
            raise self._corrupt("shard index checksum mismatch (a damaged or cut shard)")
        missing = int(np.count_nonzero(index[:, 0] == MISSING))
        if missing:
            raise self._corrupt(f"{missing} of {n} chunks missing")
        self.index = index
        self._scratch = threading.local()  # one decoded-chunk buffer per thread (no page faults per chunk)

    def _corrupt(self, problem: str) -> StoreCorruptError:
        where = self.source.describe(self.key)
        return StoreCorruptError(f"{self.what}: {problem} in {where}; run `brainprep verify` on the store")

    def _chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        flat = int(np.ravel_multi_index(coords, self.grid))
        offset, length = (int(v) for v in self.index[flat])
        data = self.source.read(self.key, offset, length)
        if len(data) != length:
            raise self._corrupt(f"chunk {flat} cut short ({len(data)} of {length} bytes)")
        frame = np.frombuffer(data, dtype=np.uint8, count=length - CRC_BYTES)
        if crc32c(frame) != data[-CRC_BYTES:]:
            raise self._corrupt(f"chunk {flat} fails its checksum (crc32c)")
        out = getattr(self._scratch, "chunk", None)
        if out is None:
            out = self._scratch.chunk = np.empty(self.stored_shape, dtype=self.dtype)
        try:
            self._codec.decode(frame, out=out.reshape(-1).view(np.uint8))
        except (RuntimeError, ValueError) as error:
            raise self._corrupt(f"chunk {flat} does not decode ({error})") from error
        return out if self.order is None else out.transpose(np.argsort(self.order))

    def read(
        self, start: tuple[int, ...], stop: tuple[int, ...], out: np.ndarray | None = None
    ) -> np.ndarray:
        """The block ``[start, stop)`` (inside the array): written into ``out`` (an array or view of the
        block's shape, e.g. the part of a window the block fills) or a new C-contiguous array."""
        shape = tuple(b - a for a, b in zip(start, stop, strict=True))
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif out.shape != shape:
            raise ValueError(f"out must have shape {shape}, found {out.shape}")
        spans = [range(a // c, (b - 1) // c + 1) for a, b, c in zip(start, stop, self.chunks, strict=True)]
        for coords in itertools.product(*spans):
            chunk = self._chunk(coords)
            lows = [max(a, k * c) for a, k, c in zip(start, coords, self.chunks, strict=True)]
            highs = [min(b, (k + 1) * c) for b, k, c in zip(stop, coords, self.chunks, strict=True)]
            origin = [k * c for k, c in zip(coords, self.chunks, strict=True)]
            inside = tuple(slice(a - o, b - o) for a, b, o in zip(lows, highs, origin, strict=True))
            target = tuple(slice(a - s, b - s) for a, b, s in zip(lows, highs, start, strict=True))
            out[target] = chunk[inside]
        return out
