"""Direct, checked reads of a window of a Zarr volume array (the chunks it meets, nothing else), and the
write of a whole volume array's shard.

A volume array (:mod:`.volume_schema`) is one shard of chunks ``bytes -> blosc -> crc32c``. zarr-python
reads a window through its asynchronous codec pipeline, which costs more per chunk than decoding it
(``benchmarks/measure_volume_chunks.py`` times window reads). :class:`VolumeArrayReader`
reads the shard index once (checking its crc32c), then per chunk of the window one ranged read, one
crc32c check and one Blosc decode (a local shard is memory-mapped, so a chunk is read in place without a
copy), and copies the part of the chunk the window needs: the same path as
:class:`~brainprep.store.shards.ShardReader` for patches, on a grid of chunks. ``tests/test_volume_store.py``
holds it equal to zarr's reads of the same windows.

:func:`write_volume_shard` writes a case array's one shard as zarr writes it, byte for byte (the same
chunk order, codecs and index; ``tests/test_volume_store.py`` compares the files), without zarr's
pipeline around each chunk, and cuts each chunk straight from the caller's memory order: a slice-major
crop (:func:`~brainprep.store.volume_schema.slice_major`, the NIfTI's own x-fastest order) gives each
chunk as a few contiguous blocks, with no transposition (``benchmarks/profile_build_stages.py --kind
volumes`` times the stages).
"""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.errors import StoreCorruptError
from brainprep.store.shards import (
    CRC_BYTES,
    INDEX_ENTRY_BYTES,
    MISSING,
    checksum_digest,
    crc32c,
    numcodecs_blosc,
    parse_shard_index,
    whole_chunk,
    write_shard_file,
)


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
        raw = source.suffix_checked(
            self.key, INDEX_ENTRY_BYTES * n + CRC_BYTES, lambda got: parse_shard_index(got, n) is not None
        )
        if raw is None:
            raise self._corrupt("shard file missing")
        index = parse_shard_index(raw, n)
        if index is None:
            raise self._corrupt("shard index checksum mismatch (a damaged or cut shard)")
        missing = int(np.count_nonzero(index[:, 0] == MISSING))
        if missing:
            raise self._corrupt(f"{missing} of {n} chunks missing")
        self.index = index
        self._ranges = [(int(o), int(n)) for o, n in index.tolist()]  # per flat chunk, plain ints
        self._grid_strides = tuple(math.prod(self.grid[a + 1 :]) for a in range(len(self.grid)))
        self._logical = None if self.order is None else tuple(int(a) for a in np.argsort(self.order))
        # a local shard is mapped once and its chunks read in place; any other source reads by range
        mapped = getattr(source, "mapped", None)
        self._mapped = mapped(self.key) if mapped is not None else None
        self._scratch = threading.local()  # one decoded-chunk buffer per thread (no page faults per chunk)

    def _corrupt(self, problem: str) -> StoreCorruptError:
        where = self.source.describe(self.key)
        return StoreCorruptError(f"{self.what}: {problem} in {where}; run `brainprep verify` on the store")

    def _chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        flat = sum(k * stride for k, stride in zip(coords, self._grid_strides, strict=True))  # C order
        offset, length = self._ranges[flat]
        if self._mapped is not None:
            data = self._mapped[offset : offset + length]
        else:
            data = np.frombuffer(
                self.source.read_checked(self.key, offset, length, whole_chunk(length)), dtype=np.uint8
            )
        if len(data) != length:
            raise self._corrupt(f"chunk {flat} cut short ({len(data)} of {length} bytes)")
        frame = data[: length - CRC_BYTES]
        if crc32c(frame) != data[length - CRC_BYTES :].tobytes():
            raise self._corrupt(f"chunk {flat} fails its checksum (crc32c)")
        out = getattr(self._scratch, "chunk", None)
        if out is None:
            out = self._scratch.chunk = np.empty(self.stored_shape, dtype=self.dtype)
        try:
            self._codec.decode(frame, out=out.reshape(-1).view(np.uint8))
        except (RuntimeError, ValueError) as error:
            raise self._corrupt(f"chunk {flat} does not decode ({error})") from error
        return out if self._logical is None else out.transpose(self._logical)

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
            inside, target = [], []
            for a, b, k, c in zip(start, stop, coords, self.chunks, strict=True):
                origin = k * c
                low, high = max(a, origin), min(b, origin + c)
                inside.append(slice(low - origin, high - origin))
                target.append(slice(low - a, high - a))
            out[tuple(target)] = chunk[tuple(inside)]
        return out


def chunk_write_order(grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Chunk coordinates in the order zarr's sharding codec lays chunks out in a shard (Morton order;
    C order if this zarr lacks its helper: any order is valid, the index says where each chunk is)."""
    try:
        from zarr.core.indexing import morton_order_iter
    except ImportError:  # pragma: no cover - zarr moved its helper
        return list(itertools.product(*(range(n) for n in grid)))
    return [tuple(int(k) for k in coords) for coords in morton_order_iter(grid)]


def write_volume_shard(folder: Path, array: Any, data: np.ndarray) -> str:
    """Write ``data`` as the one shard of volume array ``array`` (created by zarr, nothing written yet).

    Every chunk is stored (``write_empty_chunks``), an edge chunk padded with the fill value 0, each
    ``transpose -> bytes -> blosc -> crc32c`` with the array's own codec settings.

    Args:
        folder: the array's folder (``STORE.zarr/images/000003``).
        array: the ``zarr.Array`` (:func:`is_direct_layout`), for its shape, chunks and codecs.
        data: the array's values, of its shape and dtype, in any memory order (slice-major is the
            cheapest to cut for a transposed layout).

    Returns:
        The :func:`~brainprep.store.shards.checksum_digest` of the shard's chunks, in C order of their
        coordinates (as :func:`~brainprep.store.volume_zarr.shard_digest` reads them back).
    """
    from zarr.codecs import BloscCodec, TransposeCodec

    from brainprep.store.volume_zarr import shard_key

    sharding = array.metadata.codecs[0]
    chunks = tuple(int(c) for c in sharding.chunk_shape)
    first = sharding.codecs[0]
    order = tuple(range(data.ndim))
    if isinstance(first, TransposeCodec):
        order = tuple(int(a) for a in first.order)
    codec = numcodecs_blosc(next(c for c in sharding.codecs if isinstance(c, BloscCodec)))
    shape = tuple(int(s) for s in array.shape)
    if data.shape != shape or data.dtype != np.dtype(array.dtype):
        raise ValueError(f"{folder}: the array is {array.dtype} {shape}, got {data.dtype} {data.shape}")
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks, strict=True))
    stored = {}
    for coords in chunk_write_order(grid):
        block = data[tuple(slice(k * c, (k + 1) * c) for k, c in zip(coords, chunks, strict=True))]
        if block.shape != chunks:  # an edge chunk: zarr pads it with the fill value
            padded = np.zeros(chunks, dtype=data.dtype)
            padded[tuple(slice(0, n) for n in block.shape)] = block
            block = padded
        frame = codec.encode(np.ascontiguousarray(block.transpose(order)).reshape(-1).view(np.uint8))
        stored[coords] = frame + crc32c(frame)
    parts = list(stored.values())
    index = np.empty((*grid, 2), dtype="<u8")
    offset = 0
    for coords, part in stored.items():
        index[coords] = (offset, len(part))
        offset += len(part)
    write_shard_file(Path(folder) / shard_key(array), parts, index.reshape(-1, 2))
    return checksum_digest([stored[c] for c in itertools.product(*(range(n) for n in grid))])
