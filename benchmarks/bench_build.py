"""Build benchmark: seconds per case of ``build_patches`` against loading the same files with nibabel.

    python benchmarks/bench_build.py [--quick] [--json FILE] [--workdir DIR] [--repeats N]

Rows (the same synthetic 240x240x155x4 MSD cases, files in the page cache for every row):
  nibabel load       nib.load(image).get_fdata(dtype=float32) + the same of the label, one process
  course load        the course's load_case: np.array(nib.load(f).get_fdata()) (float64), information
  build, 1 worker    build_patches(..., workers=1) into a fresh Zarr store (runs in one process)
  build, 2 workers   build_patches(..., workers=2) into a fresh Zarr store (local worker processes)
  build HDF5, 2 w.   the same into an HDF5 store (information)
  store bytes/patch  bytes on disk of each store / valid patches, against raw float16 image + uint8 label
  peak RSS           the largest resident set of any process of a build, sampled every 50 ms with psutil
                     over the build's process tree (the build runs in a child process so nothing else is
                     counted), cross-checked with getrusage(RUSAGE_CHILDREN).ru_maxrss

The nibabel load and the 1- and 2-worker Zarr builds, the sides of the two speed bars, run in alternating
rounds (load, build, build; ``--repeats`` of them) and each counts its fastest, so the drift of a shared
machine over the run falls on all three alike.

Builds use the product's default sampling (K = 20 patches of 160x160x16 per case), float16, zstd level 1.
Each build's seconds are measured inside the child around the ``build_patches`` call (interpreter start-up
and imports excluded; the worker pool's start-up included, it is part of every build).

Bars (the store issue's): 1-worker build / nibabel load <= 1.5 per case; 2 workers >= 1.7x faster than 1;
Zarr store bytes per float16 patch <= 40% of raw; peak memory per worker <= 1.5 GB. One worker is one
core: the inline build pins zarr's chunk encoding to one at a time, as each worker process does.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    N_CHANNELS,
    PATCH_SIZE,
    Bar,
    MissingPiece,
    Report,
    Row,
    base_parser,
    build_params,
    case_files,
    finish,
    measure_row,
    measure_rows,
    path_bytes,
    remove_path,
    require,
    setup_logging,
    store_suffix,
    synthetic_dataset,
)

# 16 cases: enough that the 2-worker pool's start-up (forked worker processes) is a small part of a build
FULL = {"cases": 16, "repeats": 5}
QUICK = {"cases": 3, "repeats": 1}
PATCHES_PER_CASE = 20  # SamplingParams' default
SAMPLE_INTERVAL_S = 0.05
GB = 1e9

ROW_LOAD = "nibabel load (image + label)"
ROW_LOAD_COURSE = "nibabel load, course code (float64)"
ROW_BUILD1 = "build Zarr, 1 worker"
ROW_BUILD2 = "build Zarr, 2 workers"
ROW_BUILD_H5 = "build HDF5, 2 workers"
ROW_BYTES = "Zarr bytes per patch"
ROW_BYTES_H5 = "HDF5 bytes per patch"
ROW_PEAK1 = "peak RSS, 1-worker build"
ROW_PEAK2 = "peak RSS per worker, 2 workers"

RAW_PATCH_BYTES = N_CHANNELS * int(np.prod(PATCH_SIZE)) * 2 + int(np.prod(PATCH_SIZE))

# The child process: build, then print one JSON line with its own timing (imports excluded).
CHILD = """
import json, sys, time
from pathlib import Path
from brainprep.builder import build_patches
from brainprep.params import BuildParams
params = BuildParams.from_dict(json.loads(sys.argv[3]))
started = time.perf_counter()
data_dir, store, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[4])
summary = build_patches(data_dir, store, params, workers=workers, progress=False)
print(json.dumps({"seconds": time.perf_counter() - started, "patches": summary.patches,
                  "cases": summary.cases, "bytes": summary.bytes}))
