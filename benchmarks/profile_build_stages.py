"""Seconds per case of each build stage, in one process, on the benchmark's cached synthetic cases.

    python benchmarks/profile_build_stages.py [DATA_DIR] [--kind patches|volumes] [--cases N]

DATA_DIR defaults to the 8-case dataset that ``bench_streaming.py`` caches (run it once first). The stages
are the ones ``build_patches`` runs per case, beside a nibabel load of the same files (image and label,
``get_fdata(dtype=float32)``: the reference of ``bench_build.py``'s speed bar):

- patches: plan (read the label, sample corners, cut and pack the label patches), read the image, cut and
  standardize the K image patches, write the case's Zarr shards;
- volumes: plan (read and pack the label), read the image, background, crop, cut (slice-major float32),
  tables (float16 conversion and its check, statistics, corner table, class locations), write the
  case's Zarr arrays.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from brainprep import discover_cases
from brainprep.builder.case import borrowed_buffers
from brainprep.params import BuildParams, StoreParams
from brainprep.read.case import read_case_arrays


def read_image(files: Any, buffers: Any) -> Any:
    """The image as a build worker reads it: into the worker's reused buffers (``WorkerBuffers``; fresh
    memory per case would add the kernel's page mapping, which a build does not pay)."""
    return read_case_arrays(files, with_label=False, buffers=buffers.files)


DEFAULT_DATA = Path.home() / ".cache" / "brainprep-bench" / "synth-msd-8-seed0"


class Stages:
    """Accumulated seconds per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def timed(self, name: str, step: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        value = step(*args)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return value


def patch_stages(cases: list[Any], data: Path, store: Path, stages: Stages, buffers: Any) -> None:
    from brainprep.builder.case import cut_case_images, slot_labels
    from brainprep.builder.plan import plan_case
    from brainprep.store import schema
    from brainprep.store.zarr_store import create_zarr_store, write_case_zarr

    params = BuildParams()
    k = params.sampling.patches_per_case
    layout = schema.StoreLayout(len(cases), k, params.sampling.patch_size)
    create_zarr_store(store, layout, {"complete": False})
    for index, files in enumerate(cases):
        plan = stages.timed("plan", plan_case, files, index, "train", params, data)
        arrays = stages.timed("read image", read_image, files, buffers)
        images, _, _ = stages.timed("cut + standardize", cut_case_images, arrays, plan.corners, params, k)
        labels = slot_labels(plan.label_patches(params.sampling.patch_size), k)
        stages.timed("zarr write", write_case_zarr, store, layout, index, images, labels)


def volume_stages(cases: list[Any], data: Path, store: Path, stages: Stages, buffers: Any) -> None:
    from brainprep.builder import volume_case as vc
    from brainprep.sample import case_rng
    from brainprep.store.volume_zarr import create_volume_zarr, write_volume_case_zarr
    from brainprep.volume import cut_crop

    params = BuildParams(store=StoreParams(kind="volumes"))
    create_volume_zarr(store, {"complete": False})
    for index, files in enumerate(cases):  # the steps of volume_case.write_volume_case, each timed
        plan = stages.timed("plan", vc.plan_volume_case, files, index, "train", params, data)
        arrays = stages.timed("read image", read_image, files, buffers)
        label = vc._unpacked(plan.packed_labels)
        label = np.frombuffer(label, dtype=np.uint8).reshape(arrays.shape)
        background = stages.timed("background", vc.case_background, arrays)
        size = params.sampling.patch_size
        crop = stages.timed("crop", vc.case_crop, arrays, label, size, background)
        shape = (len(arrays.channels), *crop.shape)
        memory = buffers.slice_major(0, shape, np.float32)
        cropped = stages.timed("cut", vc.cut_case_crop, arrays, crop, background, memory)
        rng = case_rng(params.seed, plan.case_id)
        n_classes = files.spec.n_classes
        label_crop = cut_crop(label, crop)
        stored = buffers.slice_major(1, shape, params.store.dtype)
        case = stages.timed(
            "tables", vc.volume_case, cropped, label_crop, crop, params, rng, n_classes, background, stored
        )
        level = params.store.compression_level
        write = write_volume_case_zarr
        stages.timed("zarr write", write, store, index, case.image, case.label, case.tables, level)


def nibabel_seconds(cases: list[Any]) -> float:
    import nibabel as nib

    started = time.perf_counter()
    for files in cases:
        for path in (*files.image_paths, files.label_path):
            nib.load(path).get_fdata(dtype=np.float32)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--kind", choices=("patches", "volumes"), default="patches")
    parser.add_argument("--cases", type=int, default=None, help="the first N cases (default: all)")
    args = parser.parse_args()
    cases = discover_cases(args.data).cases[: args.cases]
    stages = Stages()
    workdir = Path(tempfile.mkdtemp())
    try:
        run = volume_stages if args.kind == "volumes" else patch_stages
        with borrowed_buffers() as buffers:  # one worker's reused memory, as a build holds it
            run(cases, args.data, workdir / "stages.zarr", stages, buffers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load = nibabel_seconds(cases) / len(cases)
    for name, total in stages.seconds.items():
        print(f"{name:18s} {total / len(cases):.3f} s/case")
    total = sum(stages.seconds.values()) / len(cases)
    print(f"{'total':18s} {total:.3f} s/case ({len(cases)} cases, {args.kind}, {args.data})")
    print(f"{'nibabel load':18s} {load:.3f} s/case (image + label); total / load = {total / load:.2f}")


if __name__ == "__main__":
    main()
