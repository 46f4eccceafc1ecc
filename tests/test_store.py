"""The patch store: reader API, plain zarr / h5py access, exact patch table, locks and completeness.

One small synthetic dataset (5 cases of 64x64x32, the 4th with a tumour too small for any patch) is built
once per module into a Zarr and an HDF5 store (one worker, in process); the tests read them back.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from brainprep.builder import build_patches
from brainprep.errors import StoreError, StoreIncompleteError, StoreLockedError
from brainprep.params import BuildParams, SamplingParams
from brainprep.sample import patch_fractions
from brainprep.store import PatchStore, open_store, schema
from brainprep.store.lock import BuildLock, BuildState
from brainprep.store.zarr_store import set_metadata_zarr
from brainprep.synth import SynthParams, write_synthetic_dataset

PATCH = (32, 32, 8)
K = 4
N_CASES = 5


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("store")
    data = write_synthetic_dataset(root / "data", SynthParams(n_cases=N_CASES, shape=(64, 64, 32), seed=3))
    params = BuildParams(sampling=SamplingParams(patch_size=PATCH, patches_per_case=K), seed=5)
    build_patches(data, root / "s.zarr", params, workers=1)
    build_patches(data, root / "s.h5", params, workers=1)
    return {"data": data, "zarr": root / "s.zarr", "hdf5": root / "s.h5", "root": root}


@pytest.fixture(params=["zarr", "hdf5"])
def store(request: pytest.FixtureRequest, built: dict[str, Path]) -> PatchStore:
    with open_store(built[request.param]) as opened:
        yield opened


def test_shapes_dtypes_and_metadata(store: PatchStore) -> None:
    assert store.images.shape == (N_CASES * K, 4, *PATCH)
    assert store.images.dtype == np.float16
    assert store.labels.shape == (N_CASES * K, *PATCH)
    assert store.labels.dtype == np.uint8
    assert store.patch_size == PATCH and store.n_slots == N_CASES * K
    meta = store.metadata
    assert meta["complete"] is True and meta["schema_version"] == schema.SCHEMA_VERSION
    assert store.params.sampling.patches_per_case == K and store.params.seed == 5
    assert store.params.store.format == store.format
    assert [c["case_id"] for c in store.cases] == [f"BRATS_{i:03d}" for i in range(1, N_CASES + 1)]
    assert len(meta["source"]["fingerprint"]) == 64
    for case in store.cases:
        for record in case["files"]:
            assert (
                not Path(record["path"]).is_absolute() and record["size"] > 0 and len(record["sha256"]) == 64
            )


def test_tumour_fractions_match_stored_labels_exactly(store: PatchStore) -> None:
    table = store.table
    labels = np.asarray(store.labels[...])
    volume = np.prod(PATCH)
    for slot in range(store.n_slots):
        if not table.valid[slot]:
            assert table.case[slot] == -1 and table.split[slot] == -1 and not labels[slot].any()
            continue
        tumour = np.float32(np.count_nonzero(labels[slot]) / volume)
        assert table.tumour_fraction[slot] == tumour
        assert table.tumour_fraction[slot] > 0.05  # the sampler kept only valid corners
        _, classes = patch_fractions(labels[slot], 3)
        np.testing.assert_array_equal(table.class_fractions[slot], classes)
        assert table.case[slot] == slot // K


def test_skipped_case_is_recorded_with_its_best_fraction(store: PatchStore) -> None:
    skipped = [c for c in store.cases if c["n_patches"] == 0]
    assert [c["case_id"] for c in skipped] == ["BRATS_004"]  # small_tumour_every=4
    case = skipped[0]
    assert "no 32x32x8 corner" in case["skip_reason"] and case["valid_corner_share"] == 0.0
    assert 0.0 < case["best_tumour_fraction"] <= 0.05
    assert not store.table.valid[case["index"] * K : (case["index"] + 1) * K].any()
    assert store.metadata["summary"]["skipped"] == 1


def test_patch_indices_and_splits(store: PatchStore) -> None:
    table = store.table
    every = store.patch_indices()
    assert every.dtype == np.int64
    np.testing.assert_array_equal(every, np.flatnonzero(table.valid))
    train, val = store.patch_indices("train"), store.patch_indices("val")
    assert len(train) + len(val) == len(every) and not set(train) & set(val)
    split_of = {c["index"]: c["split"] for c in store.cases}
    for slot in train:
        assert split_of[int(table.case[slot])] == "train"
    for slot in val:
        assert split_of[int(table.case[slot])] == "val"
    with pytest.raises(StoreError, match="split must be one of"):
        store.patch_indices("test")


def test_read_patches_returns_the_asked_order(store: PatchStore) -> None:
    slots = [9, 1, 9, 0, 14]
    images, labels = store.read_patches(slots)
    assert images.shape == (5, 4, *PATCH) and images.dtype == np.float16
    for i, slot in enumerate(slots):
        np.testing.assert_array_equal(images[i], store.read_image(slot))
        np.testing.assert_array_equal(labels[i], store.read_label(slot))
    with pytest.raises(IndexError):
        store.read_image(store.n_slots)


def test_plain_zarr_and_h5py_read_without_brainprep(built: dict[str, Path]) -> None:
    with open_store(built["zarr"]) as store:
        expected_image, expected_label = store.read_image(6), store.read_label(6)
    group = zarr.open_group(str(built["zarr"]), mode="r")
    np.testing.assert_array_equal(group["images"][6], expected_image)
    np.testing.assert_array_equal(group["labels"][6], expected_label)
    assert group.attrs["brainprep"]["complete"] is True
    assert group["images"].shards == (K, 4, *PATCH) and group["images"].chunks == (1, 4, *PATCH)
    assert type(group["images"].compressors[0]).__name__ == "BloscCodec"
    with h5py.File(built["hdf5"], "r") as f:
        np.testing.assert_array_equal(f["images"][6], expected_image)
        np.testing.assert_array_equal(f["labels"][6], expected_label)
        assert f["images"].compression == "gzip" and f["images"].shuffle
        assert f["images"].chunks == (1, 4, *PATCH)
        assert json.loads(f.attrs["brainprep"])["complete"] is True


def test_plain_read_in_a_fresh_interpreter(built: dict[str, Path]) -> None:
    """Nothing of brainprep is imported: the stores open with zarr / h5py alone."""
    code = (
        "import sys, zarr, h5py, numpy as np\n"
        f"z = zarr.open_group({str(built['zarr'])!r}, mode='r')['images'][3]\n"
        f"h = h5py.File({str(built['hdf5'])!r}, 'r')['images'][3]\n"
        "assert 'brainprep' not in sys.modules\n"
        "print(int(np.array_equal(z, h)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_hdf5_and_zarr_hold_the_same_content(built: dict[str, Path]) -> None:
    with open_store(built["zarr"]) as z, open_store(built["hdf5"]) as h:
        np.testing.assert_array_equal(np.asarray(z.images[...]), h.images[...])
        np.testing.assert_array_equal(np.asarray(z.labels[...]), h.labels[...])
        for name in ("valid", "case", "corner", "tumour_fraction", "class_fractions", "split"):
            np.testing.assert_array_equal(getattr(z.table, name), getattr(h.table, name))
        # what differs by format: timing, the format itself, and the digests of the stored bytes
        skip = ("summary", "params", "integrity", "cases")
        zmeta = {k: v for k, v in z.metadata.items() if k not in skip}
        hmeta = {k: v for k, v in h.metadata.items() if k not in skip}
        assert zmeta == hmeta
        strip = [{k: v for k, v in c.items() if k != "data_digest"} for c in z.metadata["cases"]]
        assert strip == [{k: v for k, v in c.items() if k != "data_digest"} for c in h.metadata["cases"]]
        assert z.content_id != h.content_id


def test_pickling_keeps_only_the_location(store: PatchStore) -> None:
    store.table  # noqa: B018 - load the cached table
    state = pickle.dumps(store)
    assert len(state) < 500
    clone = pickle.loads(state)
    assert clone.location == store.location and clone._handle is None
    np.testing.assert_array_equal(clone.read_image(2), store.read_image(2))
    clone.close()


def test_incomplete_zarr_store_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(built["zarr"], copy)
    meta = open_store(copy).metadata
    set_metadata_zarr(copy, {**meta, "complete": False})
    with pytest.raises(StoreIncompleteError, match=r"not complete.*build-patches"):
        open_store(copy)
    with open_store(copy, require_complete=False) as partial:
        assert partial.metadata["complete"] is False


def test_hdf5_build_in_progress_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "s.h5"
    BuildState(store).create({"params": {}})
    with pytest.raises(StoreIncompleteError, match="interrupted"):
        open_store(store)


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no brainprep store"):
        open_store(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a brainprep store"):
        open_store(tmp_path / "other.zarr")


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    with BuildLock(store) as lock:
        assert json.loads(lock.path.read_text())["pid"] > 0
        with pytest.raises(StoreLockedError, match="being built by another build-patches"):
            BuildLock(store).acquire()
    assert not lock.path.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.path.write_text(
        json.dumps({"pid": dead.pid, "host": __import__("socket").gethostname(), "started": 0})
    )
    with BuildLock(store):
        assert json.loads(lock.path.read_text())["pid"] != dead.pid


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_lock_of_a_killed_unreaped_build_or_a_reused_pid_is_taken_over(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    host = __import__("socket").gethostname()
    lock_path = BuildLock(store).path
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path.write_text(json.dumps({"pid": zombie.pid, "host": host, "started": 0}))
        zombie.kill()  # kill -9, not reaped: the pid still answers kill(pid, 0)
        deadline = time.time() + 10
        while Path(f"/proc/{zombie.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.time() < deadline
            time.sleep(0.01)
        with BuildLock(store) as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    finally:
        zombie.wait()
    # a live process holding the pid, but not the one that took the lock (its start time differs)
    own_ticks = json.loads(_lock_record(store))["started_ticks"]
    lock_path.write_text(
        json.dumps({"pid": os.getpid(), "host": host, "started": 0, "started_ticks": own_ticks + 1})
    )
    with BuildLock(store):
        assert json.loads(lock_path.read_text())["started_ticks"] == own_ticks
    # the same live process with its own start time is refused
    with BuildLock(store), pytest.raises(StoreLockedError, match="being built by another"):
        BuildLock(store).acquire()


def _lock_record(store: Path) -> str:
    with BuildLock(store) as lock:
        return lock.path.read_text()


def test_two_builds_taking_over_one_stale_lock_do_not_both_own_the_store(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": __import__("socket").gethostname(), "started": 0}
    first, second = BuildLock(store), BuildLock(store)
    first.path.write_text(json.dumps(stale))
    seen = iter([stale])

    def owner_then_race():
        # The second build reads the stale owner; before it renames the lock away, the first build
        # takes the stale lock over and creates its own.
        recorded = next(seen, None)
        if recorded is not None:
            first.acquire()
            return recorded
        return json.loads(first.path.read_text())

    second._owner = owner_then_race  # type: ignore[method-assign]
    second._try_create = lambda: False if first.path.exists() else BuildLock._try_create(second)  # type: ignore[method-assign]
    with pytest.raises(StoreLockedError, match="being built by another build-patches"):
        second.acquire()
    assert json.loads(first.path.read_text())["pid"] == os.getpid()  # the first build's lock survived
    first.release()
    assert not first.path.exists()


def test_consecutive_runs_by_hand():
    from brainprep.store.reader import consecutive_runs

    assert consecutive_runs(np.array([2, 3, 4, 9, 11, 12])) == [(0, 3), (3, 4), (4, 6)]
    assert consecutive_runs(np.array([5])) == [(0, 1)]
    assert consecutive_runs(np.array([], dtype=np.int64)) == []


# --- direct shard reads of a local Zarr store -----------------------------------------------------------
def test_local_zarr_store_reads_chunks_directly_with_zarrs_values(built: dict[str, Path]) -> None:
    from brainprep.store.shards import LocalFiles, ShardReader

    group = zarr.open_group(str(built["zarr"]), mode="r")
    with open_store(built["zarr"]) as store:
        assert store._shards is not None and all(isinstance(r, ShardReader) for r in store._shards)
        assert all(isinstance(r.source, LocalFiles) and r.layout.checksummed for r in store._shards)
        valid = store.table.valid
        assert not valid.all(), "the fixture must hold empty slots (a skipped case)"
        for slot in range(store.n_slots):  # every slot: patches, empty slots, a case with no shard
            np.testing.assert_array_equal(store.read_image(slot), group[schema.IMAGES][slot])
            np.testing.assert_array_equal(store.read_label(slot), group[schema.LABELS][slot])
        slots = [3, 0, 3, store.n_slots - 1]
        images = np.full((4, 4, *PATCH), np.nan, dtype=np.float16)
        labels = np.full((4, *PATCH), 9, dtype=np.uint8)
        store.read_patches_into(slots, images, labels)
        np.testing.assert_array_equal(images, group[schema.IMAGES].get_orthogonal_selection((slots,)))
        np.testing.assert_array_equal(labels, group[schema.LABELS].get_orthogonal_selection((slots,)))


@pytest.mark.parametrize(("dtype", "level"), [("float16", 1), ("float32", 3), ("uint8", 1)])
def test_shard_writer_writes_zarrs_bytes(tmp_path: Path, dtype: str, level: int) -> None:
    from brainprep.store.shards import LocalFiles, ShardReader, ShardWriter, shard_layout
    from brainprep.store.zarr_store import image_codec

    patch, k = (2, 16, 16, 8), 3
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((k, *patch)) * 40).astype(dtype)
    data[1] = 0  # an empty slot is stored too (write_empty_chunks)
    arrays = {}
    for name in ("by_zarr", "by_brainprep"):
        group = zarr.open_group(str(tmp_path / "s.zarr"), mode="a")
        arrays[name] = group.create_array(
            name,
            shape=(2 * k, *patch),
            dtype=dtype,
            chunks=(1, *patch),
            shards=(k, *patch),
            compressors=image_codec(dtype, level),
            fill_value=0,
        )
    with zarr.config.set({"array.write_empty_chunks": True}):  # read when an array is opened
        zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")["by_zarr"][k:] = data
    layout = shard_layout("by_brainprep", arrays["by_brainprep"])
    assert layout.checksummed  # bytes -> blosc -> crc32c
    writer = ShardWriter(tmp_path / "s.zarr" / "by_brainprep", layout)
    writer.write(1, data)
    key = layout.key(1)
    assert (writer.folder / key).read_bytes() == (tmp_path / "s.zarr" / "by_zarr" / key).read_bytes()
    assert not list(writer.folder.rglob("*.partial"))  # the temporary name is gone
    np.testing.assert_array_equal(arrays["by_brainprep"][k:], data)  # and zarr reads it back
    reader = ShardReader(layout, LocalFiles(writer.folder))
    np.testing.assert_array_equal(reader.read(k + 2), data[2])
    with pytest.raises(StoreError, match="a shard is"):
        writer.write(0, data[:2])


def test_damaged_shard_index_and_cut_chunk_are_named(built: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "s.zarr"
    shutil.copytree(built["zarr"], copy)
    with open_store(copy) as store:
        slot = int(store.patch_indices()[0])
        reader = store._shards[0]
        shard = reader.source.folder / reader.layout.key(slot // K)
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF  # inside the index
    shard.write_bytes(bytes(data))
    with open_store(copy) as store, pytest.raises(StoreError, match="index checksum mismatch"):
        store.read_image(slot)
    data[-20] ^= 0xFF
    index = np.frombuffer(bytes(data[-(16 * K + 4) : -4]), dtype="<u8").reshape(K, 2)
    offset, length = (int(v) for v in index[slot % K])
    assert offset + length <= len(data)
    shard.write_bytes(bytes(data[: offset + length // 2]))  # the index is gone too: too short or wrong
    with open_store(copy) as store, pytest.raises(StoreError) as cut:
        store.read_image(slot)
    assert str(shard) in str(cut.value) and "\n" not in str(cut.value)


def test_packed_zarr_store_reads_through_the_same_checked_reader(built: dict[str, Path]) -> None:
    from brainprep.store.shards import StoreBytes

    with open_store(built["zarr"]) as store:
        expected = store.read_patches(store.patch_indices())
    packed = built["root"] / "fallback.zip"
    from brainprep.pack import pack_store

    pack_store(built["zarr"], packed)
    with open_store(packed) as store:
        assert store._shards is not None and isinstance(store._shards[0].source, StoreBytes)
        got = store.read_patches(store.patch_indices())
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
