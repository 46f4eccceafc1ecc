"""The volume store: built by the patch store's driver (--kind volumes), read by VolumeStore.

Small synthetic data (64x64x32, 32x32x8 patches) for the build and read paths, and one real MSD label map
(240x240x155, from ../shared/data, written LPS with a non-identity affine) for the corner table."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA, copy_store, edit_store_metadata, ras_affine, write_brats_case

from brainprep.builder import BadCasesError, build_patches
from brainprep.cli import main as cli
from brainprep.errors import (
    ConfigError,
    InvalidValueError,
    StoreCorruptError,
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
)
from brainprep.params import BuildParams, SamplingParams, StandardizeParams, StoreParams
from brainprep.read import discover_cases, read_case
from brainprep.sample import corner_tumour_counts, valid_corner_mask
from brainprep.standardize import nonzero_statistics
from brainprep.store import open_store
from brainprep.store import volume_schema as vs
from brainprep.store.lock import DONE_MARKERS
from brainprep.store.volume_reader import VolumeStore
from brainprep.synth import SynthParams, write_synthetic_dataset
from brainprep.volume_stats import volume_stats

PATCH = (32, 32, 8)
PATCHES = BuildParams(sampling=SamplingParams(patch_size=PATCH, patches_per_case=4), seed=11)
VOLUMES = PATCHES.replace(store=StoreParams(kind="volumes"))
CLI_OPTIONS = [
    "--patch-size",
    "32",
    "32",
    "8",
    "--patches-per-case",
    "4",
    "--seed",
    "11",
    "--kind",
    "volumes",
    "--no-progress",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic cases; BRATS_004 has a tumour too small for any valid patch."""
    root = tmp_path_factory.mktemp("volumes")
    return write_synthetic_dataset(root / "data", SynthParams(n_cases=4, shape=(64, 64, 32), seed=7))


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-worker float16 Zarr volume store of ``data``."""
    store = tmp_path_factory.mktemp("reference") / "v.zarr"
    build_patches(data, store, VOLUMES, workers=1)
    return store


def store_files(store: Path) -> dict[str, bytes]:
    """Every file of a Zarr store but the group's zarr.json (whose summary holds the build's timings)."""
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p != store / "zarr.json"
    }


def test_a_case_is_its_raw_crop_with_its_statistics_and_corner_table(data: Path, reference: Path) -> None:
    cases = {c.case_id: c for c in discover_cases(data).cases}
    with open_store(reference) as store:
        assert isinstance(store, VolumeStore) and store.params.store.kind == "volumes"
        assert store.metadata["complete"] and store.content_id is not None
        np.testing.assert_array_equal(store.case_indices(), [0, 1, 2, 3])
        for entry in store.cases:
            index, source = entry["index"], read_case(cases[entry["case_id"]])
            crop = store.crop(index)
            image, label = store.read_volume(index)
            assert image.dtype == np.float16 and image.shape == (4, *crop.shape)
            # the whole source, read back through the crop: zeros outside it
            full, full_label = store.read_window(index, -np.array(crop.offset), source.shape)
            np.testing.assert_array_equal(full, source.image.astype(np.float16))
            np.testing.assert_array_equal(full_label, source.label)
            # the whole volume's statistics, bit for bit when summed in the crop's memory order (x fastest)
            mean, std = nonzero_statistics(np.ascontiguousarray(source.image.transpose(0, 3, 2, 1)))
            assert entry["mean"] == mean.tolist() and entry["std"] == std.tolist()
            tables = store.sampling_tables(index)
            # the corner table is the course's over the whole source grid, in crop coordinates
            counts = corner_tumour_counts(source.label, PATCH)
            valid = valid_corner_mask(source.label, PATCH, 0.95)
            np.testing.assert_array_equal(tables[vs.TUMOUR_CORNERS], np.argwhere(valid) - crop.offset)
            np.testing.assert_array_equal(tables[vs.TUMOUR_VOXELS], counts[valid])
            assert entry["n_tumour_corners"] == int(valid.sum())
            assert entry["n_brain_corners"] == np.prod(np.array(crop.shape) - PATCH + 1)
            locations = tables[vs.CLASS_LOCATIONS]
            assert (label[tuple(locations[:, 1:].T)] == locations[:, 0]).all()
        assert store.cases[3]["n_tumour_corners"] == 0  # the too-small tumour: an empty table, no crash


@pytest.mark.parametrize("method", ["patch-slice", "volume-nonzero"])
def test_a_window_standardized_at_read_time_equals_the_patch_store(
    data: Path, reference: Path, tmp_path: Path, method: str
) -> None:
    patches = tmp_path / "p.zarr"
    build_patches(data, patches, PATCHES.replace(standardize=StandardizeParams(method)), workers=1)
    exact = tmp_path / "v32.h5"
    build_patches(data, exact, VOLUMES.replace(store=StoreParams(kind="volumes", dtype="float32")), workers=1)
    with open_store(patches) as p, open_store(exact) as v32, open_store(reference) as v16:
        slots = p.patch_indices()
        assert len(slots) == 12
        for slot in slots:
            case = int(p.table.case[slot])
            corner = p.table.corner[slot] - np.array(v32.crop(case).offset)
            stored = p.read_image(slot)
            window, label = v32.read_window(case, corner, standardize=method)
            # float32 raw intensities: the very patch the patch store holds
            np.testing.assert_array_equal(window.astype(np.float16), stored)
            np.testing.assert_array_equal(label, p.read_label(slot))
            # float16 raw intensities: equal up to the rounding of the intensities
            rounded, _ = v16.read_window(case, corner, standardize=method)
            np.testing.assert_allclose(rounded, stored.astype(np.float32), atol=0.02, rtol=0.01)


@pytest.mark.parametrize("shape", [(4, 40, 36, 20), (40, 36, 20), (4, 300, 20, 9)])
def test_volume_shards_are_the_bytes_zarr_writes(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """write_volume_shard (the build's writer) writes what zarr itself writes for the same array, byte for
    byte, from a slice-major or C-ordered array: edge chunks padded, Morton order, index, checksums."""
    import zarr

    from brainprep.store.volume_chunks import write_volume_shard
    from brainprep.store.volume_zarr import shard_key, write_sharded

    rng = np.random.default_rng(3)
    dtype = np.float16 if len(shape) == 4 else np.uint8
    values = (rng.normal(100, 30, size=shape) * (rng.random(shape) < 0.7)).astype(dtype)
    spatial = vs.volume_chunk_shape(shape[-3:])
    chunks = (*shape[:-3], *spatial)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    slice_major = vs.slice_major(shape, dtype)
    slice_major[...] = values
    ours = write_sharded(group, tmp_path / "s.zarr", "ours", slice_major, chunks, 3)
    write_sharded(group, tmp_path / "s.zarr", "by_zarr", values, chunks, 3)
    by_zarr = group["by_zarr"]
    by_zarr[...] = values  # zarr's own pipeline rewrites the shard
    folder = tmp_path / "s.zarr"
    ours_bytes = (folder / "ours" / shard_key(group["ours"])).read_bytes()
    assert ours_bytes == (folder / "by_zarr" / shard_key(by_zarr)).read_bytes()
    np.testing.assert_array_equal(group["ours"][...], values)
    assert ours == write_volume_shard(folder / "again", by_zarr, values)


def test_direct_chunk_reads_equal_zarrs(reference: Path) -> None:
    import zarr

    group = zarr.open_group(str(reference), mode="r")
    rng = np.random.default_rng(0)
    with open_store(reference) as store:
        for index in store.case_indices():
            shape = np.array(store.crop(int(index)).shape)
            for _ in range(5):  # windows across chunk borders, at the crop's edges and beyond
                corner = rng.integers(-8, shape - 4)
                size = tuple(int(s) for s in rng.integers(9, 40, size=3))  # meets the crop
                image, label = store.read_window(int(index), corner, size)
                lo = np.maximum(corner, 0)
                hi = np.minimum(corner + size, shape)
                want = np.zeros((4, *size), np.float16)
                inside = tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, corner, strict=True))
                block = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
                want[(slice(None), *inside)] = group[vs.case_key(vs.IMAGES, int(index))][
                    (slice(None), *block)
                ]
                np.testing.assert_array_equal(image, want)
                assert (label[inside] == group[vs.case_key(vs.LABELS, int(index))][block]).all()


def test_hdf5_and_zarr_hold_the_same_arrays_and_workers_do_not_change_a_byte(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    build_patches(data, tmp_path / "two.zarr", VOLUMES, workers=2)
    assert store_files(tmp_path / "two.zarr") == store_files(reference)
    build_patches(data, tmp_path / "v.h5", VOLUMES, workers=1)
    with open_store(reference) as z, open_store(tmp_path / "v.h5") as h:
        assert z.content_id == open_store(tmp_path / "two.zarr").content_id
        for index in z.case_indices():
            for a, b in zip(z.read_volume(index), h.read_volume(index), strict=True):
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
            for name, table in z.sampling_tables(index).items():
                np.testing.assert_array_equal(table, h.sampling_tables(index)[name])
        for name in vs.CASE_TABLE_ARRAYS:
            np.testing.assert_array_equal(z.read_table_array(name), h.read_table_array(name))


def test_threads_and_a_dask_cluster_build_the_same_bytes(data: Path, reference: Path, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    build_patches(data, tmp_path / "threads.zarr", VOLUMES, workers=2, scheduler="threads")
    assert store_files(tmp_path / "threads.zarr") == store_files(reference)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        summary = build_patches(data, tmp_path / "cluster.zarr", VOLUMES, scheduler=client)
    assert summary.workers == 2
    assert store_files(tmp_path / "cluster.zarr") == store_files(reference)


def test_kill_and_resume_ends_with_the_uninterrupted_store(tmp_path: Path) -> None:
    data = write_synthetic_dataset(
        tmp_path / "data", SynthParams(n_cases=6, shape=(64, 64, 32), seed=2, small_tumour_every=0)
    )
    store, done = tmp_path / "s.zarr", tmp_path / "s.zarr.build" / "done"
    launcher = "from brainprep.cli import main; main()"
    command = [sys.executable, "-c", launcher, "build-patches", str(data), str(store), *CLI_OPTIONS]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [*command, "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + 60
    while not (done.is_dir() and any(done.glob(DONE_MARKERS))):
        assert process.poll() is None, f"build ended before it could be killed: {process.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    n_done = len(list(done.glob(DONE_MARKERS)))
    assert 1 <= n_done < 6
    with pytest.raises(StoreIncompleteError, match="not complete"):
        open_store(store)
    resumed = CliRunner().invoke(
        cli, ["build-patches", str(data), str(store), *CLI_OPTIONS[:-1], "--workers", "1"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert f"({n_done} done before resuming), 6 volumes, 0 skipped" in resumed.output
    build_patches(data, tmp_path / "whole.zarr", VOLUMES, workers=1)
    assert store_files(tmp_path / "whole.zarr") == store_files(store)
    assert open_store(store).content_id == open_store(tmp_path / "whole.zarr").content_id


def test_damage_is_named_never_read(data: Path, reference: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "v.zarr"
    shutil.copytree(reference, copy)
    shard = copy / "images" / "000001" / "c" / "0" / "0" / "0" / "0"  # the case's one shard
    raw = bytearray(shard.read_bytes())
    raw[40] ^= 0xFF  # inside the first chunk
    shard.write_bytes(bytes(raw))
    with open_store(copy) as store:
        with pytest.raises(
            StoreCorruptError, match=r"images of case BRATS_002: chunk \d+ fails its checksum \(crc32c\)"
        ):
            store.read_volume(1)
        store.read_volume(0)  # the other cases read
        with pytest.raises(StoreError, match="is a volumes store, not a patch store"):
            store.read_image(0)
    # a sampling table replaced by another valid one: its digest tells
    import zarr

    group = zarr.open_group(str(copy), mode="r+")
    group[vs.case_key(vs.TUMOUR_VOXELS, 2)][0] = 1
    with (
        open_store(copy) as store,
        pytest.raises(StoreCorruptError, match="does not match its recorded digest"),
    ):
        store.sampling_tables(2)
    (copy / "labels" / "000000" / "c" / "0" / "0" / "0").unlink()
    with open_store(copy) as store, pytest.raises(StoreCorruptError, match="shard file missing"):
        store.read_window(0, (0, 0, 0))


def test_small_brains_are_padded_and_float16_overflow_refused(tmp_path: Path) -> None:
    shape = (40, 36, 6)  # shorter than the 8-slice patch along z
    image = np.zeros((4, *shape), dtype=np.float32)
    image[:, 5:30, 4:20, 1:5] = 100.0 + np.arange(4)[:, None, None, None]
    label = np.zeros(shape, dtype=np.uint8)
    label[8:28, 6:18, 1:5] = 1  # 960 of the 8192 voxels of the one corner: 11.7% tumour
    write_brats_case(tmp_path / "small", "BraTS-GLI-00001-000", image, label)
    summary = build_patches(
        tmp_path / "small",
        tmp_path / "s.zarr",
        VOLUMES.replace(split=VOLUMES.split.replace(val_fraction=0.0)),
        workers=1,
    )
    assert summary.skipped == 0
    with open_store(tmp_path / "s.zarr") as store:
        entry = store.cases[0]
        # x: brain 5..29 (25) widened to 32, centred (5 - 7 // 2 = 2); y: 4..19 (16) widened to 32 and
        # kept inside the 36 voxels (start -4 -> 0); z: the 6 slices padded to 8, one on each side
        assert entry["crop_offset"] == [2, 0, -1] and entry["crop_shape"] == [32, 32, 8]
        # tumour corners: the course's over the source grid along x and y (9 x 5, all of them 11.7% tumour
        # at least), the padded crop's one along z (the volume is shorter than the patch there)
        assert entry["n_brain_corners"] == 1 and entry["n_tumour_corners"] == 45
        assert entry["padding"] == [[0, 0], [0, 0], [1, 1]]
        np.testing.assert_array_equal(store.case_table.padding[0], [[0, 0], [0, 0], [1, 1]])
        train = volume_stats(store)[0]  # every one of the 45 grid corners passes: a share of 1, not 45
        assert (train.brain_corners, train.grid_corners, train.tumour_corners) == (1, 45, 45)
        assert train.tumour_share == 1.0
    image[0, 10, 10, 2] = 70000.0
    write_brats_case(tmp_path / "big", "BraTS-GLI-00002-000", image, label, image_dtype="float32")
    with pytest.raises(InvalidValueError, match=r"exceeds the float16 range .* case BraTS-GLI-00002-000"):
        build_patches(tmp_path / "big", tmp_path / "b.zarr", VOLUMES, workers=1)
    build_patches(
        tmp_path / "big",
        tmp_path / "b32.zarr",
        VOLUMES.replace(store=StoreParams(kind="volumes", dtype="float32")),
        workers=1,
    )


def test_bad_cases_stop_the_build_before_writing(data: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    label_path = broken / "labelsTr" / "BRATS_002.nii.gz"
    label = nib.load(label_path)
    nib.save(nib.Nifti1Image(np.full(label.shape, 5, np.uint8), label.affine), label_path)
    with pytest.raises(BadCasesError, match="BRATS_002"):
        build_patches(broken, tmp_path / "v.zarr", VOLUMES, workers=1)
    assert not (tmp_path / "v.zarr").exists()
    summary = build_patches(broken, tmp_path / "v.zarr", VOLUMES, workers=1, skip_bad=True)
    assert summary.skipped == 1
    with open_store(tmp_path / "v.zarr") as store:
        assert store.cases[1]["skip_reason"].startswith("bad case: label values")
        np.testing.assert_array_equal(store.case_indices(), [0, 2, 3])


def test_a_recipe_builds_either_kind(data: Path, reference: Path, tmp_path: Path) -> None:
    from brainprep.recipe import write_recipe

    recipe = write_recipe(tmp_path / "r.json", PATCHES, {f"BRATS_00{i}": "train" for i in range(1, 5)})
    command = ["build-patches", str(data), str(tmp_path / "v.zarr"), "--recipe", str(recipe), "--no-progress"]
    built = CliRunner().invoke(cli, [*command, "--kind", "volumes", "--workers", "1"])
    assert built.exit_code == 0 and "4 volumes" in built.output, built.output
    with open_store(tmp_path / "v.zarr") as store:
        assert store.params == VOLUMES.replace(split=store.params.split)
        assert [c["split"] for c in store.cases] == ["train"] * 4
        np.testing.assert_array_equal(store.read_volume(1)[0], open_store(reference).read_volume(1)[0])


def test_patch_store_parameters_are_unchanged() -> None:
    assert "kind" not in StoreParams().to_dict()
    assert (
        StoreParams.from_dict({"format": "zarr", "dtype": "float16", "compression_level": 1}).kind
        == "patches"
    )
    assert StoreParams(kind="volumes").to_dict()["kind"] == "volumes"
    assert BuildParams.from_dict(VOLUMES.to_dict()) == VOLUMES


@pytest.mark.parametrize("level", [0, 10, -1, 3.0, True, "3"])
def test_store_parameters_refuse_a_compression_level_the_cli_would(level) -> None:
    # the API took any level: 23 reached zstd, 0 gzip, and the store recorded it as a build parameter
    for kind in ("patches", "volumes"):
        with pytest.raises(ConfigError, match="compression_level must be an int from 1 to 9"):
            StoreParams(kind=kind, compression_level=level)


def test_crop_offset_maps_the_corner_table_back_to_a_real_label_map(tmp_path: Path) -> None:
    path = SHARED_DATA / "msd-labels" / "labelsTr" / "BRATS_001.nii.gz"
    if not path.is_file():
        pytest.skip(f"real MSD label map not found at {path} (see ../shared/data/README.md)")
    label = np.asarray(nib.load(path).dataobj, dtype=np.uint8)  # identity affine: RAS already
    image = np.zeros((4, *label.shape), dtype=np.float32)
    image[:, 45:195, 25:215, 5:150] = 200.0  # a brain-sized box: narrower than the patch along x
    image[0][label > 0] = 900.0
    # written LPS, anisotropic, off-origin: the build must map everything back to RAS
    write_brats_case(tmp_path / "real", "BraTS-GLI-00001-000", image, label, affine=ras_affine())
    params = BuildParams(store=StoreParams(kind="volumes"), split=VOLUMES.split.replace(val_fraction=0.0))
    build_patches(tmp_path / "real", tmp_path / "v.zarr", params, workers=1)
    patches = tmp_path / "p.zarr"
    build_patches(
        tmp_path / "real",
        patches,
        BuildParams(sampling=SamplingParams(patches_per_case=4), split=params.split),
        workers=1,
    )
    size = params.sampling.patch_size
    with open_store(tmp_path / "v.zarr") as store, open_store(patches) as p:
        tables = store.sampling_tables(0)
        crop = store.crop(0)
        source = store.corner_on_source(0, tables[vs.TUMOUR_CORNERS])
        # every corner of the source grid that passes the threshold (the course's set), and no other, is in
        # the table: those whose patch reaches past the crop too (the brain is narrower than the patch in x)
        valid = valid_corner_mask(label, size, 0.95)
        counts = corner_tumour_counts(label, size)
        np.testing.assert_array_equal(source, np.argwhere(valid))
        np.testing.assert_array_equal(tables[vs.TUMOUR_VOXELS], counts[valid])
        outside = (source < crop.offset) | (source > np.array(crop.offset) + crop.shape - size)
        assert len(source) > 100 and outside.any(axis=1).mean() > 0.5
        # the patch store's corners (drawn on the source grid) read back as its very label patches
        for slot in p.patch_indices():
            corner = p.table.corner[slot] - np.array(crop.offset)
            np.testing.assert_array_equal(store.read_window(0, corner)[1], p.read_label(slot))


def test_verify_pack_and_the_patch_commands_on_a_volume_store(reference: Path, tmp_path: Path) -> None:
    import shutil

    runner = CliRunner()
    good = runner.invoke(cli, ["verify", str(reference), "--no-progress"])
    assert good.exit_code == 0 and "OK" in good.output, good.output
    packed = tmp_path / "v.zarr.zip"
    assert runner.invoke(cli, ["pack", str(reference), str(packed), "--no-progress"]).exit_code == 0
    with open_store(reference) as folder, open_store(packed) as zipped:
        assert isinstance(zipped, VolumeStore) and zipped.content_id == folder.content_id
        for a, b in zip(folder.read_window(2, (3, -4, 5)), zipped.read_window(2, (3, -4, 5)), strict=True):
            np.testing.assert_array_equal(a, b)
    assert runner.invoke(cli, ["verify", str(packed), "--no-progress"]).exit_code == 0
    manifest = tmp_path / "m.json"
    written = runner.invoke(cli, ["manifest", str(reference), "-o", str(manifest), "--no-progress"])
    assert written.exit_code == 0, written.output
    assert (
        runner.invoke(cli, ["verify", str(packed), "--manifest", str(manifest), "--no-progress"]).exit_code
        == 0
    )
    stats = runner.invoke(cli, ["stats", str(reference)])
    assert stats.exit_code == 0, stats.output
    with open_store(reference) as store:
        entries = [c for c in store.cases if c["split"] == "train"]
    train_row = stats.output.splitlines()[1].split()
    assert train_row[0] == "train" and int(train_row[1]) == len(entries)
    assert int(train_row[4]) == sum(c["n_brain_corners"] for c in entries)
    # the tumour corners are the source grid's (a window may reach past the crop): their share is of it
    grid = sum(int(np.prod(np.subtract(c["source_shape"][-3:], PATCH) + 1)) for c in entries)
    tumour = sum(c["n_tumour_corners"] for c in entries)
    assert int(train_row[5]) == grid and int(train_row[6]) == tumour
    assert float(train_row[7]) == pytest.approx(tumour / grid, abs=5e-4) and 0 < tumour / grid < 1

    copy = tmp_path / "damaged.zarr"
    shutil.copytree(reference, copy)
    shard = copy / "labels" / "000002" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[30] ^= 0x01
    shard.write_bytes(bytes(raw))
    import zarr

    zarr.open_group(str(copy), mode="r+")[vs.case_key(vs.TUMOUR_VOXELS, 0)][0] += 1
    against = runner.invoke(cli, ["verify", str(copy), "--manifest", str(manifest), "--no-progress"])
    assert against.exit_code == 1
    assert any(
        line.startswith("labels/000002 c/0/0/0: sha256") and "BRATS_003" in line
        for line in against.output.splitlines()
    ), against.output
    bad = runner.invoke(cli, ["verify", str(copy), "--no-progress"])
    assert bad.exit_code == 1
    lines = bad.output.splitlines()
    assert any(line.startswith("labels labels/000002: chunk 0 fails its checksum") for line in lines)
    assert any(line.startswith("tumour_voxels tumour_voxels/000000: table") for line in lines)
    assert "2 difference(s)" in bad.output


def test_a_store_built_before_source_grid_corner_tables_is_refused(reference: Path, tmp_path: Path) -> None:
    old = copy_store(reference, tmp_path)
    edit_store_metadata(old, lambda meta: meta.pop("corner_table"))
    with pytest.raises(StoreError, match="rebuild it") as caught:
        open_store(old)
    assert str(old) in str(caught.value) and "\n" not in str(caught.value)
    with open_store(reference) as store:
        assert store.metadata["corner_table"] == vs.CORNER_TABLE


def test_a_resume_refuses_a_done_case_whose_label_changed(data: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    image = copy / "imagesTr" / "BRATS_003.nii.gz"
    good = image.read_bytes()
    loaded = nib.load(image)
    voxels = np.asarray(loaded.dataobj, dtype=np.float32)
    voxels[10, 10, 10, 0] = np.nan
    nib.save(nib.Nifti1Image(voxels, loaded.affine), image)
    store = tmp_path / "v.h5"
    with pytest.raises(InvalidValueError, match="BRATS_003"):  # cases 0 and 1 are done
        build_patches(copy, store, VOLUMES, workers=1)
    image.write_bytes(good)
    label = copy / "labelsTr" / "BRATS_002.nii.gz"
    original = label.read_bytes()
    flipped = bytearray(original)
    flipped[-10] ^= 0x01  # same size
    label.write_bytes(bytes(flipped))
    with pytest.raises(
        StoreMismatchError, match=re.escape(f"case BRATS_002 was built from other source data: {label}")
    ):
        build_patches(copy, store, VOLUMES, workers=1)
    label.write_bytes(original)
    assert build_patches(copy, store, VOLUMES, workers=1).resumed_cases == 2
    build_patches(copy, tmp_path / "fresh.h5", VOLUMES, workers=1)
    assert open_store(store).content_id == open_store(tmp_path / "fresh.h5").content_id
