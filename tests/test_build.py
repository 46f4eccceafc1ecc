"""The build: patches equal the standardized source, determinism across workers and schedulers,
kill -9 and resume, locks, parameter checks and bad cases. Small synthetic data (64x64x32, 32x32x8)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

import brainprep.builder.driver as driver
from brainprep import __version__
from brainprep.builder import build_patches
from brainprep.cli import main as cli
from brainprep.errors import InvalidValueError, StoreIncompleteError, StoreMismatchError
from brainprep.params import BuildParams, SamplingParams, SplitParams, StandardizeParams
from brainprep.read import discover_cases, read_case
from brainprep.sample import extract_patch
from brainprep.standardize import (
    brain_mask,
    nonzero_statistics,
    standardize_patch_slices,
    standardize_with_statistics,
)
from brainprep.store import open_store, schema
from brainprep.store.lock import DONE_MARKERS, BuildLock, BuildState
from brainprep.synth import SynthParams, write_synthetic_dataset

PATCH = (32, 32, 8)
K = 4
PARAMS = BuildParams(sampling=SamplingParams(patch_size=PATCH, patches_per_case=K), seed=11)
CLI_OPTIONS = ["--patch-size", "32", "32", "8", "--patches-per-case", str(K), "--seed", "11", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic cases; BRATS_004 has a tumour too small for any valid patch."""
    root = tmp_path_factory.mktemp("build")
    return write_synthetic_dataset(root / "data", SynthParams(n_cases=4, shape=(64, 64, 32), seed=7))


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted one-worker build with PARAMS."""
    store = tmp_path_factory.mktemp("reference") / "ref.zarr"
    build_patches(data, store, PARAMS, workers=1)
    return store


def assert_same_store(a: Path, b: Path) -> None:
    """Every array equal bit for bit, and the metadata equal apart from the build's timings."""
    with open_store(a) as left, open_store(b) as right:
        for name in (
            schema.IMAGES,
            schema.LABELS,
            *schema.PATCH_TABLE_ARRAYS,
            schema.CASE_MEAN,
            schema.CASE_STD,
        ):
            x, y = np.asarray(left._handle[name][...]), np.asarray(right._handle[name][...])
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
        # the summary holds the build's timings, so the digest of the whole metadata differs with it;
        # the content id (what the store holds) does not
        assert left.content_id is not None and left.content_id == right.content_id
        strip = ("summary", "integrity")
        assert {k: v for k, v in left.metadata.items() if k not in strip} == {
            k: v for k, v in right.metadata.items() if k not in strip
        }
        tables = left.metadata["integrity"]["tables"]
        assert tables == right.metadata["integrity"]["tables"]


