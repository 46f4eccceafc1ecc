"""Which chunk shape for a volume store? Bytes per case and random-window read time, side by side.

Builds one Zarr volume store per candidate chunk shape (``brainprep.store.volume_schema.CHUNK_XY`` /
``CHUNK_Z`` set for the build; float16, zstd 1) from the same synthetic full-size cases, then reads the
same random 160x160x16 windows (uniform over each crop's corners, raw, through
``VolumeStore.read_window``) from each, in alternating rounds, and prints the median time per window.
A 20-patch store of the same cases gives the bytes-per-case reference of issue 12.

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

#: (name, CHUNK_XY, CHUNK_Z); an edge of 256 is a whole plane of any crop
CANDIDATES = (("64x64x16", 64, 16), ("plane x 4", 256, 4), ("plane x 8", 256, 8), ("plane x 16", 256, 16))
PATCH = (160, 160, 16)


def build(data: Path, store: Path, xy: int, z: int) -> float:
    saved = vs.CHUNK_XY, vs.CHUNK_Z
    vs.CHUNK_XY, vs.CHUNK_Z = xy, z
    try:
        params = BuildParams(store=StoreParams(kind="volumes"), split=SplitParams(val_fraction=0.0))
        started = time.perf_counter()
        build_patches(data, store, params, workers=1, overwrite=True)
        return time.perf_counter() - started
    finally:
        vs.CHUNK_XY, vs.CHUNK_Z = saved


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
    with open_store(store_path) as store:
        for case in {case for case, _ in draws}:
            store.read_window(case, draws[0][1] * 0)  # open each case's arrays once
        started = time.perf_counter()
        for case, corner in draws:
            store.read_window(case, corner, standardize=standardize)
        return (time.perf_counter() - started) / len(draws)


def patch_time(store_path: Path, n: int, seed: int) -> float:
    """Seconds per random stored patch (image + label) of the patch store, read one at a time."""
    with open_store(store_path) as store:
        slots = np.random.default_rng(seed).choice(store.patch_indices(), size=n)
        store.read_patches(slots[:1])
        started = time.perf_counter()
        for slot in slots:
            store.read_patches([slot])
        return (time.perf_counter() - started) / n


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
    for name, xy, z in CANDIDATES:
        store = work / f"v-{xy}-{z}.zarr"
        seconds = build(data, store, xy, z)
        rows[name] = {"store": store, "build": seconds / args.cases, "bytes": store_bytes(store) / args.cases}
    draws = windows(rows[CANDIDATES[0][0]]["store"], args.windows, seed=0)
    times: dict[str, list[float]] = {name: [] for name in (*rows, "standardized", "patches")}
    best = CANDIDATES[-1][0]
    for _ in range(args.rounds):
        for name, row in rows.items():
            times[name].append(read_time(row["store"], draws))
        times["standardized"].append(read_time(rows[best]["store"], draws, "patch-slice"))
        times["patches"].append(patch_time(patches, args.windows, seed=0))
    print(
        f"{args.cases} synthetic 240x240x155 cases, {args.windows} random {PATCH} windows, "
        f"{args.rounds} rounds"
    )
    print(f"20-patch store: {patch_bytes / 1e6:.2f} MB per case")
    print(f"{'chunks':<12} {'MB/case':>8} {'/patch store':>12} {'build s/case':>13} {'ms/window':>10}")
    for name, row in rows.items():
        ms = 1e3 * statistics.median(times[name])
        ratio = row["bytes"] / patch_bytes
        print(f"{name:<12} {row['bytes'] / 1e6:>8.2f} {ratio:>12.3f} {row['build']:>13.2f} {ms:>10.1f}")
    standardized, patch = (1e3 * statistics.median(times[k]) for k in ("standardized", "patches"))
    print(f"{best}, standardized (patch-slice) at read time: {standardized:.1f} ms/window")
    print(f"20-patch store, one stored patch (image + label): {patch:.1f} ms/patch")


if __name__ == "__main__":
    main()
