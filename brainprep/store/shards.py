"""The one reader and writer of brainprep's Zarr v3 shards, for every location; every chunk is checked.

A brainprep Zarr array stores one patch per chunk and one case per shard (``sharding_indexed``, index at
the end with its crc32c, see :mod:`brainprep.store.schema`); inside a shard each chunk is
``bytes -> blosc -> crc32c``: the Blosc frame followed by the little-endian crc32c of that frame, so a
reader can tell a damaged chunk before it decodes it (Blosc itself carries no checksum: a flipped byte
decodes to wrong values without a word).

Why not zarr-python or tensorstore. Rows (h) of ``benchmarks/bench_streaming.py`` (``python
benchmarks/bench_streaming.py --readers-only``) read the benchmark's full-size store (8 cases, 160 slots)
with this module, tensorstore 0.1.86 (file kvstore, its concurrency limit tuned over default, 1, 2, 4),
zarr-python 3.1.6 and zarr-python with the zarrs 0.2.3 codec pipeline, 2 threads, batches of 2 slots, 3
alternating rounds. The best library, tensorstore, reached 0.78x of this path in patches/s and 0.76x in
CPU per patch (zarrs 0.32x / 0.52x, zarr-python 0.21x / 0.36x; an earlier run gave tensorstore 0.75x /
0.71x): below the 0.9x bar of issue 11, so this path stays the one reader. Each library read goes through
an asynchronous pipeline per chunk; on a small overloaded store tensorstore's own thread pool once took a
larger share of contended cores (1.20x in patches/s, still 0.79x in CPU per patch), which is why the
benchmark reports both. Here :class:`ShardReader` reads each shard's index once (checking
its crc32c) and then each chunk with one ranged read, one crc32c and one Blosc decode straight into the
caller's array. The same code reads a local folder (``os.pread``) and any zarr ``Store`` (a packed zip,
http(s), s3: ranged ``Store.get``), so every location is checked the same way. :class:`ShardWriter`
writes what zarr writes, byte for byte (``tests/test_store.py`` holds it equal to zarr-python's output for
every dtype the store offers), in half of zarr's time. The manifest uses :func:`parse_shard_index` and
:func:`chunk_ranges` of this module too, so a shard's layout is known in one place.

Stores written before chunk checksums existed (``bytes -> blosc`` only) still read; they are reported
once as unverified by :class:`~brainprep.store.reader.PatchStore`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.errors import StoreCorruptError, StoreError

#: offset and length of a chunk that is not stored (it would read as the fill value)
MISSING = np.iinfo(np.uint64).max
CRC_BYTES = 4
INDEX_ENTRY_BYTES = 16


def crc32c(data: bytes | np.ndarray) -> bytes:
    """The 4 little-endian bytes of the crc32c of ``data`` (what zarr's ``crc32c`` codec appends)."""
    import google_crc32c

    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()


def whole_chunk(length: int, checksummed: bool = True) -> Callable[[bytes | np.ndarray], bool]:
    """Whether a stored chunk's bytes (its frame, then its crc32c when ``checksummed``) are ``length``
    long and pass their crc32c: the test a cached read is retried on (:meth:`StoreBytes.read_checked`);
    the readers report which part failed in their own words."""

    def valid(data: bytes | np.ndarray) -> bool:
        if len(data) != length:
            return False
        if not checksummed:
            return True
        frame = np.frombuffer(data, dtype=np.uint8, count=length - CRC_BYTES)
        return crc32c(frame) == bytes(data[length - CRC_BYTES :])

    return valid


# ---------------------------------------------------------------------------------------------------------
# The layout of one array, from its zarr metadata.


@dataclass(frozen=True)
class ShardLayout:
    """How the chunks of one brainprep Zarr array are laid out.

    Attributes:
        name: the array's name in the group (``images``).
        dtype: the array's dtype.
        patch_shape: one chunk's shape without the slot axis.
        per_shard: chunks (slots) per shard, K.
        blosc: the inner ``zarr.codecs.BloscCodec``.
        checksummed: the inner chunks end with a crc32c (stores from before it: False).
        key: ``shard -> chunk key`` (``c/3/0/0/0/0``) under the array's chunk key encoding.
    """

    name: str
    dtype: np.dtype
    patch_shape: tuple[int, ...]
    per_shard: int
    blosc: Any
    checksummed: bool
    key: Callable[[int], str]

    @property
    def index_bytes(self) -> int:
        return INDEX_ENTRY_BYTES * self.per_shard + CRC_BYTES


def shard_layout(name: str, array: Any) -> ShardLayout:
    """The :class:`ShardLayout` of an open ``zarr.Array`` written by brainprep.

    Raises:
        StoreError: the array is laid out otherwise (then only zarr itself can read it).
    """
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec

    codecs = tuple(array.metadata.codecs)
    sharding = codecs[0] if len(codecs) == 1 else None
    inner = tuple(sharding.codecs) if isinstance(sharding, ShardingCodec) else ()
    kinds = tuple(type(c) for c in inner)
    if (
        not isinstance(sharding, ShardingCodec)
        or kinds not in ((BytesCodec, BloscCodec), (BytesCodec, BloscCodec, Crc32cCodec))
        or sharding.index_location.value != "end"
        or tuple(type(c) for c in sharding.index_codecs) != (BytesCodec, Crc32cCodec)
        or sharding.chunk_shape[0] != 1
        or tuple(sharding.chunk_shape[1:]) != tuple(array.shape[1:])
        or np.dtype(array.dtype).byteorder not in "=<|"
        or array.fill_value != 0
    ):
        raise StoreError(f"array {name}: not a brainprep shard layout (one patch per chunk, Blosc)")
    patch_shape = tuple(int(s) for s in array.shape[1:])
    encode = array.metadata.encode_chunk_key
    return ShardLayout(
        name=name,
        dtype=np.dtype(array.dtype),
        patch_shape=patch_shape,
        per_shard=int(array.metadata.chunk_grid.chunk_shape[0]),
        blosc=inner[1],
        checksummed=len(inner) == 3,
        key=lambda shard: encode((shard,) + (0,) * len(patch_shape)),
    )


def numcodecs_blosc(blosc: Any) -> Any:
    """The numcodecs ``Blosc`` that zarr builds from a ``zarr.codecs.BloscCodec``
    (``zarr.codecs.blosc.BloscCodec._blosc_codec``): the same settings give the same bytes."""
    from numcodecs import Blosc

    return Blosc.from_config(
        {
            "cname": blosc.cname.name,
            "clevel": blosc.clevel,
            "shuffle": {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[blosc.shuffle.value],
            "blocksize": blosc.blocksize,
            "typesize": blosc.typesize,
        }
    )


# ---------------------------------------------------------------------------------------------------------
# Pure pieces: the shard index.


def parse_shard_index(raw: bytes, per_shard: int) -> np.ndarray | None:
    """uint64 (per_shard, 2) ``(offset, length)`` of each chunk from a shard's trailing index bytes
    (``16 * per_shard`` bytes of index then its 4-byte crc32c); ``None`` when the crc32c does not match."""
    body, crc = raw[:-CRC_BYTES], raw[-CRC_BYTES:]
    if len(body) != INDEX_ENTRY_BYTES * per_shard or crc32c(body) != crc:
        return None
    return np.frombuffer(body, dtype="<u8").reshape(per_shard, 2)


def chunk_ranges(shard: bytes, per_shard: int) -> list[tuple[int, int] | None] | None:
    """Byte ranges of the chunks of a whole shard file, from its checked index.

    Returns:
        One ``(offset, nbytes)`` per chunk, ``None`` for a chunk not stored; ``None`` overall when the
        shard is too short, its index fails its crc32c or points outside the shard.
    """
    size = INDEX_ENTRY_BYTES * per_shard + CRC_BYTES
    index = parse_shard_index(shard[-size:], per_shard) if len(shard) >= size else None
    if index is None:
        return None
    ranges: list[tuple[int, int] | None] = []
    for offset, nbytes in index.tolist():
        if offset == MISSING and nbytes == MISSING:
            ranges.append(None)
        elif offset + nbytes > len(shard) - size:
            return None
        else:
            ranges.append((int(offset), int(nbytes)))
    return ranges


def checksum_digest(chunks: list[bytes]) -> str:
    """sha256 over each chunk's length and trailing 4 checksum bytes (crc32c in Zarr, fletcher32 in HDF5).

    The per-case digest of a store's data: the checksums are already there, so sealing a case costs no
    pass over its bytes, and together with the chunk checksums it pins every chunk (a chunk swapped for
    another valid one changes its checksum and so this digest). It identifies content; the manifest's
    sha256 of every byte is the seal against deliberate edits.
    """
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "little"))
        digest.update(chunk[-CRC_BYTES:])
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Where the bytes come from.


