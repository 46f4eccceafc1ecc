"""Open a store wherever it lives: a local folder, a packed ``.zarr.zip``, ``http(s)://``, ``s3://``, ``gs://``.

Readers call :func:`open_zarr_store` / :func:`open_h5_file` and never care where the bytes come from.
Everything returned here is read-only: a shared store is an artefact to train from, never to edit. Where a
location is and what it holds is decided by :mod:`brainprep.store.locations`.

Remote stores are read through fsspec (``storage_options`` go to its filesystem: for S3 the standard AWS
variables ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``
apply as in every botocore client, and ``{"endpoint_url": ..., "anon": true}`` etc. override them).
Every remote read goes through :class:`~brainprep.store.guard.GuardedStore` (bounded retries, then one
line naming the URL); an HTTP server is first asked for one byte, so a server without Range support
(``python -m http.server``) is refused at open in one line instead of failing later as a checksum
mismatch. A Zarr store may read through the disk cache of :mod:`brainprep.store.chunk_cache`.

Zarr v3 over plain HTTP has no directory listing, so readers must reach every array by name
(``group["images"]``) through its ``zarr.json`` and never list a group's members; the patch store schema
names every array (:mod:`brainprep.store.schema`), so nothing needs listing.
"""

from __future__ import annotations

import importlib.util
import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainprep.errors import RangeRequestsUnsupportedError, StoreCorruptError, StoreError
from brainprep.store import locations

if TYPE_CHECKING:
    from brainprep.store.chunk_cache import ChunkCacheParams

logger = logging.getLogger(__name__)


def require_backend(location: str) -> None:
    """Raise when the fsspec backend package of a remote ``location`` (s3fs, gcsfs, aiohttp) is missing."""
    package = locations.BACKEND_PACKAGES.get(locations.location_kind(location))
    if package is not None and importlib.util.find_spec(package) is None:
        raise StoreError(
            f"reading {location} needs the {package} package, which is not installed (pip install {package})"
        )


