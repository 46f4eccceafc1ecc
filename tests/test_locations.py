"""Location kinds and store formats (brainprep.store.locations), and the pure parts of the chunk cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from brainprep.errors import ConfigError
from brainprep.store.chunk_cache import ChunkCacheParams, evict, namespace, parse_size, range_tag
from brainprep.store.locations import (
    format_for_new_store,
    is_packed,
    is_remote,
    is_url,
    location_kind,
    store_format,
)


def test_location_kinds() -> None:
    assert location_kind("https://host/x.zarr") == "http" and location_kind("HTTP://host/x.zarr") == "http"
    assert location_kind("s3://bucket/x.zarr") == "s3" and location_kind("gs://bucket/x.zarr") == "gs"
    assert location_kind("gcs://bucket/x.h5") == "gs" and location_kind("out/x.zarr.zip") == "zip"
    assert location_kind(Path("x.zarr")) == "local" and location_kind(Path("https:/x.zarr")) == "local"
    assert is_packed("https://host/x.zarr.zip") and not is_packed("x.zarr")
    assert is_remote("s3://b/x.zarr") and not is_remote("x.zarr.zip") and not is_url(Path("s3:/b"))


def test_store_formats(tmp_path: Path) -> None:
    assert store_format("http://host/x.h5") == "hdf5" and store_format("s3://b/x.HDF5/") == "hdf5"
    assert store_format("x.zarr.zip") == "zarr" and store_format(tmp_path) == "zarr"
    renamed = tmp_path / "store.bin"  # an HDF5 file under another name: known by its signature
    with h5py.File(renamed, "w") as f:
        f["x"] = np.zeros(2)
    assert store_format(renamed) == "hdf5"
    assert format_for_new_store("a/b.zarr") == "zarr" and format_for_new_store("b.hdf5") == "hdf5"
    with pytest.raises(ConfigError, match=r"store b\.zip must end in \.zarr or \.h5 or \.hdf5"):
        format_for_new_store("b.zip")


def test_parse_size_and_range_tags() -> None:
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

    assert parse_size("512M") == 512 * 2**20 and parse_size("1.5GiB") == 3 * 2**29
    assert parse_size(" 7 ") == 7 and parse_size("2kb") == 2048
    with pytest.raises(ConfigError, match="must look like 512M"):
        parse_size("lots")
    with pytest.raises(ConfigError, match="must be positive"):
        ChunkCacheParams(directory="c", max_bytes=0)
    tags = [range_tag(None), range_tag(RangeByteRequest(3, 9)), range_tag(OffsetByteRequest(4))]
    assert [*tags, range_tag(SuffixByteRequest(16))] == ["all", "3-9", "4-", "-16"]
    assert namespace("s3://b/x.zarr", b"{}") != namespace("s3://b/x.zarr", b"{ }")


def test_evict_removes_least_recently_used_first(tmp_path: Path) -> None:
    folder = tmp_path / "space"
    folder.mkdir()
    now = time.time()
    for age, name in enumerate(["newest", "middle", "oldest"]):
        (folder / name).write_bytes(b"x" * 100)
        os.utime(folder / name, (now - 10 * age, now - 10 * age))
    (folder / ".tmp-abandoned").write_bytes(b"y" * 10)
    os.utime(folder / ".tmp-abandoned", (now - 3600, now - 3600))
    (folder / ".tmp-writing").write_bytes(b"z" * 10)  # a download in progress: kept
    assert evict(tmp_path, 1000) == 310  # under the bound: only the abandoned temporary file goes
    assert evict(tmp_path, 250) == 110  # down to 0.8 x 250 = 200: the two oldest entries go
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-writing", "newest"]
