"""NIfTI read benchmark: brainprep's decode (`brainprep.read.nifti.read_nifti_voxels`) against nibabel.

    python benchmarks/bench_nifti_read.py [--quick] [--json FILE] [--workdir DIR] [--repeats N]

Every row does what the build needs from one image file: its sha256, its header, and its voxels in the
file's dtype, unscaled (scaling is applied per patch later); the gzip stream is read to its end, so its
CRC is checked. Files are in the page cache for every row.

  brainprep decode        read_nifti_voxels with reused ReadBuffers: one read, one hash, one ISA-L inflate
                          into a reused buffer, voxels as a view of it
  nibabel + ISA-L stream  nibabel reads header and voxels from an isal.igzip.IGzipFile over the same bytes
                          (Nifti1Image.from_stream + dataobj.get_unscaled), then the stream to its end
  nibabel + ISA-L bytes   isal.igzip.decompress of the bytes, then Nifti1Image.from_bytes + get_unscaled
  nibabel (zlib)          nib.load(path).dataobj.get_unscaled() (nibabel's own gzip reader), then the
                          gzip stream to its end for the CRC, as the other rows check it

Data: synthetic 240x240x155x4 float32 MSD cases (``brainprep.synth``, as bench_build.py) and, when
``../shared/data/brats2023`` is there, the real BraTS 2023 case (4 int16 240x240x155 files). Rows run in
alternating rounds (the order rotates every round) and each counts its fastest round, so the drift of a
shared machine falls on all of them alike.

Bar: the fastest nibabel row / brainprep decode <= 1.10 (nibabel with ISA-L is "as fast" within 10%);
when it passes, nibabel can be the single decode path without costing the build its bar.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import Bar, Report, Row, base_parser, finish, require, setup_logging, synthetic_dataset

FULL = {"cases": 2, "repeats": 5}
QUICK = {"cases": 1, "repeats": 2}
REAL_CASE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "brats2023"

ROW_FAST = "brainprep decode"
ROW_STREAM = "nibabel + ISA-L stream"
ROW_BYTES = "nibabel + ISA-L bytes"
ROW_ZLIB = "nibabel (zlib)"


def _finish_stream(stream: Any) -> None:
    """Read a gzip stream to its end: its CRC and length are checked there."""
    while stream.read(1 << 22):
        pass


def readers() -> dict[str, Callable[[Path], tuple[np.ndarray, str]]]:
    """name -> reader of one file: (voxels in the file's dtype, unscaled; sha256 of the stored bytes)."""
    import nibabel as nib
    from isal import igzip

    from brainprep.read.nifti import ReadBuffers, read_nifti_voxels

    buffers = ReadBuffers()
    positions: dict[Path, int] = {}

    def fast(path: Path) -> tuple[np.ndarray, str]:
        voxels = read_nifti_voxels(path, buffers=buffers, position=positions.setdefault(path, len(positions)))
        return voxels.raw, voxels.sha256

    def stream(path: Path) -> tuple[np.ndarray, str]:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with igzip.IGzipFile(fileobj=io.BytesIO(data)) as gz:
            raw = nib.Nifti1Image.from_stream(gz).dataobj.get_unscaled()
            _finish_stream(gz)
        return raw, digest

    def whole(path: Path) -> tuple[np.ndarray, str]:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        return nib.Nifti1Image.from_bytes(igzip.decompress(data)).dataobj.get_unscaled(), digest

    def plain(path: Path) -> tuple[np.ndarray, str]:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        raw = nib.load(path).dataobj.get_unscaled()
        with gzip.open(path) as gz:
            _finish_stream(gz)
        return raw, digest

    return {ROW_FAST: fast, ROW_STREAM: stream, ROW_BYTES: whole, ROW_ZLIB: plain}


def time_rounds(
    files: list[Path], named: dict[str, Callable[[Path], tuple[np.ndarray, str]]], repeats: int
) -> dict[str, list[float]]:
    """Seconds of each reader over every file, per round; the order of the readers rotates each round."""
    names = list(named)
    first = {path: named[names[0]](path) for path in files}
    for name in names[1:]:  # every reader gives the same voxels and hash (checked once, not timed)
        for path in files:
            raw, digest = named[name](path)
            expected_raw, expected_digest = first[path]
            if digest != expected_digest or not np.array_equal(raw, expected_raw):
                raise RuntimeError(f"{name} differs from {names[0]} on {path}")
    del first
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            for path in files:
                named[name](path)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def rows_for(label: str, files: list[Path], repeats: int, cases: int) -> tuple[list[Row], dict[str, float]]:
    """One row per reader for ``files``: fastest seconds per case; and those seconds by reader."""
    seconds = time_rounds(files, readers(), repeats)
    best = {name: min(values) / cases for name, values in seconds.items()}
    rows = [
        Row(
            f"{name}, {label}",
            best[name],
            "s/case",
            f"fastest of {repeats}; median {statistics.median(values) / cases:.3f}; "
            f"{best[name] / best[ROW_FAST]:.2f}x brainprep decode",
            {"rounds_s": [round(v, 4) for v in values]},
        )
        for name, values in seconds.items()
    ]
    return rows, best


def run(args: Any) -> Report:
    require("isal.igzip")
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or sizes["repeats"]
    report = Report(
        "NIfTI read: brainprep decode vs nibabel (+ ISA-L), sha256 + header + unscaled voxels + CRC",
        settings={"cases": sizes["cases"], "repeats": repeats, "quick": args.quick},
    )
    print(report.title, flush=True)
    data = synthetic_dataset(args.workdir, sizes["cases"], fresh=args.fresh)
    sets = [("synthetic 240x240x155x4 float32", sorted((data / "imagesTr").glob("*.nii.gz")), sizes["cases"])]
    real = sorted(REAL_CASE.glob("*/*.nii.gz"))
    if real:
        sets.append(("real BraTS 2023, 4 int16 files", real, 1))
    else:
        report.notes.append(f"{REAL_CASE} is absent: the real-data rows did not run")
    for label, files, cases in sets:
        rows, best = rows_for(label, files, repeats, cases)
        report.rows.extend(rows)
        for row in rows:
            print(f"  {row.name}: {row.value:.3f} s/case ({row.note})", flush=True)
        nibabel_best = min(best[name] for name in (ROW_STREAM, ROW_BYTES, ROW_ZLIB))
        name = f"fastest nibabel / brainprep decode, {label}"
        report.bars.append(Bar(name, nibabel_best, best[ROW_FAST], "<=", 1.10))
    return report


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=0, help="alternating rounds (5; 2 with --quick)")
    args = parser.parse_args()
    setup_logging(args.verbose)
    return finish(run(args), args.json)


if __name__ == "__main__":
    sys.exit(main())
