"""Seconds per case of each build stage, in one process, on the benchmark's cached synthetic cases.

    python benchmarks/profile_build_stages.py [DATA_DIR]

DATA_DIR defaults to the 8-case dataset that ``bench_streaming.py`` caches (run it once first). The stages
are the ones ``build_patches`` runs per case: plan (read the label, sample corners, cut and pack the label
patches), read the image, cut and standardize the K image patches, write the case's Zarr shards.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from brainprep import discover_cases
from brainprep.builder.case import cut_case_images, slot_labels
from brainprep.builder.plan import plan_case
from brainprep.params import BuildParams
from brainprep.read.case import read_case_arrays
from brainprep.store import schema
from brainprep.store.zarr_store import create_zarr_store, write_case_zarr

DEFAULT_DATA = Path.home() / ".cache" / "brainprep-bench" / "synth-msd-8-seed0"


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA
    cases = discover_cases(data).cases
    params = BuildParams()
    k = params.sampling.patches_per_case
    layout = schema.StoreLayout(len(cases), k, params.sampling.patch_size)
    seconds: dict[str, float] = {}

    def timed(name, step):
        start = time.perf_counter()
        value = step()
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return value

    workdir = Path(tempfile.mkdtemp())
    store = workdir / "stages.zarr"
    try:
        create_zarr_store(store, layout, {"complete": False})
        for index, files in enumerate(cases):
            plan = timed("plan", lambda i=index, f=files: plan_case(f, i, "train", params, data))
            arrays = timed("read image", lambda f=files: read_case_arrays(f, with_label=False))
            images, _, _ = timed(
                "cut + standardize",
                lambda a=arrays, p=plan: cut_case_images(a, p.corners, params, k),
            )
            labels = slot_labels(plan.label_patches(params.sampling.patch_size), k)
            timed(
                "zarr write", lambda i=index, im=images, lb=labels: write_case_zarr(store, layout, i, im, lb)
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, total in seconds.items():
        print(f"{name:18s} {total / len(cases):.3f} s/case")
    print(f"{'total':18s} {sum(seconds.values()) / len(cases):.3f} s/case ({len(cases)} cases, {data})")


if __name__ == "__main__":
    main()
