"""Remote and packed stores: real HTTP servers on 127.0.0.1 (one with ranged GETs and no directory listing,
one without Range support, one stopped mid-read, one that cuts downloads short), a real S3 server (moto's
server mode) on 127.0.0.1, the disk chunk cache, packed ``.zarr.zip`` files, and the s3:// error without
s3fs. Every server is bound to 127.0.0.1 and stopped by the test that starts it."""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import json
import os
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from brainprep.cli import main
from brainprep.errors import (
    RangeRequestsUnsupportedError,
    StoreCorruptError,
    StoreError,
    StoreIncompleteError,
    StoreUnreachableError,
)
from brainprep.manifest import build_manifest, verify_against_manifest
from brainprep.pack import pack_store
from brainprep.params import BuildParams, SamplingParams
from brainprep.store.chunk_cache import ChunkCacheParams
from brainprep.store.reader import PatchStore, open_store
from brainprep.store.remote import open_zarr_store


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (as nginx or S3 serve them) and NO directory listing, so a
    reader that needs to list a folder fails here as it would against a real object store."""

    requested: list[str]  # set per server: every path asked for
    #: set per server: ``{"truncate": True}`` sends half of every chunk file's bytes, then closes;
    #: ``{"drop_chunks": True}`` closes the connection on an image/label chunk request unanswered (a server
    #: going away while its metadata was already read).
    faults: dict[str, bool]

    def log_message(self, format: str, *args: object) -> None:  # keep the test output quiet
        pass

    def list_directory(self, path: str):  # no listing, like a bucket or a static site
        self.send_error(404, "directory listing disabled")
        return None

    def send_head(self):
        self.requested.append(self.path)
        if self.faults.get("drop_chunks") and re.search(r"/(images|labels)/c/", self.path):
            self.close_connection = True
            return None
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
        if self.faults.get("truncate") and "/c/" in self.path:  # a download cut short mid-body
            outputfile.write(source.read(max((remaining or 2) // 2, 1)))
            self.close_connection = True
            return
        if remaining is None:
            super().copyfile(source, outputfile)
            return
        outputfile.write(source.read(remaining))
        self._remaining = None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from brainprep.builder import build_patches
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


class PlainHandler(http.server.SimpleHTTPRequestHandler):
    """``python -m http.server``: answers every GET with the whole file (no Range support)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class Served:
    """An HTTP server on 127.0.0.1 in a thread, serving ``directory``; :meth:`stop` ends it."""

    def __init__(self, directory: Path, handler: type, **attributes: object) -> None:
        handler_class = functools.partial(type("Handler", (handler,), attributes), directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=10)