def require_range_support(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Ask the HTTP server of ``url`` for its first byte; refuse a server that sends more.

    A server that ignores the ``Range`` header answers 200 with the whole file: zarr would then take the
    whole shard for its index and report a checksum mismatch, h5py a corrupt file. A missing ``url``
    (404) passes: the reader names the missing store.

    Raises:
        RangeRequestsUnsupportedError: the server answered a 1-byte request with more bytes.
        StoreUnreachableError: the server does not answer (after bounded retries).
    """
    from fsspec.core import url_to_fs

    from brainprep.store.guard import retry_sync

    fs, path = url_to_fs(url, **(storage_options or {}))
    try:
        first = retry_sync(url, lambda: fs.cat_file(path, start=0, end=1))
    except FileNotFoundError:
        return
    if len(first) > 1:
        raise RangeRequestsUnsupportedError(
            f"the server of {url} does not support HTTP Range requests (asked for 1 byte, got "
            f"{len(first)}); serve the store with one that does (nginx, Apache, any object store; "
            "python -m http.server does not)"
        )


def open_zarr_store(
    location: str | Path,
    *,
    storage_options: dict[str, Any] | None = None,
    cache: ChunkCacheParams | None = None,
) -> Any:
    """A read-only Zarr v3 store over ``location``.

    Args:
        location: a local ``STORE.zarr`` folder, a local ``STORE.zarr.zip`` (see :mod:`brainprep.pack`),
            an ``http(s)://``, ``s3://`` or ``gs://`` URL of a ``STORE.zarr``, or the URL of a packed
            ``STORE.zarr.zip`` (read by byte ranges: the server must support HTTP Range requests).
        storage_options: passed to fsspec for URLs (e.g. ``{"anon": True}`` for a public bucket).
        cache: read a remote store through this disk cache (ignored for local stores).

    Returns:
        A ``zarr.abc.store.Store`` (``LocalStore``, ``ZipStore``, or for URLs a ``GuardedStore`` over an
        ``FsspecStore``, under a ``DiskChunkCache`` with ``cache``) opened read-only; pass it to
        ``zarr.open_group(store, mode="r")``.

    Raises:
        StoreError: the fsspec backend of a URL is missing, or a local location does not exist.
        RangeRequestsUnsupportedError: an HTTP server ignores Range requests.
        StoreUnreachableError: a remote server does not answer.
    """
    import zarr.storage
    from zarr.core.sync import sync

    kind = locations.location_kind(location)
    if kind in locations.REMOTE_KINDS:
        store = _remote_zarr_store(str(location), kind, storage_options)
        return store if cache is None else _cached(store, str(location), cache)
    path = Path(location)
    if not path.exists():
        raise StoreError(f"store {path} does not exist")
    # Store.open() returns a store that is already open: usable with store.get() as well as zarr.open_group
    # (a ZipStore built with its constructor has no zip handle until opened).
    if kind == locations.ZIP:
        if not path.is_file():
            raise StoreError(f"packed store {path} must be a zip file, found a folder")
        try:
            return sync(zarr.storage.ZipStore.open(path, mode="r"))
        except zipfile.BadZipFile as err:
            raise StoreCorruptError(
                f"packed store {path} is a truncated or damaged zip ({err}); pack or download it again"
            ) from err
    if not path.is_dir():
        raise StoreError(f"Zarr store {path} must be a folder (or a .zip), found a file")
    return sync(zarr.storage.LocalStore.open(path, read_only=True))


def _remote_zarr_store(url: str, kind: str, storage_options: dict[str, Any] | None) -> Any:
    """A :class:`~brainprep.store.guard.GuardedStore` over fsspec, its server's Range support checked."""
    import zarr.storage

    from brainprep.store.guard import GuardedStore

    require_backend(url)
    packed = locations.is_packed(url)
    if kind == locations.HTTP:
        require_range_support(url if packed else f"{url.rstrip('/')}/zarr.json", storage_options)
    logger.debug("opening %s through fsspec", url)
    if packed:
        inner = _remote_zip_store(url, storage_options)
    else:
        inner = zarr.storage.FsspecStore.from_url(
            url.rstrip("/"), storage_options=storage_options, read_only=True
        )
    return GuardedStore(inner, url=url)


def _cached(store: Any, url: str, cache: ChunkCacheParams) -> Any:
    """``store`` under a disk cache in the namespace of its URL and root ``zarr.json``."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from brainprep.store.chunk_cache import DiskChunkCache, namespace

    root = sync(store.get("zarr.json", default_buffer_prototype()))
    if root is None:  # no store there: the reader says so
        return store
    return DiskChunkCache(store, params=cache, space=namespace(url, root.to_bytes()))


def _remote_zip_store(url: str, storage_options: dict[str, Any] | None) -> Any:
    """A packed store at a URL: fsspec's zip filesystem over ranged reads of the remote file (the zip's
    central directory once, then each member by range; members are stored, so no inflating)."""
    import fsspec
    import zarr.storage
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

    from brainprep.store.guard import classify, retry_sync

    try:
        zip_fs = retry_sync(
            url, lambda: fsspec.filesystem("zip", fo=url, target_options=storage_options or {})
        )
    except (OSError, ValueError) as error:
        if classify(error) == "retry":
            raise
        raise StoreError(f"cannot open the packed store {url}: {error}") from error
    return zarr.storage.FsspecStore(
        fs=AsyncFileSystemWrapper(zip_fs, asynchronous=True), path="", read_only=True
    )


def h5_open_error(location: str | Path, error: OSError) -> StoreError:
    """The one-line error of an HDF5 store file h5py could not open: not HDF5 at all, or damaged."""
    reason = str(error).removeprefix("Unable to synchronously open file ").strip("() ")
    if "signature not found" in reason:
        return StoreError(f"{location} is not an HDF5 file (no HDF5 signature): not a brainprep store")
    return StoreCorruptError(
        f"{location} is a truncated or damaged HDF5 file ({reason}); restore it or rebuild the store"
    )


def open_h5_file(location: str | Path, *, storage_options: dict[str, Any] | None = None) -> Any:
    """An ``h5py.File`` opened read-only, over a retrying fsspec file object for URLs.

    Over HTTP every HDF5 read becomes a ranged GET; fsspec's read-ahead cache keeps the metadata reads
    few. The file object is kept on the returned file (``_brainprep_fileobj``) so it lives as long as the
    ``h5py.File`` does; closing the ``h5py.File`` does not close it, call :func:`close_h5_file`.

    Raises:
        StoreError: the fsspec backend of a URL is missing, a local file does not exist or is not HDF5.
        StoreCorruptError: a truncated or damaged HDF5 file.
        RangeRequestsUnsupportedError: an HTTP server ignores Range requests.
        StoreUnreachableError: a remote server does not answer.
    """
    import h5py

    text = str(location)
    if not locations.is_remote(location):
        path = Path(location)
        if not path.is_file():
            raise StoreError(f"HDF5 store {path} does not exist or is not a file")
        try:
            return h5py.File(path, "r")
        except OSError as error:
            raise h5_open_error(location, error) from error
    import fsspec

    from brainprep.store.guard import GuardedFile, retry_sync

    require_backend(text)
    if locations.location_kind(text) == locations.HTTP:
        require_range_support(text, storage_options)
    fileobj = GuardedFile(
        retry_sync(text, lambda: fsspec.open(text, mode="rb", **(storage_options or {})).open()), text
    )
    try:
        handle = h5py.File(fileobj, "r")
    except OSError as error:
        fileobj.close()
        if isinstance(error, StoreError):
            raise
        raise h5_open_error(text, error) from error
    handle._brainprep_fileobj = fileobj
    return handle


def close_h5_file(handle: Any) -> None:
    """Close an ``h5py.File`` from :func:`open_h5_file` and the file object under it, if any."""
    fileobj = getattr(handle, "_brainprep_fileobj", None)
    handle.close()
    if fileobj is not None:
        fileobj.close()