def shard_bytes(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for array in (schema.IMAGES, schema.LABELS)
        for p in sorted((store / array).rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


@pytest.mark.parametrize("method", ["patch-slice", "volume-nonzero"])
def test_every_patch_equals_the_standardized_source(data: Path, tmp_path: Path, method: str) -> None:
    params = PARAMS.replace(standardize=StandardizeParams(method))
    summary = build_patches(data, tmp_path / "s.zarr", params, workers=1)
    assert summary.cases == 4 and summary.skipped == 1 and summary.patches == 3 * K
    cases = {c.case_id: c for c in discover_cases(data).cases}
    with open_store(tmp_path / "s.zarr") as store:
        table = store.table
        case_mean = np.asarray(store._handle[schema.CASE_MEAN][...])
        for entry in store.cases:
            if entry["n_patches"] == 0:
                assert np.isnan(case_mean[entry["index"]]).all()
                continue
            source = read_case(cases[entry["case_id"]])
            if method == "volume-nonzero":
                mean, std = nonzero_statistics(source.image)
                full = standardize_with_statistics(source.image, mean, std, mask=brain_mask(source.image))
                np.testing.assert_array_equal(case_mean[entry["index"]], mean.astype(np.float32))
                assert entry["mean"] == [float(v) for v in mean]
            else:
                assert np.isnan(case_mean[entry["index"]]).all() and "mean" not in entry
            for slot in range(entry["index"] * K, entry["index"] * K + entry["n_patches"]):
                corner = table.corner[slot]
                if method == "volume-nonzero":
                    expected = extract_patch(full, corner, PATCH)
                else:
                    expected = standardize_patch_slices(extract_patch(source.image, corner, PATCH))
                np.testing.assert_array_equal(store.read_image(slot), expected.astype(np.float16))
                np.testing.assert_array_equal(
                    store.read_label(slot), extract_patch(source.label, corner, PATCH)
                )


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_two_process_workers_give_the_same_bytes(
    data: Path, reference: Path, tmp_path: Path, start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from brainprep.builder import driver

    monkeypatch.setattr(driver, "_start_method", lambda: start_method)
    summary = build_patches(data, tmp_path / "two.zarr", PARAMS, workers=2)
    assert summary.workers == 2
    assert_same_store(reference, tmp_path / "two.zarr")
    assert shard_bytes(reference) == shard_bytes(tmp_path / "two.zarr")


def test_workers_are_forked_only_from_a_single_threaded_process() -> None:
    import threading

    from brainprep.builder.driver import _start_method

    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert _start_method() == "spawn"
    finally:
        release.set()
        other.join()
    if sys.platform == "linux" and threading.active_count() == 1:
        assert _start_method() == "fork"


@contextlib.contextmanager
def _local_client(n_workers: int, threads_per_worker: int) -> Iterator[Any]:
    """A dask.distributed Client of an in-process LocalCluster (skips where distributed is missing)."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=False,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_local_cluster_build_equals_local_build(data: Path, reference: Path, tmp_path: Path) -> None:
    with _local_client(n_workers=2, threads_per_worker=1) as client:
        summary = build_patches(data, tmp_path / "cluster.zarr", PARAMS, scheduler=client)
        assert summary.workers == 2
        build_patches(data, tmp_path / "cluster.h5", PARAMS, scheduler=client.scheduler.address)
    assert_same_store(reference, tmp_path / "cluster.zarr")
    assert shard_bytes(reference) == shard_bytes(tmp_path / "cluster.zarr")
    with open_store(reference) as z, open_store(tmp_path / "cluster.h5") as h:
        np.testing.assert_array_equal(np.asarray(z.images[...]), h.images[...])


def test_kill_and_resume_ends_with_the_uninterrupted_store(tmp_path: Path) -> None:
    data = write_synthetic_dataset(
        tmp_path / "data", SynthParams(n_cases=6, shape=(64, 64, 32), seed=2, small_tumour_every=0)
    )
    params = PARAMS.replace(sampling=SamplingParams(patch_size=PATCH, patches_per_case=8))
    options = [*CLI_OPTIONS[:4], "--patches-per-case", "8", "--seed", "11", "--no-progress", "--workers", "1"]
    store = tmp_path / "s.zarr"
    done = tmp_path / "s.zarr.build" / "done"
    launcher = "from brainprep.cli import main; main()"
    command = [sys.executable, "-c", launcher, "build-patches", str(data), str(store), *options]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
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

    runner = CliRunner()
    other = runner.invoke(
        cli, ["build-patches", str(data), str(store), *options[:4], "--patches-per-case", "4"]
    )
    assert other.exit_code == 1
    assert "sampling.patches_per_case (interrupted build: 8, this build: 4)" in other.output

    resumed = runner.invoke(cli, ["build-patches", str(data), str(store), *options])
    assert resumed.exit_code == 0, resumed.output
    assert f"({n_done} done before resuming)" in resumed.output
    assert not (tmp_path / "s.zarr.build").exists() and not (tmp_path / "s.zarr.lock").exists()
    build_patches(data, tmp_path / "whole.zarr", params, workers=1)
    assert_same_store(tmp_path / "whole.zarr", store)
    assert shard_bytes(tmp_path / "whole.zarr") == shard_bytes(store)


def _living_children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` and that have not exited (zombies count as exited), from /proc."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_workers_end_when_the_driver_is_killed(tmp_path: Path) -> None:
    data = write_synthetic_dataset(
        tmp_path / "data", SynthParams(n_cases=16, shape=(96, 96, 48), seed=3, small_tumour_every=0)
    )
    launcher = "from brainprep.cli import main; main()"
    options = [*CLI_OPTIONS, "--workers", "2"]
    command = [sys.executable, "-c", launcher, "build-patches", str(data), str(tmp_path / "s.zarr"), *options]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    done = tmp_path / "s.zarr.build" / "done"
    deadline = time.monotonic() + 60
    while not (done.is_dir() and any(done.glob(DONE_MARKERS))):  # workers are writing cases
        assert driver.poll() is None, f"build ended before it could be killed: {driver.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    workers = _living_children(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert len(list(done.glob(DONE_MARKERS))) < 16 and len(workers) >= 2
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "workers outlived their killed driver"


def _sigint_disposition(_: object) -> bool:
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_worker_processes_leave_ctrl_c_to_the_driver() -> None:
    from brainprep.builder.driver import Executor

    with Executor(2, None, progress=False) as executor:
        assert list(executor.map(_sigint_disposition, [0, 1, 2, 3], "probe")) == [True] * 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the driver's is untouched


@pytest.mark.skipif(sys.platform != "linux", reason="process groups")
def test_ctrl_c_of_a_parallel_build_is_one_line_and_resumable(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: only the driver answers (click's ``Aborted!``)."""
    data = write_synthetic_dataset(
        tmp_path / "data", SynthParams(n_cases=16, shape=(96, 96, 48), seed=3, small_tumour_every=0)
    )
    launcher = "from brainprep.cli import main; main()"
    store, options = tmp_path / "s.zarr", [*CLI_OPTIONS, "--workers", "2"]
    command = [sys.executable, "-c", launcher, "build-patches", str(data), str(store), *options]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    driver = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    done = tmp_path / "s.zarr.build" / "done"
    deadline = time.monotonic() + 60
    while not (done.is_dir() and any(done.glob(DONE_MARKERS))):  # workers are writing cases
        assert driver.poll() is None, f"build ended before it could be interrupted: {driver.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(driver.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    stderr = driver.communicate(timeout=60)[1].decode()
    assert driver.returncode == 1 and stderr.strip().endswith("Aborted!"), stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    resumed = CliRunner().invoke(cli, ["build-patches", str(data), str(store), *options])
    assert resumed.exit_code == 0 and "done before resuming" in resumed.output, resumed.output


def test_split_file_sets_the_split_and_is_recorded_resolved(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "splits"
    folder.mkdir()
    fixed = {"train": ["BRATS_001", "BRATS_003", "BRATS_004"], "val": ["BRATS_002"]}
    (folder / "fixed.json").write_text(json.dumps(fixed))
    monkeypatch.chdir(folder)
    params = PARAMS.replace(split=SplitParams(split_file="../splits/fixed.json"))
    build_patches(data, tmp_path / "s.zarr", params, workers=1)
    with open_store(tmp_path / "s.zarr") as store:
        assert store.params.split.split_file == str((folder / "fixed.json").resolve())  # no "..", absolute
        assert {case["case_id"]: case["split"] for case in store.cases} == {
            case_id: name for name, ids in fixed.items() for case_id in ids
        }
        val_cases = set(np.asarray(store.table.case)[store.patch_indices("val")].tolist())
        assert val_cases == {1}  # BRATS_002's patches only
    assert SplitParams.from_dict({"split_file": "rel.json"}).split_file == "rel.json"  # read back verbatim


def test_concurrent_build_is_refused(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    with BuildLock(store):
        result = CliRunner().invoke(cli, ["build-patches", str(data), str(store), *CLI_OPTIONS])
    assert result.exit_code == 1
    assert f"pid {os.getpid()}" in result.output and "being built by another build-patches" in result.output
    assert not store.exists()


def test_complete_store_is_refused_unless_overwrite(data: Path, reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(reference, store)
    runner = CliRunner()
    refused = runner.invoke(cli, ["build-patches", str(data), str(store), *CLI_OPTIONS, "--workers", "1"])
    assert refused.exit_code == 1 and "already exists and is complete" in refused.output
    again = runner.invoke(
        cli, ["build-patches", str(data), str(store), *CLI_OPTIONS, "--workers", "1", "--overwrite"]
    )
    assert again.exit_code == 0, again.output
    assert "4 cases, 12 patches, 1 skipped" in again.output
    assert_same_store(reference, store)


def test_foreign_folder_is_never_overwritten(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "mine.zarr"
    store.mkdir()
    (store / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["build-patches", str(data), str(store), *CLI_OPTIONS, "--overwrite"])
    assert result.exit_code == 1 and "not a brainprep patch store" in result.output
    assert (store / "precious.txt").read_text() == "keep me"


def test_bad_cases_stop_before_writing_or_are_recorded(data: Path, tmp_path: Path) -> None:
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    label_path = broken / "labelsTr" / "BRATS_002.nii.gz"
    label = nib.load(label_path)
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(values, label.affine, label.header), label_path)
    (broken / "imagesTr" / "BRATS_003.nii.gz").unlink()
    store = tmp_path / "s.zarr"
    runner = CliRunner()
    result = runner.invoke(cli, ["build-patches", str(broken), str(store), *CLI_OPTIONS, "--workers", "1"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if "case BRATS_00" in line]
    assert len(lines) == 2
    assert "found {7}" in lines[0] and "labelsTr/BRATS_002.nii.gz" in lines[0]
    assert "file not found" in lines[1] and "imagesTr/BRATS_003.nii.gz" in lines[1]
    assert "2 bad case(s), nothing written" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no store, lock or build state

    skipped = runner.invoke(
        cli, ["build-patches", str(broken), str(store), *CLI_OPTIONS, "--workers", "1", "--skip-bad"]
    )
    assert skipped.exit_code == 0, skipped.output
    with open_store(store) as opened:
        by_id = {c["case_id"]: c for c in opened.cases}
        for case_id, problem in (("BRATS_002", "found {7}"), ("BRATS_003", "file not found")):
            case = by_id[case_id]
            assert case["n_patches"] == 0 and case["skip_reason"].startswith("bad case: ")
            assert problem in case["skip_reason"]
            assert not opened.table.valid[case["index"] * K : (case["index"] + 1) * K].any()
        assert by_id["BRATS_001"]["n_patches"] == K and opened.metadata["summary"]["skipped"] == 3


def test_a_duplicate_case_id_is_refused_naming_both_files(data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "imagesTs").mkdir()
    shutil.copy(copy / "imagesTr" / "BRATS_002.nii.gz", copy / "imagesTs")  # one id, train and test
    result = CliRunner().invoke(cli, ["build-patches", str(copy), str(tmp_path / "s.zarr"), *CLI_OPTIONS])
    assert result.exit_code == 1 and "duplicate case id 'BRATS_002'" in result.output
    assert (
        f"{copy / 'imagesTr' / 'BRATS_002.nii.gz'} and {copy / 'imagesTs' / 'BRATS_002.nii.gz'}"
        in result.output
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written


def test_case_table_records_the_hash_of_every_source_file(data: Path, reference: Path) -> None:
    # Images are hashed by the write stage from the bytes it reads, labels by the plan: every case
    # (with or without patches) still records every file, as sha256 of its stored bytes.
    import hashlib

    cases = {c.case_id: c for c in discover_cases(data).cases}
    with open_store(reference) as store:
        for entry in store.cases:
            files = cases[entry["case_id"]]
            expected = [
                {
                    "path": p.relative_to(data).as_posix(),
                    "size": p.stat().st_size,
                    "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                }
                for p in files.all_paths
            ]
            assert entry["files"] == expected


@pytest.mark.parametrize("method", ["patch-slice", "volume-nonzero"])
def test_fast_cut_equals_cut_of_the_plain_reader(data: Path, method: str) -> None:
    from brainprep.builder.case import cut_case_images, cut_image_patches
    from brainprep.read.case import read_case_arrays

    params = PARAMS.replace(standardize=StandardizeParams(method))
    files = discover_cases(data).cases[0]
    corners = np.array([[0, 0, 0], [10, 20, 5], [32, 32, 24]], dtype=np.int32)
    plain = read_case(files)
    fast = read_case_arrays(files)
    expected = cut_image_patches(plain.image, corners, params, K)
    got = cut_case_images(fast, corners, params, K)
    for x, y in zip(got, expected, strict=True):
        if y is None:
            assert x is None
        else:
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert np.count_nonzero(got[0][: len(corners)]) > 0 and not got[0][len(corners) :].any()


def test_plan_carries_the_label_patches_at_its_corners(data: Path) -> None:
    from brainprep.builder.plan import plan_case

    files = discover_cases(data).cases[0]
    plan = plan_case(files, 0, "train", PARAMS, data)
    label = read_case(files).label
    patches = plan.label_patches(PATCH)
    assert plan.n_patches > 0 and patches.shape == (plan.n_patches, *PATCH)
    assert len(plan.packed_labels) < patches.nbytes / 4
    for corner, patch, fraction in zip(plan.corners, patches, plan.tumour_fraction, strict=True):
        np.testing.assert_array_equal(patch, extract_patch(label, corner, PATCH))
        assert fraction == np.float32(np.count_nonzero(patch) / patch.size)


def test_the_builder_package_is_not_named_like_a_build_output_folder() -> None:
    """An unanchored ``build/`` in a .gitignore template must not drop the package from commits."""
    import fnmatch
    import importlib

    root = Path(__file__).resolve().parents[1]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "--stdin"],
        input="brainprep/builder/driver.py\n",
        text=True,
        cwd=root,
        capture_output=True,
    )
    assert not (root / "brainprep" / "build").is_dir()
    assert ignored.returncode == 1  # not ignored by the project's own .gitignore
    template = ["build/", "dist/", "*.egg-info/", "__pycache__/"]  # github/gitignore Python.gitignore
    parts = Path("brainprep/builder/driver.py").parts[:-1]
    assert not any(fnmatch.fnmatch(part + "/", pattern) for part in parts for pattern in template)
    with pytest.warns(DeprecationWarning, match="brainprep.builder"):
        import brainprep.build

        importlib.reload(brainprep.build)
    assert brainprep.build.build_patches is build_patches


# -- resuming only what is still true; no task outlives the build ---------------------------------------
class _Killed(Exception):
    """Stands for a kill -9 of the build between a case's data and its done marker."""


def interrupt_before_marking(monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    """Make the build stop when case ``index`` is written, before its done marker (one worker: the cases
    before it are done, the ones after it not started)."""
    real = BuildState.mark_done

    def mark_done(self: BuildState, i: int, record: dict) -> None:
        if i == index:
            raise _Killed(f"killed before marking case {i} done")
        real(self, i, record)

    monkeypatch.setattr(BuildState, "mark_done", mark_done)


def assert_same_content(a: Path, b: Path) -> None:
    """The same patches and tables (content id) and shard bytes, from data that may lie elsewhere."""
    with open_store(a) as left, open_store(b) as right:
        assert left.content_id is not None and left.content_id == right.content_id
    assert shard_bytes(a) == shard_bytes(b)


def interrupted_build(data: Path, store: Path, params: BuildParams, index: int, **options: object) -> None:
    with pytest.MonkeyPatch.context() as patch:
        interrupt_before_marking(patch, index)
        with pytest.raises(_Killed):
            build_patches(data, store, params, workers=1, **options)
    assert (store.parent / f"{store.name}.build" / "done" / f"{index - 1:06d}.json").is_file()


def test_a_resume_refuses_a_done_case_whose_source_changed(
    data: Path, reference: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    store = tmp_path / "s.zarr"
    interrupted_build(copy, store, PARAMS, index=2)
    image = copy / "imagesTr" / "BRATS_002.nii.gz"  # case 1: done
    original = image.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF  # same size: only the hash can tell
    image.write_bytes(bytes(flipped))
    with pytest.raises(StoreMismatchError) as refused:
        build_patches(copy, store, PARAMS, workers=1)
    message = str(refused.value)
    assert "\n" not in message
    assert f"case BRATS_002 was built from other source data: {image} has other bytes" in message
    label = copy / "labelsTr" / "BRATS_001.nii.gz"  # case 0: done, and the first one checked
    label.write_bytes(label.read_bytes() + b"\0")
    with pytest.raises(StoreMismatchError, match=re.escape(f"{label} has {label.stat().st_size} bytes")):
        build_patches(copy, store, PARAMS, workers=1)
    label.write_bytes(label.read_bytes()[:-1])
    image.write_bytes(original)
    summary = build_patches(copy, store, PARAMS, workers=1)
    assert summary.resumed_cases == 2
    assert_same_content(reference, store)


def test_a_resume_does_a_bad_case_again_once_fixed(data: Path, reference: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    image = copy / "imagesTr" / "BRATS_002.nii.gz"
    aside = tmp_path / "BRATS_002.nii.gz"
    image.rename(aside)
    store = tmp_path / "s.zarr"
    interrupted_build(copy, store, PARAMS, index=2, skip_bad=True)  # case 1 recorded bad
    aside.rename(image)
    summary = build_patches(copy, store, PARAMS, workers=1, skip_bad=True)
    assert summary.resumed_cases == 1 and summary.skipped == 1  # BRATS_004: tumour too small
    assert_same_content(reference, store)


def test_hdf5_never_seals_the_stale_part_of_a_case_now_bad(data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    store = tmp_path / "s.h5"
    interrupted_build(copy, store, PARAMS, index=1)  # case 1's part is staged, its marker not written
    assert BuildState(store).part_path(1).is_file()
    (copy / "imagesTr" / "BRATS_002.nii.gz").unlink()
    build_patches(copy, store, PARAMS, workers=1, skip_bad=True)
    build_patches(copy, tmp_path / "fresh.h5", PARAMS, workers=1, skip_bad=True)
    with open_store(store) as resumed, open_store(tmp_path / "fresh.h5") as fresh:
        assert resumed.cases[1]["skip_reason"].startswith("bad case: ")
        np.testing.assert_array_equal(resumed.images[...], fresh.images[...])
        assert not resumed.images[K : 2 * K].any()


def test_a_resume_by_another_version_is_refused(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(driver, "__version__", "0.0.1")
        interrupted_build(data, store, PARAMS, index=1)
    with pytest.raises(StoreMismatchError) as refused:
        build_patches(data, store, PARAMS, workers=1)
    assert str(refused.value) == (
        f"{store} holds an interrupted build started by brainprep 0.0.1, and this is brainprep "
        f"{__version__}; resume it with the version that started it, or pass --overwrite to build it "
        "again with this one"
    )


@pytest.mark.parametrize("scheduler", ["threads", "distributed"])
def test_no_case_is_written_after_a_failed_build_returns(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheduler: str
) -> None:
    """A case fails while others are still being written: the build raises the case's own error, and
    only once the others have ended, so nothing writes into the store after its lock is released."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    path = copy / "imagesTr" / "BRATS_001.nii.gz"
    image = nib.load(path)
    voxels = np.asarray(image.dataobj, dtype=np.float32)
    voxels[10, 10, 10, 0] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), path)
    real, started = driver.write_case, tmp_path / "started"
    started.mkdir()

    def slow_good_case(task):  # big cases: still being written when case 0 fails
        if task.plan.index != 0:
            (started / str(task.plan.index)).touch()
            time.sleep(1.0)
        return real(task)

    monkeypatch.setattr(driver, "write_case", slow_good_case)
    store = tmp_path / "s.zarr"

    def assert_every_started_case_ended() -> None:
        # the tasks run in an order of dask's: whichever good ones started, none may still run
        indices = sorted(int(p.name) for p in started.iterdir())
        assert indices, "no good case ran beside the bad one"
        for index in indices:
            assert BuildState(store).marker_path(index).is_file(), index
        assert not (tmp_path / "s.zarr.lock").exists()

    error = "NaN/Inf voxels in channel FLAIR in case BRATS_001"
    if scheduler == "threads":
        with pytest.raises(InvalidValueError, match=error):
            build_patches(copy, store, PARAMS, workers=2, scheduler="threads")
        assert_every_started_case_ended()
        return
    with _local_client(n_workers=1, threads_per_worker=2) as client:
        with pytest.raises(InvalidValueError, match=error):
            build_patches(copy, store, PARAMS, scheduler=client)
        assert_every_started_case_ended()


def test_a_scheduler_address_alone_builds(data: Path, reference: Path, tmp_path: Path) -> None:
    """What ``--scheduler tcp://...`` does: no Client of this process to fall back on."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        dashboard_address=None,
        protocol="tcp",  # an address as the CLI gets one: tcp://127.0.0.1:PORT
        host="127.0.0.1",
    ) as cluster:
        with pytest.raises(ValueError, match="No clients found"):
            distributed.default_client()
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        summary = build_patches(data, tmp_path / "s.zarr", PARAMS, scheduler=cluster.scheduler_address)
    assert summary.workers == 2
    assert_same_store(reference, tmp_path / "s.zarr")
