"""An opt-in, size-bounded local disk cache of the bytes a remote Zarr store returns.

Why not a library cache. fsspec's ``simplecache`` / ``filecache`` / ``blockcache`` have no size bound
(they grow until the disk is full; fsspec 2026.9 ``implementations/cached.py``), and zarr's
``zarr.experimental.cache_store.CacheStore`` (zarr 3.1) keeps byte-range reads in memory only and counts
its size in the memory of one process. A sharded store is read entirely by byte ranges (the shard index,
then one inner chunk per patch), across DataLoader worker processes and across runs, so neither bounds
what matters here. :class:`DiskChunkCache` is the small twin that does.

What is cached: every successful read of the wrapped store, keyed by ``(key, byte range)``, so a warm
read returns exactly the bytes the server returned; misses (``None``) are not cached. Entries live under
``DIRECTORY/<namespace>/``, the namespace being the sha256 of the store URL and its root ``zarr.json``:
a store rebuilt at the same URL (new build summary, new metadata) never reads the old entries.

Entries are whole or absent: the bytes are written to a temporary file in the same folder and renamed
over the entry (``os.replace``, atomic on POSIX) only after the remote read returned them complete, so a
read that fails or is killed mid-download leaves no entry (at most a ``.tmp-*`` file, never read, removed
by the next eviction once it is older than :data:`STALE_TMP_S`). The chunk checksums of the store
(crc32c) then check the bytes whatever their origin; bytes that fail them drop their entry and are read
once more from the store (:meth:`DiskChunkCache.forget`), so a damaged download is not served for good;
a cached metadata document (``zarr.json``) that is not JSON is read from the store again too, and one
that is JSON but fails the reader's checks (the metadata digest, an array's dtype, shape or layout) is
compared with the store's and replaced when it differs (:meth:`DiskChunkCache.refresh`), the reader then
opening it once more.

Size bound. The cache folder's total size is kept under ``max_bytes``: each process counts what it writes
on top of a scan of the folder, and once that passes ``max_bytes`` it rescans the folder and deletes the
least recently used entries (a hit refreshes the entry's mtime) until the total is at most
:data:`LOW_WATER` x ``max_bytes``. Processes sharing one folder (DataLoader workers) each rescan before
their own count passes the bound, so the folder can exceed it only by what the other processes wrote since
their last scan. A value larger than ``max_bytes`` is not cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from brainprep.config import Params
from brainprep.errors import ConfigError
from brainprep.store.guard import ReadWrapperStore

logger = logging.getLogger(__name__)

#: Eviction brings the folder down to this share of ``max_bytes``, so a full cache is not rescanned on
#: every write.
LOW_WATER = 0.8
#: Seconds after which a temporary file is an abandoned download (a killed process), not one in progress.
STALE_TMP_S = 600.0
TMP_PREFIX = ".tmp-"
#: the key suffix of a Zarr v3 metadata document: a cached copy that is not JSON is read from the store
METADATA_DOCUMENT = "zarr.json"


@dataclass(frozen=True)
class ChunkCacheParams(Params):
    """Where the cache lives and how large it may grow.

    Attributes:
        directory: the cache folder (created on first use; may be shared by several stores and processes).
        max_bytes: bound on the folder's total size.
    """

    directory: str
    max_bytes: int

    def __post_init__(self) -> None:
        if not self.directory:
            raise ConfigError("chunk cache directory must be a folder path, got an empty string")
        if self.max_bytes <= 0:
            raise ConfigError(f"chunk cache size must be positive, got {self.max_bytes} bytes")


def parse_size(text: str) -> int:
    """Bytes of a size such as ``"512M"``, ``"20G"``, ``"1.5GiB"`` or ``"1000000"`` (powers of 1024).

    >>> parse_size("2G"), parse_size("10k"), parse_size("123")
    (2147483648, 10240, 123)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise ConfigError(f"cache size must look like 512M, 20G or a byte count, got {text!r}")
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " "))


def range_tag(byte_range: ByteRequest | None) -> str:
    """A text form of a byte request: ``all``, ``S-E`` (end exclusive), ``S-`` or ``-N`` (suffix)."""
    if byte_range is None:
        return "all"
    if isinstance(byte_range, RangeByteRequest):
        return f"{byte_range.start}-{byte_range.end}"
    if isinstance(byte_range, OffsetByteRequest):
        return f"{byte_range.offset}-"
    if isinstance(byte_range, SuffixByteRequest):
        return f"-{byte_range.suffix}"
    raise TypeError(f"unknown zarr byte request {byte_range!r}")


def namespace(url: str, root_document: bytes) -> str:
    """The cache sub-folder of one store: sha256 of its URL and root ``zarr.json`` (32 hex digits)."""
    return hashlib.sha256(url.encode() + b"\0" + root_document).hexdigest()[:32]


