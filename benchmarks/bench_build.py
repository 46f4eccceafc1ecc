"""Build benchmark: seconds and bytes per case of brainprep's stores against nibabel and nnU-Net v2.

    python benchmarks/bench_build.py [--quick] [--json FILE] [--workdir DIR] [--repeats N]

Rows (the same synthetic 240x240x155x4 MSD cases, files in the page cache for every row):
  nibabel load       nib.load(image).get_fdata(dtype=float32) + the same of the label, one process
  course load        the course's load_case: np.array(nib.load(f).get_fdata()) (float64), information
  build, 1 worker    build_patches(..., workers=1) into a fresh Zarr store (runs in one process)
  build, 2 workers   build_patches(..., workers=2) into a fresh Zarr store (local worker processes)
  build HDF5, 2 w.   the same into an HDF5 store (information)
  build volumes, 1 w. the same cases into a fresh Zarr volume store (``StoreParams(kind="volumes")``, as
                     ``brainprep build-patches --kind volumes``: each case's brain crop, float16, with its
                     sampling tables), one process
  build volumes, 2 w. the same with 2 local worker processes (information: the machine's cores)
  nnU-Net, 1 proc.   nnU-Net v2's own fingerprint extraction + ``3d_fullres`` preprocessing of the same
                     cases (``nnunet_baseline.nnunet_preprocess``: ``nnUNetv2_plan_and_preprocess``'s steps
                     with ``-npfp 1 -np 1``, one process against the volume build's one worker) into a
                     fresh output folder; its planning step is timed but not counted (no per-case work).
                     Its process compresses with 4 blosc2 threads (nnU-Net's setting, kept), so it may use
                     both cores while compressing: if anything, the comparison favours nnU-Net
  store bytes/patch  bytes on disk of each store / valid patches, against raw float16 image + uint8 label
  bytes per case     bytes on disk per case of the volume store and of the 20-patch Zarr store (whole
                     stores, tables included), and of nnU-Net's ``nnUNetPlans_3d_fullres`` folder (the
                     per-case ``.b2nd`` image and label and ``.pkl`` properties; plans, fingerprint and its
                     ``gt_segmentations`` copy of the labels not counted)
  peak RSS           the largest resident set of any process of a build, sampled every 50 ms with psutil
                     over the build's process tree (the build runs in a child process so nothing else is
                     counted), cross-checked with getrusage(RUSAGE_CHILDREN).ru_maxrss

The nibabel load, the 1- and 2-worker Zarr builds and the 1- and 2-worker volume builds, the sides of the
speed bars, run in alternating rounds (load, build, build, volume build, volume build; ``--repeats`` of
them) and each counts
its fastest, so the drift of a shared machine over the run falls on all of them alike. nnU-Net's
preprocessing takes minutes: it runs once, in the middle round right after that round's volume build, and
its bar compares it with that volume build (not with the fastest). Its raw dataset (nnU-Net's MSD
conversion of the cases) is made before the rounds and cached; after the timed run its output becomes the
cached preprocessed folder the streaming benchmark's nnU-Net loader row reads
(``nnunet_baseline.nnunet_preprocessed``), so a cache is never timed and a timing is never a cache.

Builds use the product's default sampling (K = 20 patches of 160x160x16 per case), float16, zstd level 1.
Each build's seconds are measured inside the child around the ``build_patches`` call (interpreter start-up
and imports excluded; the worker pool's start-up included, it is part of every build).

Bars (the store issue's): 1-worker build / nibabel load <= 1.5 per case; 2 workers >= 1.7x faster than 1;
Zarr store bytes per float16 patch <= 40% of raw; peak memory per worker <= 1.5 GB. One worker is one
core: the inline build pins zarr's chunk encoding to one at a time, as each worker process does.
The volume store's (issue 12): bytes per case <= 0.40x the 20-patch store's and <= 0.75x nnU-Net's
folder; a 1-worker volume build <= 1.5x the nibabel load per case; nnU-Net's fingerprint + preprocessing
>= 10x the volume build's seconds per case, 1 process against 1 worker; the same ratio in CPU seconds of
the two process trees (getrusage of the children, imports included) as information.
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
    children_cpu_seconds,
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
from nnunet_baseline import adopt_preprocessed, case_data_bytes, nnunet_preprocess, nnunet_raw

# 16 cases: enough that the 2-worker pool's start-up (forked worker processes) is a small part of a build
FULL = {"cases": 16, "repeats": 5}
QUICK = {"cases": 3, "repeats": 1}
PATCHES_PER_CASE = 20  # SamplingParams' default
SAMPLE_INTERVAL_S = 0.05
# nnU-Net's -npfp/-np against the volume build's workers: 1 vs 1, the row of the nibabel bar
NNUNET_PROCESSES = 1
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
ROW_VOL1 = "build volumes Zarr, 1 worker"
ROW_VOL2 = "build volumes Zarr, 2 workers"
ROW_NNUNET = f"nnU-Net fingerprint+preprocess, {NNUNET_PROCESSES} proc."
ROW_VOL_BYTES = "volume store bytes per case"
ROW_PATCH_BYTES = "20-patch store bytes per case"
ROW_NNUNET_BYTES = "nnU-Net 3d_fullres bytes per case"

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
                  "cases": summary.cases, "skipped": summary.skipped, "bytes": summary.bytes}))
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


def bench_build_params(fmt: str, kind: str) -> Any:
    """:func:`common.build_params` (K = 20) as a ``patches`` or a ``volumes`` store."""
    params = build_params(fmt, PATCHES_PER_CASE)
    return params.replace(store=params.store.replace(kind=kind))


def timed_build(data_dir: Path, store: Path, fmt: str, workers: int, kind: str = "patches") -> dict[str, Any]:
    """Build a fresh store (``kind`` patches or volumes) in a child process; its seconds, summary and
    per-process peak RSS.

    Returns:
        ``seconds`` (inside the child), ``patches``, ``cases``, ``bytes`` (of the summary),
        ``main_peak`` (bytes, the child's own process), ``worker_peak`` (bytes, largest descendant, 0 when
        there is none), ``ru_maxrss`` (bytes, the kernel's max over the child and its reaped children).
    """
    psutil = require("psutil")
    require("brainprep.builder", "build_patches")
    remove_path(store)
    params = bench_build_params(fmt, kind)
    command = [sys.executable, "-c", CHILD, str(data_dir), str(store), params.to_json(), str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cpu_before = children_cpu_seconds()
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
    cpu_s = children_cpu_seconds() - cpu_before  # the child's whole tree, imports included
    result = json.loads(out.strip().splitlines()[-1])
    result["main_peak"] = peaks.get(child.pid, 0)
    result["worker_peak"] = max((v for pid, v in peaks.items() if pid != child.pid), default=0)
    # ru_maxrss only grows across children; report it only when this build raised it
    result["ru_maxrss"] = ru_maxrss if ru_maxrss > before * 1024 else None
    result["store_bytes"] = path_bytes(store)
    result["cpu_s"] = cpu_s
    return result


def best_build(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of several :func:`timed_build` results (peak memory: the largest over all of them)."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["main_peak"] = max(r["main_peak"] for r in runs)
    best["worker_peak"] = max(r["worker_peak"] for r in runs)
    best["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    return best


def timed_nnunet(data_dir: Path, raw: Path | BaseException, workdir: Path) -> dict[str, Any] | BaseException:
    """nnU-Net's fingerprint + preprocessing of ``raw`` into a fresh folder, and its bytes per case.

    The output then becomes the cache of ``nnunet_baseline.nnunet_preprocessed`` (for the streaming
    benchmark's loader row) unless a valid one is there. A failure is returned, not raised, so the
    rounds of the other rows go on; its row reports it.
    """
    if isinstance(raw, BaseException):
        return raw
    try:
        folder, seconds, details = nnunet_preprocess(raw, workdir, NNUNET_PROCESSES)
        size, cases = case_data_bytes(folder)
        adopt_preprocessed(folder, data_dir, workdir, raw)
    except Exception as err:  # reported by its row
        return err
    return {"seconds": seconds, "bytes": size, "cases": cases, **details}


def nnunet_row(result: dict[str, Any] | BaseException | None, same_round: dict[str, Any] | None) -> Row:
    """The row of :func:`timed_nnunet`'s ``result`` (a failure is raised for :func:`measure_row`).

    ``same_round``: the round it ran in and that round's volume build seconds, kept in the row's extra
    for the speed bar.
    """
    if result is None or same_round is None:
        raise MissingPiece("the rounds did not run")
    if isinstance(result, BaseException):
        raise result
    note = (
        f"{result['cases']} cases: fingerprint {result['fingerprint_s']:.1f} s + preprocess "
        f"{result['preprocess_s']:.1f} s (planning {result['planning_s']:.1f} s not counted); "
        f"once, round {same_round['round']}, fresh output folder; CPU {result['cpu_s']:.0f} s against "
        f"{same_round['volume_cpu_s']:.0f} s for that round's volume build (both with imports)"
    )
    extra = {
        **result,
        "volume_build_same_round_s": same_round["volume_s"],
        "volume_build_same_round_cpu_s": same_round["volume_cpu_s"],
    }
    return Row(ROW_NNUNET, result["seconds"] / result["cases"], "s/case", note, extra)


def case_bytes_row(name: str, builds: dict[str, dict[str, Any]], build: str, what: str) -> Row:
    """Bytes on disk per case of the store (or nnU-Net folder) that the row ``build`` made."""
    if build not in builds:
        raise MissingPiece(f"the row '{build}' did not run")
    result = builds[build]
    size = result.get("store_bytes", result["bytes"])
    extra = {"bytes": size, "cases": result["cases"]}
    return Row(name, size / result["cases"] / 1e6, "MB/case", what, extra)


def build_bars(report: Report, builds: dict[str, dict[str, Any]]) -> list[Bar]:
    """The bars of the measured rows (N/A where a side is missing)."""
    load, t1, t2 = report.value(ROW_LOAD), report.value(ROW_BUILD1), report.value(ROW_BUILD2)
    zarr_bytes = report.value(ROW_BYTES)
    peaks = [v for v in (report.value(ROW_PEAK1), report.value(ROW_PEAK2)) if v is not None]
    volume_bytes, nnunet = report.value(ROW_VOL_BYTES), builds.get(ROW_NNUNET)
    nnunet_s = report.value(ROW_NNUNET)
    same_round = nnunet["volume_build_same_round_s"] / nnunet["cases"] if nnunet and nnunet_s else None
    cpu = (nnunet["cpu_s"], nnunet["volume_build_same_round_cpu_s"]) if nnunet and nnunet_s else (None, None)
    return [
        Bar("build 1 worker / nibabel load", t1, load, "<=", 1.5),
        Bar("speed-up 2 workers over 1", t1, t2, ">=", 1.7),
        Bar("build 1 worker / course's nibabel load", t1, report.value(ROW_LOAD_COURSE), "<=", 1.5,
            note="information: the loading code of the course's pipeline"),
        Bar("Zarr bytes per patch / raw", zarr_bytes * 1e6 if zarr_bytes else None, RAW_PATCH_BYTES,
            "<=", 0.40),
        Bar("peak memory per worker", max(peaks) if peaks else None, None, "<=", 1.5, unit=" GB",
            note="max of the 1-worker process and the 2-worker pool's workers"),
        Bar("volume bytes/case / 20-patch store", volume_bytes, report.value(ROW_PATCH_BYTES), "<=", 0.40),
        Bar("volume bytes/case / nnU-Net's folder", volume_bytes, report.value(ROW_NNUNET_BYTES), "<=", 0.75),
        Bar("volume build 1 worker / nibabel load", report.value(ROW_VOL1), load, "<=", 1.5),
        Bar("volume build 2 workers / nibabel load", report.value(ROW_VOL2), load, "<=", 1.5,
            note="information: the build on the machine's 2 cores, per case, against a one-process load"),
        Bar(f"nnU-Net preprocessing / volume build, {NNUNET_PROCESSES} vs 1", nnunet_s, same_round, ">=", 10,
            note="the volume build of the same round"),
        Bar("nnU-Net / volume build, CPU seconds", *cpu, ">=", 10,
            note="information: whole process trees, imports included"),
    ]  # fmt: skip


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
        content = f"{result['patches']} patches" if result["patches"] else f"{result['skipped']} skipped"
        note = f"{result['cases']} cases, {content}, {result['seconds']:.1f} s" + (
            f" (runs {result['all_seconds']})" if repeats > 1 else ""
        )
        return Row(name, result["seconds"] / result["cases"], "s/case", note, result)

    def nnunet_raw_or_error() -> Path | BaseException:
        try:  # converted before the rounds (once, cached): not part of any timing
            return nnunet_raw(data(), args.workdir, fresh=args.fresh)
        except Exception as err:  # reported by the nnU-Net rows
            return err

    def side_by_side_rows() -> list[Row]:
        # The rows of the speed bars run in rounds (load, 1-worker build, 2-worker build, 1-worker volume
        # build), so the machine's drift over the benchmark falls on every side of those bars alike.
        # nnU-Net's preprocessing (minutes) runs once, in the middle round, right after that round's
        # volume build, which its bar is compared with.
        raw = nnunet_raw_or_error()
        loads, one, two, volumes, volumes2 = [], [], [], [], []
        for r in range(repeats):
            loads.append(nibabel_load_seconds(data()))
            one.append(timed_build(data(), runs_dir / "bench-1w.zarr", "zarr", 1))
            two.append(timed_build(data(), runs_dir / "bench-2w.zarr", "zarr", 2))
            volumes.append(timed_build(data(), runs_dir / "bench-vol-1w.zarr", "zarr", 1, "volumes"))
            volumes2.append(timed_build(data(), runs_dir / "bench-vol-2w.zarr", "zarr", 2, "volumes"))
            if r == repeats // 2:
                state["nnunet"] = timed_nnunet(data(), raw, args.workdir)
                state["nnunet_round"] = {
                    "round": r + 1,
                    "volume_s": volumes[-1]["seconds"],
                    "volume_cpu_s": volumes[-1]["cpu_s"],
                }
        for name in ("bench-1w.zarr", "bench-2w.zarr", "bench-vol-1w.zarr", "bench-vol-2w.zarr"):
            remove_path(runs_dir / name)
        seconds, n = min(loads, key=lambda t: t[0])
        load = Row(
            ROW_LOAD,
            seconds / n,
            "s/case",
            f"{n} cases, one process; fastest of {repeats} rounds alternating with the builds",
            {"total_s": seconds, "runs_s": [round(t, 2) for t, _ in loads]},
        )
        return [
            load,
            result_row(ROW_BUILD1, best_build(one)),
            result_row(ROW_BUILD2, best_build(two)),
            result_row(ROW_VOL1, best_build(volumes)),
            result_row(ROW_VOL2, best_build(volumes2)),
        ]

    def nnunet() -> Row:
        row = nnunet_row(state.get("nnunet"), state.get("nnunet_round"))
        builds[ROW_NNUNET] = row.extra
        return row

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
    rows += measure_rows([ROW_LOAD, ROW_BUILD1, ROW_BUILD2, ROW_VOL1, ROW_VOL2], "s/case", side_by_side_rows)
    rows.append(measure_row(ROW_NNUNET, "s/case", nnunet))
    rows.append(measure_row(ROW_LOAD_COURSE, "s/case", course_load_row))
    rows.append(measure_row(ROW_BUILD_H5, "s/case", lambda: build_row(ROW_BUILD_H5, "hdf5", 2)))
    rows.append(measure_row(ROW_BYTES, "MB/patch", lambda: bytes_row(ROW_BYTES, ROW_BUILD1)))
    rows.append(measure_row(ROW_BYTES_H5, "MB/patch", lambda: bytes_row(ROW_BYTES_H5, ROW_BUILD_H5)))
    rows.append(measure_row(ROW_PEAK1, "GB", lambda: peak_row(ROW_PEAK1, ROW_BUILD1, "main_peak")))
    rows.append(measure_row(ROW_PEAK2, "GB", lambda: peak_row(ROW_PEAK2, ROW_BUILD2, "worker_peak")))
    for name, build, what in (
        (ROW_VOL_BYTES, ROW_VOL1, "whole volume store incl. tables (float16 brain crop + uint8 label)"),
        (ROW_PATCH_BYTES, ROW_BUILD1, f"whole Zarr store of {PATCHES_PER_CASE} patches per case"),
        (ROW_NNUNET_BYTES, ROW_NNUNET, "CASE.b2nd + CASE_seg.b2nd + CASE.pkl of nnUNetPlans_3d_fullres; "
         "plans, fingerprint and gt_segmentations not counted"),
    ):  # fmt: skip
        rows.append(
            measure_row(name, "MB/case", lambda n=name, b=build, w=what: case_bytes_row(n, builds, b, w))
        )

    report.bars = build_bars(report, builds)
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