"""


def nibabel_load_seconds(data_dir: Path, course: bool = False) -> tuple[float, int]:
    """Seconds to load every case's image and label with nibabel alone; (total, cases).

    float32 ``get_fdata`` (the fastest plain nibabel read), or with ``course`` the course's ``load_case``:
    ``np.array(nib.load(path).get_fdata())`` (float64, plus a copy).
    """
    import nibabel as nib

    cases = case_files(data_dir)
    for _, image, label in cases:  # warm the page cache, as the builds find it
        image.read_bytes()
        label.read_bytes()
    started = time.perf_counter()
    for _, image, label in cases:
        if course:
            np.array(nib.load(image).get_fdata())
            np.array(nib.load(label).get_fdata())
        else:
            nib.load(image).get_fdata(dtype=np.float32)
            nib.load(label).get_fdata(dtype=np.float32)
    return time.perf_counter() - started, len(cases)


def _tree_rss(process: Any, peaks: dict[int, int]) -> None:
    """Record the resident set of ``process`` and its descendants into ``peaks`` (pid -> max bytes)."""
    psutil = require("psutil")
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return
    for member in members:
        try:
            rss = member.memory_info().rss
        except psutil.Error:
            continue
        peaks[member.pid] = max(peaks.get(member.pid, 0), rss)


def timed_build(data_dir: Path, store: Path, fmt: str, workers: int) -> dict[str, Any]:
    """Build a fresh store in a child process; its seconds, summary and per-process peak RSS.

    Returns:
        ``seconds`` (inside the child), ``patches``, ``cases``, ``bytes`` (of the summary),
        ``main_peak`` (bytes, the child's own process), ``worker_peak`` (bytes, largest descendant, 0 when
        there is none), ``ru_maxrss`` (bytes, the kernel's max over the child and its reaped children).
    """
    psutil = require("psutil")
    require("brainprep.builder", "build_patches")
    remove_path(store)
    params = build_params(fmt, PATCHES_PER_CASE)
    command = [sys.executable, "-c", CHILD, str(data_dir), str(store), params.to_json(), str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peaks: dict[int, int] = {}
    while child.poll() is None:
        _tree_rss(process, peaks)
        time.sleep(SAMPLE_INTERVAL_S)
    out, err = child.communicate()
    if child.returncode != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit code {child.returncode}"
        raise RuntimeError(f"build of {store.name} with {workers} worker(s) failed: {last}")
    ru_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    result = json.loads(out.strip().splitlines()[-1])
    result["main_peak"] = peaks.get(child.pid, 0)
    result["worker_peak"] = max((v for pid, v in peaks.items() if pid != child.pid), default=0)
    # ru_maxrss only grows across children; report it only when this build raised it
    result["ru_maxrss"] = ru_maxrss if ru_maxrss > before * 1024 else None
    result["store_bytes"] = path_bytes(store)
    return result


def best_build(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of several :func:`timed_build` results (peak memory: the largest over all of them)."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["main_peak"] = max(r["main_peak"] for r in runs)
    best["worker_peak"] = max(r["worker_peak"] for r in runs)
    best["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    return best


def run(args: Any) -> Report:
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or sizes["repeats"]
    report = Report(
        "Build: seconds per 240x240x155x4 case, store size and memory",
        settings={
            "cases": sizes["cases"],
            "patches_per_case": PATCHES_PER_CASE,
            "patch": "x".join(map(str, PATCH_SIZE)),
            "dtype": "float16",
            "repeats": repeats,
            "quick": args.quick,
        },
    )
    print(report.title, flush=True)
    runs_dir = args.workdir / "build-runs"
    builds: dict[str, dict[str, Any]] = {}
    state: dict[str, Any] = {}

    def data() -> Path:
        if "data" not in state:
            state["data"] = synthetic_dataset(args.workdir, sizes["cases"], fresh=args.fresh)
        return state["data"]

    def result_row(name: str, result: dict[str, Any]) -> Row:
        builds[name] = result
        note = f"{result['cases']} cases, {result['patches']} patches, {result['seconds']:.1f} s" + (
            f" (runs {result['all_seconds']})" if repeats > 1 else ""
        )
        return Row(name, result["seconds"] / result["cases"], "s/case", note, result)

    def side_by_side_rows() -> list[Row]:
        # The three rows of the two speed bars run in rounds (load, 1-worker build, 2-worker build), so the
        # machine's drift over the benchmark falls on every side of those bars alike.
        loads, one, two = [], [], []
        for _ in range(repeats):
            loads.append(nibabel_load_seconds(data()))
            one.append(timed_build(data(), runs_dir / "bench-1w.zarr", "zarr", 1))
            two.append(timed_build(data(), runs_dir / "bench-2w.zarr", "zarr", 2))
        remove_path(runs_dir / "bench-1w.zarr")
        remove_path(runs_dir / "bench-2w.zarr")
        seconds, n = min(loads, key=lambda t: t[0])
        load = Row(
            ROW_LOAD,
            seconds / n,
            "s/case",
            f"{n} cases, one process; fastest of {repeats} rounds alternating with the builds",
            {"total_s": seconds, "runs_s": [round(t, 2) for t, _ in loads]},
        )
        return [load, result_row(ROW_BUILD1, best_build(one)), result_row(ROW_BUILD2, best_build(two))]

    def course_load_row() -> Row:
        seconds, n = min(
            (nibabel_load_seconds(data(), course=True) for _ in range(repeats)), key=lambda t: t[0]
        )
        return Row(
            ROW_LOAD_COURSE,
            seconds / n,
            "s/case",
            "the course's load_case, one process",
            {"total_s": seconds},
        )

    def build_row(name: str, fmt: str, workers: int) -> Row:
        store = runs_dir / f"bench-{workers}w{store_suffix(fmt)}"
        result = best_build([timed_build(data(), store, fmt, workers) for _ in range(repeats)])
        remove_path(store)
        return result_row(name, result)

    def bytes_row(name: str, build: str) -> Row:
        if build not in builds:
            raise MissingPiece(f"the row '{build}' did not run")
        result = builds[build]
        per_patch = result["store_bytes"] / max(result["patches"], 1)
        return Row(
            name,
            per_patch / 1e6,
            "MB/patch",
            f"{per_patch / RAW_PATCH_BYTES:.1%} of raw {RAW_PATCH_BYTES / 1e6:.2f} MB "
            "(4x160x160x16 float16 + uint8 labels); whole store incl. tables",
            {"store_bytes": result["store_bytes"], "raw_patch_bytes": RAW_PATCH_BYTES},
        )

    def peak_row(name: str, build: str, key: str) -> Row:
        if build not in builds:
            raise MissingPiece(f"the row '{build}' did not run")
        result = builds[build]
        note = "the build's own process" if key == "main_peak" else "largest worker process"
        extra = {"main_peak_gb": result["main_peak"] / GB, "worker_peak_gb": result["worker_peak"] / GB}
        if result.get("ru_maxrss"):
            extra["ru_maxrss_gb"] = result["ru_maxrss"] / GB
            note += f"; getrusage max {result['ru_maxrss'] / GB:.2f} GB"
        return Row(name, result[key] / GB, "GB", note, extra)

    rows = report.rows
    rows += measure_rows([ROW_LOAD, ROW_BUILD1, ROW_BUILD2], "s/case", side_by_side_rows)
    rows.append(measure_row(ROW_LOAD_COURSE, "s/case", course_load_row))
    rows.append(measure_row(ROW_BUILD_H5, "s/case", lambda: build_row(ROW_BUILD_H5, "hdf5", 2)))
    rows.append(measure_row(ROW_BYTES, "MB/patch", lambda: bytes_row(ROW_BYTES, ROW_BUILD1)))
    rows.append(measure_row(ROW_BYTES_H5, "MB/patch", lambda: bytes_row(ROW_BYTES_H5, ROW_BUILD_H5)))
    rows.append(measure_row(ROW_PEAK1, "GB", lambda: peak_row(ROW_PEAK1, ROW_BUILD1, "main_peak")))
    rows.append(measure_row(ROW_PEAK2, "GB", lambda: peak_row(ROW_PEAK2, ROW_BUILD2, "worker_peak")))

    load, t1, t2 = report.value(ROW_LOAD), report.value(ROW_BUILD1), report.value(ROW_BUILD2)
    zarr_bytes = report.value(ROW_BYTES)
    peaks = [v for v in (report.value(ROW_PEAK1), report.value(ROW_PEAK2)) if v is not None]
    report.bars = [
        Bar("build 1 worker / nibabel load", t1, load, "<=", 1.5),
        Bar("speed-up 2 workers over 1", t1, t2, ">=", 1.7),
        Bar("build 1 worker / course's nibabel load", t1, report.value(ROW_LOAD_COURSE), "<=", 1.5,
            note="information: the loading code of the course's pipeline"),
        Bar("Zarr bytes per patch / raw", zarr_bytes * 1e6 if zarr_bytes else None, RAW_PATCH_BYTES,
            "<=", 0.40),
        Bar("peak memory per worker", max(peaks) if peaks else None, None, "<=", 1.5, unit=" GB",
            note="max of the 1-worker process and the 2-worker pool's workers"),
    ]  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per row, the fastest counts (default 5, quick 1)"
    )
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return finish(run(args), args.json)


if __name__ == "__main__":
    sys.exit(main())