def _entries(directory: Path) -> list[tuple[float, int, Path]]:
    """``(mtime, size, path)`` of every file two levels down (namespace/entry); vanished files skipped."""
    found = []
    for folder in (p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else ():
        for entry in os.scandir(folder):
            try:
                stat = entry.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            found.append((stat.st_mtime, stat.st_size, Path(entry.path)))
    return found


def evict(directory: Path, max_bytes: int) -> int:
    """Delete least recently used entries until the folder holds at most ``LOW_WATER * max_bytes``,
    and abandoned temporary files; returns the bytes left."""
    now = time.time()
    kept = []
    for mtime, size, path in _entries(directory):
        if path.name.startswith(TMP_PREFIX) and now - mtime > STALE_TMP_S:
            path.unlink(missing_ok=True)
            continue
        kept.append((mtime, size, path))
    total = sum(size for _, size, _ in kept)
    if total <= max_bytes:
        return total
    target = LOW_WATER * max_bytes
    for _, size, path in sorted(kept):
        if total <= target:
            break
        if not path.name.startswith(TMP_PREFIX):  # a download in progress finishes into its entry
            path.unlink(missing_ok=True)
            total -= size
    logger.debug("chunk cache %s evicted down to %d bytes", directory, total)
    return total


class DiskChunkCache(ReadWrapperStore):
    """A read-only zarr store that serves reads of ``store`` from a disk cache (see the module docstring).

    Args:
        store: the remote store to read (a :class:`~brainprep.store.guard.GuardedStore`).
        params: cache folder and size bound.
        space: this store's sub-folder name, :func:`namespace`.
    """

    def __init__(self, store: Store, *, params: ChunkCacheParams, space: str) -> None:
        super().__init__(store)
        self.params = params
        self.space = space
        self.root = Path(params.directory)
        self.folder = self.root / space
        self.folder.mkdir(parents=True, exist_ok=True)
        self._counted = evict(self.root, params.max_bytes)

    def _with_store(self, store: Store) -> DiskChunkCache:
        return type(self)(store, params=self.params, space=self.space)

    def entry_path(self, key: str, byte_range: ByteRequest | None) -> Path:
        digest = hashlib.sha256(f"{key}\0{range_tag(byte_range)}".encode()).hexdigest()[:40]
        return self.folder / digest

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        path = self.entry_path(key, byte_range)
        cached = await asyncio.to_thread(_read_entry, path)
        if cached is not None and key.endswith(METADATA_DOCUMENT) and not _is_json(cached):
            self.forget(key, byte_range)  # a damaged copy of a metadata document: read it from the store
            cached = None
        if cached is not None:
            return prototype.buffer.from_bytes(cached)
        value = await self._store.get(key, prototype, byte_range)
        if value is not None:
            await asyncio.to_thread(self._write_entry, path, value.to_bytes())
        return value

    def forget(self, key: str, byte_range: ByteRequest | None) -> bool:
        """Drop the entry of ``(key, byte_range)``; True when there was one. A reader whose bytes fail
        their checksum calls it and reads once more, from the store
        (:class:`~brainprep.store.shards.StoreBytes`)."""
        try:
            self.entry_path(key, byte_range).unlink()
        except FileNotFoundError:
            return False
        logger.warning(
            "chunk cache %s: dropped a cached %s that failed its check; reading it again", self.root, key
        )
        return True

    def refresh(self, key: str) -> bool:
        """Read the whole ``key`` (a metadata document) from the store past the cache and keep that copy;
        True when the cached one differed (or was there for a key the store no longer has). A reader whose
        document fails a check calls it (:class:`~brainprep.store.reader.PatchStore`) and reads again."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        path = self.entry_path(key, None)
        cached = _read_entry(path)
        fresh = sync(self._store.get(key, default_buffer_prototype()))
        data = None if fresh is None else fresh.to_bytes()
        if cached is None or cached == data:
            return False
        path.unlink(missing_ok=True)
        if data is not None:
            self._write_entry(path, data)
        logger.warning(
            "chunk cache %s: the cached %s differed from the store's; read it again", self.root, key
        )
        return True

    def _write_entry(self, path: Path, data: bytes) -> None:
        if len(data) > self.params.max_bytes:
            return
        temporary = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError as error:  # a full or read-only disk must not stop training: read uncached
            temporary.unlink(missing_ok=True)
            logger.warning("chunk cache %s: cannot write an entry (%s); reading uncached", self.root, error)
            return
        self._counted += len(data)
        if self._counted > self.params.max_bytes:
            self._counted = evict(self.root, self.params.max_bytes)


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return False
    return True


def _read_entry(path: Path) -> bytes | None:
    """The entry's bytes, its mtime refreshed (least-recently-used order); ``None`` when absent."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # never cached, or evicted (by this or another process)
        return None
    with contextlib.suppress(FileNotFoundError):  # evicted right after the read: the bytes are whole
        os.utime(path)
    return data
