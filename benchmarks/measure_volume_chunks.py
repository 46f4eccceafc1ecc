"""Which chunks and codec for a volume store? Bytes and build time per case, window read time, side by side.

Builds one Zarr volume store per candidate (``brainprep.store.volume_schema.CHUNK_XY`` / ``CHUNK_Z`` /
``BLOSC_CNAME`` / ``BLOSC_SHUFFLE`` and the compression level set for the build; float16) from the same
synthetic full-size cases, then reads the same random 160x160x16 windows (uniform over each crop's
corners) from each, in alternating rounds, into one reused slice-major window: raw, as the training loader
reads them (the loop standardizes on its device), and through ``VolumeStore.read_window(..., "patch-
slice", out=...)``'s exact float64 standardization (the library API's). It prints the median time per
window beside one stored patch of a 20-patch store of the same cases (its bytes per case are issue 12's
reference too). One thread; read times are that thread's CPU seconds (``time.thread_time``), steadier than
wall seconds on a shared machine.

    python benchmarks/measure_volume_chunks.py [--cases 2] [--windows 40] [--rounds 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from brainprep.builder import build_patches
from brainprep.params import BuildParams, SamplingParams, SplitParams, StoreParams
from brainprep.store import open_store
from brainprep.store import volume_schema as vs
from brainprep.store.zarr_store import store_bytes
from brainprep.synth import SynthParams, write_synthetic_dataset

#: (name, CHUNK_XY, CHUNK_Z, Blosc compressor, level, shuffle); an edge of 256 is a whole plane of any crop
CANDIDATES = (
    ("plane x 8, zstd 1", 256, 8, "zstd", 1, "shuffle"),
    ("plane x 8, lz4hc 3", 256, 8, "lz4hc", 3, "shuffle"),
    ("plane x 8, lz4hc 3 bit", 256, 8, "lz4hc", 3, "bitshuffle"),
    ("plane x 4, lz4hc 3", 256, 4, "lz4hc", 3, "shuffle"),
    ("plane x 4, lz4hc 3 bit", 256, 4, "lz4hc", 3, "bitshuffle"),
    ("plane x 2, lz4hc 3 bit", 256, 2, "lz4hc", 3, "bitshuffle"),
)
PATCH = (160, 160, 16)


def build(data: Path, store: Path, xy: int, z: int, cname: str, level: int, shuffle: str) -> float:
    saved = vs.CHUNK_XY, vs.CHUNK_Z, vs.BLOSC_CNAME, vs.BLOSC_SHUFFLE
    vs.CHUNK_XY, vs.CHUNK_Z, vs.BLOSC_CNAME, vs.BLOSC_SHUFFLE = xy, z, cname, shuffle
    try:
        params = BuildParams(
            store=StoreParams(kind="volumes", compression_level=level), split=SplitParams(val_fraction=0.0)
        )
        started = time.perf_counter()
        build_patches(data, store, params, workers=1, overwrite=True)
        return time.perf_counter() - started
    finally:
        vs.CHUNK_XY, vs.CHUNK_Z, vs.BLOSC_CNAME, vs.BLOSC_SHUFFLE = saved


def windows(store_path: Path, n: int, seed: int) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    with open_store(store_path) as store:
        shapes = {int(i): np.array(store.crop(int(i)).shape) for i in store.case_indices()}
    cases = sorted(shapes)
    out = []
    for _ in range(n):
        case = cases[int(rng.integers(len(cases)))]
        out.append((case, rng.integers(0, shapes[case] - np.array(PATCH) + 1)))
    return out


def read_time(store_path: Path, draws: list[tuple[int, np.ndarray]], standardize: str | None = None) -> float:
    """Seconds per window, read into one reused slice-major window (raw: as the training loader does)."""
    with open_store(store_path) as store:
        for case in {case for case, _ in draws}:
            store.read_window(case, draws[0][1] * 0)  # open each case's arrays once
        dtype = np.float16 if standardize else store.params.store.dtype
        out = (vs.slice_major((4, *PATCH), dtype), vs.slice_major(PATCH, np.uint8))
        started = time.thread_time()
        for case, corner in draws:
            store.read_window(case, corner, standardize=standardize, out=out)
        return (time.thread_time() - started) / len(draws)


def patch_time(store_path: Path, n: int, seed: int) -> float:
    """Seconds per random stored patch (image + label) of the patch store, read one at a time."""
    with open_store(store_path) as store:
        slots = np.random.default_rng(seed).choice(store.patch_indices(), size=n)
        store.read_patches(slots[:1])
        started = time.thread_time()
        for slot in slots:
            store.read_patches([slot])
        return (time.thread_time() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="volume-chunks-"))
    data = work / "data"
    if not data.is_dir():
        write_synthetic_dataset(data, SynthParams(n_cases=args.cases, seed=0, small_tumour_every=0))
    patches = work / "patches.zarr"
    if not patches.exists():
        build_patches(data, patches, BuildParams(sampling=SamplingParams(patch_size=PATCH)), workers=1)
    patch_bytes = store_bytes(patches) / args.cases
    rows = {}
    for name, xy, z, cname, level, shuffle in CANDIDATES:
        store = work / f"v-{xy}-{z}-{cname}{level}-{shuffle}.zarr"
        seconds = build(data, store, xy, z, cname, level, shuffle)
        rows[name] = {"store": store, "build": seconds / args.cases, "bytes": store_bytes(store) / args.cases}
    draws = windows(rows[CANDIDATES[0][0]]["store"], args.windows, seed=0)
    times: dict[str, list[float]] = {k: [] for k in ("patches", *rows, *(f"{n} raw" for n in rows))}
    for _ in range(args.rounds):
        times["patches"].append(patch_time(patches, args.windows, seed=0))
        for name, row in rows.items():
            times[name].append(read_time(row["store"], draws, "patch-slice"))
            times[f"{name} raw"].append(read_time(row["store"], draws))
    print(
        f"{args.cases} synthetic 240x240x155 cases, {args.windows} random {PATCH} windows, "
        f"{args.rounds} rounds"
    )
    patch = statistics.median(times["patches"])
    print(f"20-patch store: {patch_bytes / 1e6:.2f} MB per case, {1e3 * patch:.1f} ms per stored patch")
    print(
        f"{'candidate':<24} {'MB/case':>8} {'/patches':>9} {'build s/case':>13} {'ms raw':>7} "
        f"{'ms standardized':>16} {'patch ms / window ms':>21}"
    )
    for name, row in rows.items():
        ms, raw = (1e3 * statistics.median(times[k]) for k in (name, f"{name} raw"))
        print(
            f"{name:<24} {row['bytes'] / 1e6:>8.2f} {row['bytes'] / patch_bytes:>9.3f} {row['build']:>13.2f} "
            f"{raw:>7.1f} {ms:>16.1f} {1e3 * patch / ms:>21.2f}"
        )


if __name__ == "__main__":
    main()