@contextlib.contextmanager
def serving(directory: Path, handler: type = RangeHandler, **attributes: object) -> Iterator[Served]:
    served = Served(directory, handler, **({"requested": [], "faults": {}} | attributes))
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def server(built: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    requested: list[str] = []
    with serving(built["zarr"].parent, requested=requested) as served:
        yield served.url, requested


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


def _member_offset(packed: Path, name: str) -> int:
    """Where member ``name``'s stored bytes start in the zip ``packed`` (after its local header)."""
    import zipfile

    info = zipfile.ZipFile(packed).getinfo(name)
    raw = packed.read_bytes()
    start = info.header_offset
    name_length = int.from_bytes(raw[start + 26 : start + 28], "little")
    extra_length = int.from_bytes(raw[start + 28 : start + 30], "little")
    return start + 30 + name_length + extra_length


@pytest.mark.parametrize("damage", ["truncated", "zarr.json", "shard"])
def test_a_damaged_pack_is_one_line_naming_it(built: dict[str, Path], tmp_path: Path, damage: str) -> None:
    """A cut download or a flipped byte in a packed member: zipfile's BadZipFile was a traceback."""
    data = bytearray(built["zip"].read_bytes())
    if damage == "truncated":
        del data[len(data) // 2 :]
    else:
        import zipfile

        names = zipfile.ZipFile(built["zip"]).namelist()
        member = (
            "zarr.json" if damage == "zarr.json" else sorted(n for n in names if n.startswith("labels/c/"))[0]
        )
        data[_member_offset(built["zip"], member) + 40] ^= 0xFF
    packed = tmp_path / "damaged.zarr.zip"
    packed.write_bytes(bytes(data))
    # stats reads the tables only: a damaged label shard is verify's to find
    commands = [["verify", str(packed), "--no-progress"]] + (
        [["stats", str(packed)]] if damage != "shard" else []
    )
    for command in commands:
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert str(packed) in result.output
    if damage != "shard":
        with pytest.raises(StoreCorruptError, match="zip"):
            open_store(packed)


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_s3_without_s3fs_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match=r"needs the s3fs package.*pip install s3fs"):
        open_zarr_store("s3://bucket/store.zarr")


def test_missing_local_store_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_zarr_store(tmp_path / "nope.zarr.zip")


# ---------------------------------------------------------------------------------------------------------
# HTTP faults (issue 10): a server without Range support, a server that stops, a download cut short.


@pytest.mark.parametrize("name", ["store.zarr", "store.h5", "store.zarr.zip"])
def test_server_without_range_support_is_one_clear_line(built: dict[str, Path], name: str) -> None:
    with serving(built["zarr"].parent, PlainHandler) as served:
        url = f"{served.url}/{name}"
        with pytest.raises(RangeRequestsUnsupportedError) as caught:
            open_store(url)
    message = str(caught.value)
    assert "\n" not in message and "does not support HTTP Range requests" in message
    assert url in message and "checksum" not in message


def test_cli_server_without_range_support_exits_non_zero(built: dict[str, Path]) -> None:
    with serving(built["zarr"].parent, PlainHandler) as served:
        result = CliRunner().invoke(main, ["stats", f"{served.url}/store.zarr"])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("Error: the server of http://127.0.0.1:")
    assert "does not support HTTP Range requests" in result.output


@pytest.mark.parametrize("name", ["store.zarr", "store.h5"])
def test_server_stopped_mid_read_is_one_line_after_retries(built: dict[str, Path], name: str) -> None:
    with serving(built["zarr"].parent) as served:
        # small read blocks: fsspec would otherwise read this whole small HDF5 file ahead at once
        store = open_store(f"{served.url}/{name}", storage_options={"block_size": 4096})
        slots = store.patch_indices()
        with open_store(built["zarr"]) as local:
            np.testing.assert_array_equal(store.read_image(slots[0]), local.read_image(slots[0]))
        served.stop()
        with pytest.raises(StoreUnreachableError) as caught:
            store.read_image(slots[-1])
        store.close()
    message = str(caught.value)
    assert isinstance(caught.value, ConnectionError) and "\n" not in message
    assert re.fullmatch(
        rf"cannot reach {re.escape(served.url)}/{re.escape(name)}\S* after 3 attempts: .+", message
    )


def test_cli_stopped_server_exits_non_zero(built: dict[str, Path]) -> None:
    with serving(built["zarr"].parent) as served:
        url = f"{served.url}/store.zarr"
    result = CliRunner().invoke(main, ["verify", url, "--no-progress"])
    assert result.exit_code == 1
    assert re.fullmatch(
        rf"Error: cannot reach {re.escape(url)}/zarr.json after 3 attempts: .+\n", result.output
    )


def test_cli_train_when_the_server_goes_away_is_one_line(built: dict[str, Path], tmp_path: Path) -> None:
    from brainnet.cli import main as brainnet_main

    with serving(built["zarr"].parent, faults={"drop_chunks": True}) as served:
        url = f"{served.url}/store.zarr"
        args = ["train", "--store", url, "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2"]
        args += ["--base-filters", "2", "--depth", "2", "--workers", "1", "--loader", "processes"]
        args += ["--device", "cpu", "--no-progress", "--val-split", "none", "--steps-per-epoch", "1"]
        result = CliRunner().invoke(brainnet_main, args)
    assert result.exit_code == 1
    pattern = rf"Error: cannot reach {re.escape(url)}/(images|labels)/c/\S+ after 3 attempts: [^\n]+\n"
    assert re.fullmatch(pattern, result.output), result.output


# ---------------------------------------------------------------------------------------------------------
# The disk chunk cache over HTTP.


def _cache_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def test_warm_cache_reads_the_same_bytes_without_the_server(built: dict[str, Path], tmp_path: Path) -> None:
    cache = ChunkCacheParams(directory=str(tmp_path / "cache"), max_bytes=2**30)
    with serving(built["zarr"].parent) as served:
        url = f"{served.url}/store.zarr"
        assert_same_store(built["zarr"], url)  # uncached reference
        with open_store(url, cache=cache) as cold:
            slots = cold.patch_indices()[:5]
            cold_images, cold_labels = cold.read_patches(slots)
        warm = open_store(url, cache=cache)  # opening asks the server (Range check, root metadata)
        served.stop()
        warm_images, warm_labels = warm.read_patches(slots)  # the table and patches: all from the cache
        warm.close()
    with open_store(built["zarr"]) as local:
        want_images, want_labels = local.read_patches(slots)
    for got in (cold_images, warm_images):
        np.testing.assert_array_equal(got, want_images)
    for got in (cold_labels, warm_labels):
        np.testing.assert_array_equal(got, want_labels)
    assert not [p for p in _cache_files(tmp_path / "cache") if p.name.startswith(".tmp-")]


def test_cut_download_leaves_no_cache_entry(built: dict[str, Path], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = ChunkCacheParams(directory=str(cache_dir), max_bytes=2**30)
    faults: dict[str, bool] = {}
    with serving(built["zarr"].parent, faults=faults) as served:
        store = open_store(f"{served.url}/store.zarr", cache=cache)
        slot = int(store.patch_indices()[0])
        before = _cache_files(cache_dir)
        faults["truncate"] = True
        with pytest.raises(StoreUnreachableError, match=r"/store\.zarr/images/c/.* after 3 attempts"):
            store.read_image(slot)
        assert _cache_files(cache_dir) == before  # neither an entry nor a temporary file
        faults["truncate"] = False
        image = store.read_image(slot)
        store.close()
    with open_store(built["zarr"]) as local:
        np.testing.assert_array_equal(image, local.read_image(slot))
    assert len(_cache_files(cache_dir)) > len(before)


@pytest.mark.parametrize("damaged", ["chunks", "every entry"])
def test_a_damaged_cache_entry_is_read_again_from_the_store(
    built: dict[str, Path], tmp_path: Path, damaged: str
) -> None:
    """One damaged download (or disk) kept in the cache failed every later read, the store being fine:
    the shard indexes and chunks alone (checked by brainprep's readers), or every entry (array documents
    and tables too, read through zarr)."""
    cache_dir = tmp_path / "cache"
    cache = ChunkCacheParams(directory=str(cache_dir), max_bytes=2**30)
    with serving(built["zarr"].parent) as served, open_store(built["zarr"]) as local:
        slots = local.patch_indices()[:3]
        with open_store(f"{served.url}/store.zarr", cache=cache) as store:
            store.read_patches(slots)
        entries = _cache_files(cache_dir)
        if damaged == "chunks":  # byte ranges of the image and label shards
            files = [p for name in ("images", "labels") for p in (built["zarr"] / name / "c").rglob("*")]
            shards = [p.read_bytes() for p in files if p.is_file()]
            entries = [e for e in entries if any(e.read_bytes() in shard for shard in shards)]
        assert len(entries) >= 4
        for entry in entries:
            data = bytearray(entry.read_bytes())
            data[len(data) // 2] ^= 0xFF
            entry.write_bytes(bytes(data))
        with open_store(f"{served.url}/store.zarr", cache=cache) as store:
            images, labels = store.read_patches(slots)
            np.testing.assert_array_equal(store.table.case, local.table.case)
        want_images, want_labels = local.read_patches(slots)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)


def _edit_json(path: Path, edit: Any) -> None:
    document = json.loads(path.read_bytes())
    edit(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("kind", ["patches", "volumes"])
def test_a_damaged_cached_document_that_is_still_json_is_read_again(
    built: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """Cached metadata documents damaged but still JSON (the root's brainprep attribute, images' fill
    value, a case array's shape) failed every later open or read for good, the store being fine: the
    reader compares them with the store's, keeps the store's and opens once more."""
    from brainprep.builder import build_patches
    from brainprep.params import StoreParams
    from brainprep.synth import SynthParams, write_synthetic_dataset

    if kind == "patches":
        source = built["zarr"]
        keys = {"zarr.json": "root", "images/zarr.json": "fill"}
    else:
        data = write_synthetic_dataset(tmp_path / "data", SynthParams(n_cases=2, shape=(32, 32, 16), seed=0))
        params = BuildParams(
            sampling=SamplingParams(patch_size=(16, 16, 8), patches_per_case=2),
            store=StoreParams(kind="volumes"),
        )
        source = tmp_path / "served" / "store.zarr"
        build_patches(data, source, params, workers=1)
        keys = {"zarr.json": "root", "images/000000/zarr.json": "shape"}
    edits = {
        "root": lambda d: d["attributes"]["brainprep"]["summary"].update(seconds=12345.0),
        "fill": lambda d: d.update(fill_value=1.0),
        "shape": lambda d: d.update(shape=[d["shape"][0], d["shape"][1] + 1, *d["shape"][2:]]),
    }

    def read(location: str, cache: ChunkCacheParams | None = None) -> list[np.ndarray]:
        with open_store(location, cache=cache) as store:
            if kind == "patches":
                return list(store.read_patches(store.patch_indices()))
            return list(store.read_volume(0))

    cache = ChunkCacheParams(directory=str(tmp_path / "cache"), max_bytes=2**30)
    want = read(str(source))
    with serving(source.parent) as served:
        url = f"{served.url}/{source.name}"
        read(url, cache)  # every document is cached now
        entries = {key: open_zarr_store(url, cache=cache).entry_path(key, None) for key in keys}
        for key, entry in entries.items():
            assert entry.is_file(), key
            _edit_json(entry, edits[keys[key]])
        for _ in range(2):  # healed at once, and for good
            for got, expected in zip(read(url, cache), want, strict=True):
                np.testing.assert_array_equal(got, expected)
    for key, entry in entries.items():
        assert entry.read_bytes() == (source / key).read_bytes(), key


def test_cache_stays_under_its_size_bound(built: dict[str, Path], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    max_bytes = 40_000  # about 3 inner chunks of this store: most reads evict
    with serving(built["zarr"].parent) as served:
        store = open_store(
            f"{served.url}/store.zarr", cache=ChunkCacheParams(directory=str(cache_dir), max_bytes=max_bytes)
        )
        with open_store(built["zarr"]) as local:
            for slot in [*store.patch_indices(), *store.patch_indices()[:3]]:
                np.testing.assert_array_equal(store.read_label(slot), local.read_label(slot))
                assert sum(p.stat().st_size for p in _cache_files(cache_dir)) <= max_bytes
        store.close()
    assert _cache_files(cache_dir)


def test_patch_store_pickles_with_its_remote_options(tmp_path: Path) -> None:
    import pickle

    cache = ChunkCacheParams(directory=str(tmp_path), max_bytes=10)
    store = PatchStore("s3://bucket/x.zarr", storage_options={"anon": True}, cache=cache)
    copy = pickle.loads(pickle.dumps(store))
    assert (copy.location, copy.storage_options, copy.cache, copy.kind) == (
        "s3://bucket/x.zarr",
        {"anon": True},
        cache,
        "s3",
    )


# ---------------------------------------------------------------------------------------------------------
# S3: moto's server mode on 127.0.0.1, reached through the standard AWS environment variables.

BUCKET = "brainprep-test"


@pytest.fixture(scope="module")
def s3_server(built: dict[str, Path]) -> Iterator[str]:
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(name, value)
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        for path in built["zarr"].parent.rglob("*"):
            if path.is_file():
                fs.pipe_file(
                    f"{BUCKET}/{path.relative_to(built['zarr'].parent).as_posix()}", path.read_bytes()
                )
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.mark.parametrize("name", ["store.zarr", "store.h5", "store.zarr.zip"])
def test_s3_store_equals_local(built: dict[str, Path], s3_server: str, name: str) -> None:
    assert_same_store(built["zarr"] if name != "store.h5" else built["h5"], f"s3://{BUCKET}/{name}")


def test_s3_cli_with_storage_options(
    built: dict[str, Path], s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "m.json"
    options = json.dumps({"endpoint_url": s3_server, "key": "testing", "secret": "testing"})
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    url = f"s3://{BUCKET}/store.zarr"
    runner = CliRunner()
    result = runner.invoke(
        main, ["manifest", url, "-o", str(manifest), "--no-progress", "--storage-options", options]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        main, ["verify", url, "--manifest", str(manifest), "--no-progress", "--storage-options", options]
    )
    assert result.exit_code == 0 and "OK" in result.output, result.output
    assert (
        runner.invoke(main, ["stats", url, "--storage-options", options]).output
        == runner.invoke(main, ["stats", str(built["zarr"])]).output
    )
    result = runner.invoke(main, ["stats", url, "--storage-options", "[1, 2]"])
    assert result.exit_code == 2 and "must be a JSON object" in result.output


def test_s3_train_through_the_cache(s3_server: str, tmp_path: Path) -> None:
    from brainnet.cli import main as brainnet_main

    cache = tmp_path / "cache"
    args = ["train", "--store", f"s3://{BUCKET}/store.zarr", "--out", str(tmp_path / "run"), "--epochs", "1"]
    args += [
        "--batch-size",
        "2",
        "--base-filters",
        "2",
        "--depth",
        "2",
        "--workers",
        "1",
        "--loader",
        "threads",
    ]
    args += ["--device", "cpu", "--no-progress", "--val-split", "none", "--cache-dir", str(cache)]
    args += ["--cache-size", "1M", "--steps-per-epoch", "2"]
    result = CliRunner().invoke(brainnet_main, args)
    assert result.exit_code == 0, result.output
    sizes = [p.stat().st_size for p in _cache_files(cache)]
    assert sizes and sum(sizes) <= 2**20


@pytest.mark.parametrize(
    ("group", "command"),
    [
        ("brainprep", "stats"),
        ("brainprep", "manifest"),
        ("brainprep", "verify"),
        ("brainnet", "train"),
        ("brainnet", "evaluate"),
    ],
)
def test_every_store_command_takes_storage_options(group: str, command: str) -> None:
    from brainnet.cli import main as brainnet_main

    result = CliRunner().invoke(main if group == "brainprep" else brainnet_main, [command, "--help"])
    assert result.exit_code == 0 and "--storage-options JSON" in result.output
