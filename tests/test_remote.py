"""Remote and packed stores: a real HTTP server on 127.0.0.1 (ranged GETs, no directory listing), packed
``.zarr.zip`` files, and the s3:// error without s3fs."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from brainprep.cli import main
from brainprep.errors import StoreError, StoreIncompleteError
from brainprep.manifest import build_manifest, verify_against_manifest
from brainprep.pack import pack_store
from brainprep.params import BuildParams, SamplingParams
from brainprep.store.reader import open_store
from brainprep.store.remote import location_kind, open_zarr_store, store_format


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (as nginx or S3 serve them) and NO directory listing, so a
    reader that needs to list a folder fails here as it would against a real object store."""

    requested: list[str]  # set per server: every path asked for

    def log_message(self, format: str, *args: object) -> None:  # keep the test output quiet
        pass

    def list_directory(self, path: str):  # no listing, like a bucket or a static site
        self.send_error(404, "directory listing disabled")
        return None

    def send_head(self):
        self.requested.append(self.path)
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            return self.list_directory(path)
        if not os.path.isfile(path):
            self.send_error(404, "not found")
            return None
        size = os.path.getsize(path)
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        handle = open(path, "rb")  # noqa: SIM115 -- closed by copyfile's caller (do_GET)
        if match is None:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            return handle
        first, last = match.groups()
        if first == "":  # suffix range: the last N bytes
            start, stop = max(size - int(last), 0), size
        else:
            start, stop = int(first), min(int(last) + 1 if last else size, size)
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = stop - start
        return handle

    def copyfile(self, source, outputfile) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            super().copyfile(source, outputfile)
            return
        outputfile.write(source.read(remaining))
        self._remaining = None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from brainprep.build import build_patches
    from brainprep.synth import SynthParams, write_synthetic_dataset

    root = tmp_path_factory.mktemp("remote")
    data = write_synthetic_dataset(root / "data", SynthParams(n_cases=4, shape=(64, 64, 32), seed=0))
    params = BuildParams(sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=4))
    served = root / "served"
    stores = {"zarr": served / "store.zarr", "h5": served / "store.h5"}
    for store in stores.values():
        build_patches(data, store, params, workers=1)
    stores["zip"] = pack_store(stores["zarr"], served / "store.zarr.zip")
    return stores


@pytest.fixture(scope="module")
def server(built: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    requested: list[str] = []
    handler = functools.partial(
        type("Handler", (RangeHandler,), {"requested": requested}), directory=str(built["zarr"].parent)
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requested
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def assert_same_store(local: str | Path, remote: str) -> None:
    with open_store(local) as a, open_store(remote) as b:
        assert b.metadata == a.metadata
        assert b.n_slots == a.n_slots and b.patch_size == a.patch_size
        for name in ("valid", "case", "corner", "tumour_fraction", "class_fractions", "split"):
            np.testing.assert_array_equal(getattr(b.table, name), getattr(a.table, name))
        slots = a.patch_indices()
        assert slots.size == 12
        for slot in slots:
            np.testing.assert_array_equal(b.read_image(slot), a.read_image(slot))
            np.testing.assert_array_equal(b.read_label(slot), a.read_label(slot))
        images, labels = b.read_patches(slots[::-1])
        np.testing.assert_array_equal(images, np.stack([a.read_image(s) for s in slots[::-1]]))
        np.testing.assert_array_equal(labels, np.stack([a.read_label(s) for s in slots[::-1]]))


def test_location_kinds() -> None:
    assert location_kind("https://host/x.zarr") == "http" and location_kind("s3://bucket/x.zarr") == "s3"
    assert location_kind("out/x.zarr.zip") == "zip" and location_kind(Path("x.zarr")) == "local"
    assert store_format("http://host/x.h5") == "hdf5" and store_format("x.zarr.zip") == "zarr"


def test_server_refuses_listing(server: tuple[str, list[str]]) -> None:
    import urllib.error
    import urllib.request

    url, _ = server
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"{url}/store.zarr/")


def test_zarr_store_over_http_equals_local(built: dict[str, Path], server: tuple[str, list[str]]) -> None:
    url, requested = server
    requested.clear()
    assert_same_store(built["zarr"], f"{url}/store.zarr")
    assert requested and all(not path.endswith("/") for path in requested)  # never asked for a listing


def test_hdf5_store_over_http_equals_local(built: dict[str, Path], server: tuple[str, list[str]]) -> None:
    url, _ = server
    assert_same_store(built["h5"], f"{url}/store.h5")


def test_stats_and_verify_over_http(built: dict[str, Path], server: tuple[str, list[str]]) -> None:
    url, _ = server
    runner = CliRunner()
    local = runner.invoke(main, ["stats", str(built["zarr"])])
    remote = runner.invoke(main, ["stats", f"{url}/store.zarr"])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert remote.output == local.output and "train" in remote.output
    assert verify_against_manifest(f"{url}/store.zarr", build_manifest(built["zarr"])) == []


def test_packed_store_reads_and_verifies_like_the_folder(built: dict[str, Path]) -> None:
    assert_same_store(built["zarr"], str(built["zip"]))
    with zipfile.ZipFile(built["zip"]) as archive:
        infos = archive.infolist()
    assert infos[0].filename == "zarr.json"
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    on_disk = {p.relative_to(built["zarr"]).as_posix() for p in built["zarr"].rglob("*") if p.is_file()}
    assert {i.filename for i in infos} == on_disk
    assert verify_against_manifest(built["zip"], build_manifest(built["zarr"])) == []
    assert not [p for p in built["zip"].parent.iterdir() if p.name.endswith(".tmp")]


def test_packed_store_over_http(built: dict[str, Path], server: tuple[str, list[str]]) -> None:
    url, _ = server
    assert open_zarr_store(str(built["zip"])).read_only
    assert_same_store(built["zarr"], f"{url}/store.zarr.zip")


def test_pack_cli_and_refusals(built: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli.zarr.zip"
    result = CliRunner().invoke(main, ["pack", str(built["zarr"]), str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == built["zip"].read_bytes()  # deterministic: same files, same order
    result = CliRunner().invoke(main, ["pack", str(built["zarr"]), str(out), "--no-progress"])
    assert result.exit_code == 1 and "exists" in result.output
    with pytest.raises(StoreError, match=r"must end in \.zip"):
        pack_store(built["zarr"], tmp_path / "x.tar")


def test_pack_refuses_an_incomplete_store(built: dict[str, Path], tmp_path: Path) -> None:
    import json
    import shutil

    store = tmp_path / "partial.zarr"
    shutil.copytree(built["zarr"], store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["brainprep"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreIncompleteError):
        pack_store(store, tmp_path / "partial.zarr.zip")
    assert list(tmp_path.iterdir()) == [store]


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_s3_without_s3fs_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match=r"needs the s3fs package.*pip install s3fs"):
        open_zarr_store("s3://bucket/store.zarr")


def test_missing_local_store_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_zarr_store(tmp_path / "nope.zarr.zip")