class LocalFiles:
    """Ranged reads of the files under a local folder (``os.pread``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def describe(self, key: str) -> str:
        return str(self.folder / key)

    def size(self, key: str) -> int | None:
        try:
            return os.stat(self.folder / key).st_size
        except FileNotFoundError:
            return None

    def read(self, key: str, offset: int, length: int) -> bytes:
        fd = os.open(self.folder / key, os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def mapped(self, key: str) -> np.ndarray | None:
        """uint8 view of the whole file ``key``, memory-mapped read-only (``None`` when it is not there).

        A chunk sliced out of it is read straight from the page cache, with no copy into a ``bytes``;
        the mapping lives as long as the array. A file cut short *while* mapped would fault on access
        (SIGBUS), so only files that are never rewritten in place are mapped: a store's shards, which a
        build replaces by renaming new files over them (the old mapping keeps the old file)."""
        import mmap

        try:
            fd = os.open(self.folder / key, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size == 0:
                return np.zeros(0, dtype=np.uint8)
            return np.frombuffer(mmap.mmap(fd, 0, access=mmap.ACCESS_READ), dtype=np.uint8)
        finally:
            os.close(fd)

    def read_whole(self, key: str) -> bytes | None:
        """All bytes of ``key`` (``None`` when it is not there)."""
        try:
            return (self.folder / key).read_bytes()
        except FileNotFoundError:
            return None

    def read_suffix(self, key: str, length: int) -> bytes | None:
        size = self.size(key)
        if size is None:
            return None
        return self.read(key, max(0, size - length), min(size, length))

    def read_checked(self, key: str, offset: int, length: int, valid: Callable[[bytes], bool]) -> bytes:
        """:meth:`read` (a local file has no cache to read past: ``valid`` is the caller's to apply)."""
        return self.read(key, offset, length)

    def suffix_checked(self, key: str, length: int, valid: Callable[[bytes], bool]) -> bytes | None:
        """:meth:`read_suffix` (see :meth:`read_checked`)."""
        return self.read_suffix(key, length)


class StoreBytes:
    """Ranged reads through a zarr ``Store`` (zip, http(s), s3, or any other), under ``prefix``."""

    def __init__(self, store: Any, prefix: str, where: str) -> None:
        self.store, self.prefix, self.where = store, prefix, where

    def describe(self, key: str) -> str:
        return f"{self.where.rstrip('/')}/{self.prefix}/{key}"

    def _get(self, key: str, byte_range: Any) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        try:
            got = sync(self.store.get(f"{self.prefix}/{key}", default_buffer_prototype(), byte_range))
        except zipfile.BadZipFile as err:  # a zip member that fails its CRC-32 or a damaged directory
            raise StoreCorruptError(f"{self.describe(key)}: damaged zip member ({err})") from err
        return None if got is None else got.to_bytes()

    def read(self, key: str, offset: int, length: int) -> bytes:
        from zarr.abc.store import RangeByteRequest

        data = self._get(key, RangeByteRequest(offset, offset + length))
        return b"" if data is None else data

    def read_whole(self, key: str) -> bytes | None:
        """All bytes of ``key`` (``None`` when it is not there)."""
        return self._get(key, None)

    def read_suffix(self, key: str, length: int) -> bytes | None:
        from zarr.abc.store import SuffixByteRequest

        return self._get(key, SuffixByteRequest(length))

    # A cache in front of the store (:class:`~brainprep.store.chunk_cache.DiskChunkCache`) keeps what it
    # was once given: bytes that fail their check drop that entry and are read from the store once more,
    # so one damaged download (or a server copy since repaired) does not fail every later read.
    def read_checked(self, key: str, offset: int, length: int, valid: Callable[[bytes], bool]) -> bytes:
        """:meth:`read`, read again past the cache when ``valid`` refuses the bytes."""
        from zarr.abc.store import RangeByteRequest

        data = self.read(key, offset, length)
        if not valid(data) and self._forget(key, RangeByteRequest(offset, offset + length)):
            data = self.read(key, offset, length)
        return data

    def suffix_checked(self, key: str, length: int, valid: Callable[[bytes], bool]) -> bytes | None:
        """:meth:`read_suffix`, read again past the cache when ``valid`` refuses the bytes."""
        from zarr.abc.store import SuffixByteRequest

        raw = self.read_suffix(key, length)
        if raw is not None and not valid(raw) and self._forget(key, SuffixByteRequest(length)):
            raw = self.read_suffix(key, length)
        return raw

    def _forget(self, key: str, request: Any) -> bool:
        forget = getattr(self.store, "forget", None)
        return bool(forget is not None and forget(f"{self.prefix}/{key}", request))


# ---------------------------------------------------------------------------------------------------------
# Reading and writing.


class ShardReader:
    """Chunks of one brainprep Zarr array, checked and decoded into caller-provided arrays (thread-safe).

    Args:
        layout: the array's :class:`ShardLayout`.
        source: :class:`LocalFiles` over the array's folder or :class:`StoreBytes` under its name.
        describe_slot: ``slot -> "slot 7 (case BRATS_003)"`` for messages (default: the slot number).

    Every read checks the shard index's crc32c (once per shard) and the chunk's crc32c (each read); a
    shard or chunk that is not there raises, since brainprep stores every chunk of a complete store.

    Raises (from reads):
        StoreCorruptError: a missing shard or chunk, a chunk cut short, a checksum mismatch, or a chunk
            Blosc cannot decode; the message names the slot, its case and the shard file.
    """

    def __init__(
        self, layout: ShardLayout, source: LocalFiles | StoreBytes, describe_slot: Callable[[int], str] = str
    ) -> None:
        from numcodecs import Blosc

        self.layout = layout
        self.source = source
        self.describe_slot = describe_slot
        self._codec = Blosc()  # decoding reads the codec settings from each chunk's Blosc header
        self._indexes: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def patch_shape(self) -> tuple[int, ...]:
        return self.layout.patch_shape

    @property
    def dtype(self) -> np.dtype:
        return self.layout.dtype

    def _corrupt(self, slot: int | None, shard: int, problem: str) -> StoreCorruptError:
        where = self.source.describe(self.layout.key(shard))
        what = f"{self.layout.name} of {self.describe_slot(slot)}: " if slot is not None else ""
        return StoreCorruptError(f"{what}{problem} in shard {where}; run `brainprep verify` on the store")

    def index(self, shard: int, slot: int | None = None) -> np.ndarray:
        """uint64 (per_shard, 2) ``(offset, length)`` of each chunk of ``shard``, checked, cached."""
        cached = self._indexes.get(shard)
        if cached is not None:
            return cached
        per_shard = self.layout.per_shard
        raw = self.source.suffix_checked(
            self.layout.key(shard),
            self.layout.index_bytes,
            lambda got: parse_shard_index(got, per_shard) is not None,
        )
        if raw is None:
            raise self._corrupt(slot, shard, "shard file missing")
        index = parse_shard_index(raw, self.layout.per_shard)
        if index is None:
            raise self._corrupt(slot, shard, "shard index checksum mismatch (a damaged or cut shard)")
        with self._lock:
            self._indexes[shard] = index
        return index

    def chunk(self, slot: int) -> bytes:
        """The stored bytes of ``slot``'s chunk (Blosc frame, then its crc32c when checksummed), checked."""
        shard, position = divmod(int(slot), self.layout.per_shard)
        offset, length = (int(v) for v in self.index(shard, slot)[position])
        if offset == MISSING:
            raise self._corrupt(slot, shard, f"chunk {position} missing")
        valid = whole_chunk(length, self.layout.checksummed)
        data = self.source.read_checked(self.layout.key(shard), offset, length, valid)
        if len(data) != length:
            raise self._corrupt(slot, shard, f"chunk {position} cut short ({len(data)} of {length} bytes)")
        if self.layout.checksummed:
            # a numpy view, not a slice of the bytes: no copy of the frame (google_crc32c reads arrays)
            frame = np.frombuffer(data, dtype=np.uint8, count=length - CRC_BYTES)
            if crc32c(frame) != data[-CRC_BYTES:]:
                raise self._corrupt(slot, shard, f"chunk {position} checksum mismatch (crc32c)")
        return data

    def read_into(self, slot: int, out: np.ndarray) -> None:
        """Decode the chunk of ``slot`` into ``out`` (C-contiguous, the array's patch shape and dtype)."""
        if out.shape != self.patch_shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise StoreError(
                f"out must be a C-contiguous {self.dtype} array of shape {self.patch_shape}, "
                f"found {out.dtype} {out.shape}"
            )
        data = self.chunk(slot)
        frame = data[:-CRC_BYTES] if self.layout.checksummed else data
        try:
            self._codec.decode(frame, out=out.reshape(-1).view(np.uint8))
        except (RuntimeError, ValueError) as error:
            shard, position = divmod(int(slot), self.layout.per_shard)
            raise self._corrupt(slot, shard, f"chunk {position} does not decode ({error})") from error

    def read(self, slot: int) -> np.ndarray:
        """The patch of ``slot`` as a new array."""
        out = np.empty(self.patch_shape, dtype=self.dtype)
        self.read_into(slot, out)
        return out


class ShardWriter:
    """Writes whole shards of one local brainprep Zarr array, byte for byte as zarr writes them.

    zarr 3.1 spends about as long around the codec as in it when it writes a shard (its asynchronous
    pipeline, a comparison of every chunk key, garbage collection of its buffers). Here each chunk is one
    Blosc encode with the array's own settings (plus its crc32c), and the shard one file write.

    Args:
        folder: the array's folder (``STORE.zarr/images``).
        layout: the array's :class:`ShardLayout`.
    """

    def __init__(self, folder: Path, layout: ShardLayout) -> None:
        self.folder = Path(folder)
        self.layout = layout
        self._codec = numcodecs_blosc(layout.blosc)

    def encode(self, chunks: np.ndarray) -> list[bytes]:
        """The stored bytes of each chunk: its Blosc frame (+ crc32c when the layout has it)."""
        expected = (self.layout.per_shard, *self.layout.patch_shape)
        if chunks.shape != expected or chunks.dtype != self.layout.dtype:
            raise StoreError(
                f"{self.folder}: a shard is {self.layout.dtype} {expected}, got {chunks.dtype} {chunks.shape}"
            )
        parts = []
        for chunk in chunks:
            frame = self._codec.encode(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8))
            parts.append(frame + crc32c(frame) if self.layout.checksummed else frame)
        return parts

    def write(self, shard: int, chunks: np.ndarray) -> str:
        """Write shard ``shard``: every one of its ``per_shard`` chunks, empty ones included (as zarr does
        with ``write_empty_chunks``), through a temporary name and a rename (a killed build leaves the
        whole shard or none).

        Args:
            chunks: (per_shard, *patch_shape) in the array's dtype.

        Returns:
            The shard's :func:`checksum_digest`.
        """
        parts = self.encode(chunks)
        index = np.empty((self.layout.per_shard, 2), dtype="<u8")
        index[:, 1] = [len(part) for part in parts]
        index[:, 0] = np.cumsum(index[:, 1]) - index[:, 1]
        write_shard_file(self.folder / self.layout.key(shard), parts, index)
        return checksum_digest(parts)


def write_shard_file(path: Path, parts: list[bytes], index: np.ndarray) -> None:
    """Write a shard file: its chunks' stored bytes, then ``index`` (uint64 ``(offset, length)`` per chunk
    in the index's own order, little-endian) and the index's crc32c (zarr's ``index_location="end"``),
    through a temporary name and a rename (a killed build leaves the whole shard or none)."""
    index_bytes = np.ascontiguousarray(index, dtype="<u8").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        with open(temporary, "wb") as file:
            file.writelines([*parts, index_bytes, crc32c(index_bytes)])
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
