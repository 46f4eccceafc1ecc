"""Where a store lives and what format it is: the one owner of location kinds, URL schemes and suffixes.

Every module that needs to know whether ``STORE`` is a local folder, a packed ``.zip``, an ``http(s)://``,
``s3://`` or ``gs://`` URL, or whether it is Zarr v3 or HDF5, asks this module instead of testing prefixes
and suffixes itself. Nothing here touches the network or imports fsspec.

=========  =====================================  =========================================
kind       location                               read through
=========  =====================================  =========================================
``local``  ``STORE.zarr`` folder, ``STORE.h5``     zarr ``LocalStore`` / brainprep's shard reader, h5py
``zip``    local ``STORE.zarr.zip``               zarr ``ZipStore``
``http``   ``http://`` / ``https://`` URL         fsspec ``HTTPFileSystem`` (aiohttp), ranged GETs
``s3``     ``s3://bucket/key``                    fsspec ``s3fs``
``gs``     ``gs://`` / ``gcs://`` URL             fsspec ``gcsfs``
=========  =====================================  =========================================
"""

from __future__ import annotations

import os
from pathlib import Path

from brainprep.errors import ConfigError

LOCAL = "local"
ZIP = "zip"
HTTP = "http"
S3 = "s3"
GS = "gs"
#: URL prefix (lower case) -> location kind.
URL_SCHEMES: dict[str, str] = {"http://": HTTP, "https://": HTTP, "s3://": S3, "gs://": GS, "gcs://": GS}
#: Kinds read over the network, and the fsspec backend package each needs beyond fsspec itself.
REMOTE_KINDS: tuple[str, ...] = (HTTP, S3, GS)
BACKEND_PACKAGES: dict[str, str] = {HTTP: "aiohttp", S3: "s3fs", GS: "gcsfs"}

ZARR = "zarr"
HDF5 = "hdf5"
STORE_FORMATS: tuple[str, ...] = (ZARR, HDF5)
ZARR_SUFFIXES: tuple[str, ...] = (".zarr",)
HDF5_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5")
#: A packed Zarr store (:mod:`brainprep.pack`): ``STORE.zarr.zip``.
ZIP_SUFFIX = ".zip"
#: The first 8 bytes of every HDF5 file (HDF5 File Format Specification, "Format Signature").
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_url(location: str | os.PathLike) -> bool:
    """True for a location starting with one of :data:`URL_SCHEMES` (a ``Path`` is never a URL)."""
    return isinstance(location, str) and location.lower().startswith(tuple(URL_SCHEMES))


def location_kind(location: str | os.PathLike) -> str:
    """``"local"``, ``"zip"``, ``"http"``, ``"s3"`` or ``"gs"`` (see the module table).

    >>> location_kind("https://host/x.zarr"), location_kind("out/x.zarr.zip"), location_kind(Path("x.h5"))
    ('http', 'zip', 'local')
    """
    if is_url(location):
        lower = str(location).lower()
        return next(kind for prefix, kind in URL_SCHEMES.items() if lower.startswith(prefix))
    return ZIP if is_packed(location) else LOCAL


def is_packed(location: str | os.PathLike) -> bool:
    """True for a packed Zarr store (``*.zip``), local or at a URL."""
    return os.fspath(location).lower().rstrip("/").endswith(ZIP_SUFFIX)


def is_remote(location: str | os.PathLike) -> bool:
    """True when the store is read over the network (http, s3, gs)."""
    return location_kind(location) in REMOTE_KINDS


def store_format(location: str | os.PathLike) -> str:
    """``"hdf5"`` or ``"zarr"`` of an existing store, local or remote.

    ``*.h5`` / ``*.hdf5`` is HDF5; a local file under another name is HDF5 when it starts with the HDF5
    signature (a packed ``.zip`` is Zarr); everything else is Zarr.
    """
    text = os.fspath(location)
    if text.lower().rstrip("/").endswith(HDF5_SUFFIXES):
        return HDF5
    if location_kind(text) == LOCAL and Path(text).is_file():
        with open(text, "rb") as f:
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return HDF5
    return ZARR


def format_for_new_store(path: str | os.PathLike) -> str:
    """``"zarr"`` or ``"hdf5"`` of a store about to be written, from its suffix alone.

    Raises:
        ConfigError: the name ends in neither a Zarr nor an HDF5 suffix.
    """
    name = Path(path).name.lower()
    if name.endswith(ZARR_SUFFIXES):
        return ZARR
    if name.endswith(HDF5_SUFFIXES):
        return HDF5
    raise ConfigError(
        f"store {path} must end in {' or '.join(ZARR_SUFFIXES + HDF5_SUFFIXES)} "
        "(the suffix chooses Zarr v3 or HDF5)"
    )


def describe_locations() -> str:
    """The accepted store locations in one phrase, for help texts and errors."""
    schemes = ", ".join(sorted({prefix.rstrip(":/") for prefix in URL_SCHEMES}))
    suffixes = ", ".join((*ZARR_SUFFIXES, *HDF5_SUFFIXES, ZARR_SUFFIXES[0] + ZIP_SUFFIX))
    return f"a local {suffixes} or a URL ({schemes})"
