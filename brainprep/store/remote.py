"""Open a store wherever it lives: a local folder, a packed ``.zarr.zip``, ``http(s)://`` or ``s3://``.

Readers call :func:`open_zarr_store` / :func:`open_h5_file` and never care where the bytes come from.
Everything returned here is read-only: a shared store is an artefact to train from, never to edit.

Zarr v3 over plain HTTP has no directory listing, so readers must reach every array by name
(``group["images"]``) through its ``zarr.json`` and never list a group's members; the patch store schema
names every array (:mod:`brainprep.store.schema`), so nothing needs listing.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from brainprep.errors import StoreError

logger = logging.getLogger(__name__)

URL_SCHEMES: tuple[str, ...] = ("http://", "https://", "s3://")
ZIP_SUFFIX = ".zip"
HDF5_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5")


def is_url(location: str | Path) -> bool:
    """True for ``http://``, ``https://`` and ``s3://`` locations (a ``Path`` is never a URL)."""
    return isinstance(location, str) and location.lower().startswith(URL_SCHEMES)


def location_kind(location: str | Path) -> str:
    """Where a store lives: ``"http"``, ``"s3"``, ``"zip"`` (local packed store) or ``"local"``."""
    text = str(location)
    lower = text.lower()
    if is_url(text):
        return "s3" if lower.startswith("s3://") else "http"
    if lower.endswith(ZIP_SUFFIX):
        return "zip"
    return "local"


def store_format(location: str | Path) -> str:
    """``"hdf5"`` for ``*.h5`` / ``*.hdf5`` locations (local or URL), ``"zarr"`` otherwise."""
    return "hdf5" if str(location).lower().rstrip("/").endswith(HDF5_SUFFIXES) else "zarr"


def _require_s3fs(location: str) -> None:
    if importlib.util.find_spec("s3fs") is None:
        raise StoreError(
            f"reading {location} needs the s3fs package, which is not installed (pip install s3fs)"
        )


def open_zarr_store(location: str | Path, *, storage_options: dict[str, Any] | None = None) -> Any:
    """A read-only Zarr v3 store over ``location``.

    Args:
        location: a local ``STORE.zarr`` folder, a local ``STORE.zarr.zip`` (see :mod:`brainprep.pack`),
            an ``http(s)://.../STORE.zarr`` or ``s3://bucket/STORE.zarr`` URL, or the URL of a packed
            ``STORE.zarr.zip`` (read by byte ranges: the server must support HTTP Range requests).
        storage_options: passed to fsspec for URLs (e.g. ``{"anon": True}`` for a public bucket).

    Returns:
        A ``zarr.abc.store.Store`` (``LocalStore``, ``ZipStore`` or ``FsspecStore``) opened read-only;
        pass it to ``zarr.open_group(store, mode="r")``.

    Raises:
        StoreError: s3fs is missing for an ``s3://`` URL, or a local location does not exist.
    """
    import zarr.storage

    kind = location_kind(location)
    text = str(location)
    if kind in ("http", "s3"):
        if kind == "s3":
            _require_s3fs(text)
        logger.debug("opening %s through fsspec", text)
        if text.lower().endswith(ZIP_SUFFIX):
            return _remote_zip_store(text, storage_options)
        return zarr.storage.FsspecStore.from_url(
            text.rstrip("/"), storage_options=storage_options, read_only=True
        )
    path = Path(location)
    if not path.exists():
        raise StoreError(f"store {path} does not exist")
    # Store.open() returns a store that is already open: usable with store.get() as well as zarr.open_group
    # (a ZipStore built with its constructor has no zip handle until opened).
    from zarr.core.sync import sync

    if kind == "zip":
        if not path.is_file():
            raise StoreError(f"packed store {path} must be a zip file, found a folder")
        return sync(zarr.storage.ZipStore.open(path, mode="r"))
    if not path.is_dir():
        raise StoreError(f"Zarr store {path} must be a folder (or a .zip), found a file")
    return sync(zarr.storage.LocalStore.open(path, read_only=True))


def _remote_zip_store(url: str, storage_options: dict[str, Any] | None) -> Any:
    """A packed store at a URL: fsspec's zip filesystem over ranged reads of the remote file (the zip's
    central directory once, then each member by range; members are stored, so no inflating)."""
    import fsspec
    import zarr.storage
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

    try:
        zip_fs = fsspec.filesystem("zip", fo=url, target_options=storage_options or {})
    except (OSError, ValueError) as error:
        raise StoreError(f"cannot open the packed store {url}: {error}") from error
    return zarr.storage.FsspecStore(
        fs=AsyncFileSystemWrapper(zip_fs, asynchronous=True), path="", read_only=True
    )


def open_h5_file(location: str | Path, *, storage_options: dict[str, Any] | None = None) -> Any:
    """An ``h5py.File`` opened read-only, over an fsspec file object for URLs.

    Over HTTP every HDF5 read becomes a ranged GET; fsspec's read-ahead cache keeps the metadata reads
    few. The fsspec file object is kept on the returned file (``_brainprep_fileobj``) so it lives as long
    as the ``h5py.File`` does; closing the ``h5py.File`` does not close it, call :func:`close_h5_file`.

    Raises:
        StoreError: s3fs is missing for an ``s3://`` URL, or a local file does not exist.
    """
    import h5py

    text = str(location)
    if not is_url(location):
        path = Path(location)
        if not path.is_file():
            raise StoreError(f"HDF5 store {path} does not exist or is not a file")
        return h5py.File(path, "r")
    import fsspec

    if location_kind(text) == "s3":
        _require_s3fs(text)
    fileobj = fsspec.open(text, mode="rb", **(storage_options or {})).open()
    try:
        handle = h5py.File(fileobj, "r")
    except OSError as error:
        fileobj.close()
        raise StoreError(f"cannot open {text} as HDF5: {error}") from error
    handle._brainprep_fileobj = fileobj
    return handle


def close_h5_file(handle: Any) -> None:
    """Close an ``h5py.File`` from :func:`open_h5_file` and the fsspec file object under it, if any."""
    fileobj = getattr(handle, "_brainprep_fileobj", None)
    handle.close()
    if fileobj is not None:
        fileobj.close()
