"""nnU-Net v2 as a baseline: its raw layout, its preprocessing (timed) and its training data loader.

Three pieces the benchmarks import (nnunetv2 2.8.1 of the ``bench`` extra):

- :func:`nnunet_raw`: the benchmark's synthetic MSD cases converted to nnU-Net v2's raw layout with
  nnU-Net's own MSD conversion (``nnunetv2/dataset_conversion/convert_MSD_dataset.py``: its
  ``split_4d_nifti`` per image, labels copied, ``dataset.json`` rewritten as it rewrites it), written once
  under ``WORKDIR/nnunet/<data folder>/raw`` and reused while the data marker is unchanged.
- :func:`nnunet_preprocess`: fingerprint extraction, planning and ``3d_fullres`` preprocessing, the three
  steps of ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres -npfp N -np N`` (its entry point calls the
  same three functions of ``plan_and_preprocess_api``), in a child process whose environment points
  ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` into the work folder. Every call writes a
  fresh output folder, so its seconds are always those of a full preprocessing; seconds are measured inside
  the child around each step (interpreter start-up and imports excluded, nnU-Net's spawned worker pools
  included, as a brainprep build's worker pool is included in its seconds).
- :func:`nnunet_preprocessed`: the cached output for readers (the loader row): a preprocessing kept under
  ``WORKDIR/nnunet/<data folder>/preprocessed`` with a marker, made once (or adopted from a timed run
  with :func:`adopt_preprocessed`) and reused; never used for a timing.
- :func:`nnunet_loader_rate`: patches/s of nnU-Net's ``nnUNetDataLoader`` over its blosc2 data
  (``nnUNetDatasetBlosc2``) in worker processes, wrapped as its trainer wraps it
  (``nnUNetTrainer.get_dataloaders``: ``NonDetMultiThreadedAugmenter(data_loader=dl_tr, transform=None,
  num_processes=..., num_cached=max(6, n // 2), seeds=None, wait_time=0.002)``), without augmentation.

``python benchmarks/nnunet_baseline.py [--cases N] [--processes N]`` is a smoke run of all three on the
benchmark's cached synthetic cases.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from common import (
    PATCH_SIZE,
    MissingPiece,
    case_files,
    children_cpu_seconds,
    data_fingerprint,
    path_bytes,
    remove_path,
    require,
    time_stream,
    touch,
)

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID:03d}_BRATSsynth"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
#: nnUNetTrainer's default share of each batch forced onto foreground (``oversample_foreground_percent``)
OVERSAMPLE_FOREGROUND = 0.33
MARKER = ".bench-complete.json"

# The child: nnUNetv2_plan_and_preprocess's three steps, each timed, then one JSON line.
CHILD = """
import json, sys, time
from nnunetv2.experiment_planning import plan_and_preprocess_api as api
dataset_id, processes, configuration = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
api.extract_fingerprints([dataset_id], num_processes=processes, verbose=False, show_progress_bar=False)
t1 = time.perf_counter()
plans = api.plan_experiments([dataset_id])
t2 = time.perf_counter()
api.preprocess([dataset_id], plans, [configuration], [processes], verbose=False, show_progress_bar=False)
t3 = time.perf_counter()
print(json.dumps({"fingerprint_s": t1 - t0, "planning_s": t2 - t1, "preprocess_s": t3 - t2, "plans": plans}))
"""


def _marker_ok(folder: Path, wanted: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == wanted
    except (OSError, json.JSONDecodeError):
        return False


def _nnunet_dataset_json(data_dir: Path, n_cases: int) -> dict[str, Any]:
    """The MSD ``dataset.json`` of ``data_dir`` rewritten as ``convert_msd_dataset`` rewrites it.

    MSD keeps ``{"0": "background", ...}`` and ``modality``; nnU-Net v2 wants ``labels`` as name -> value,
    ``channel_names``, ``file_ending`` and no file lists.
    """
    source = json.loads((data_dir / "dataset.json").read_text())
    return {
        "name": source.get("name", "BRATS"),
        "description": source.get("description", ""),
        "channel_names": source["modality"],  # FLAIR, T1w, t1gd, T2w
        "labels": {name: int(value) for value, name in source["labels"].items()},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }


def nnunet_raw(data_dir: Path, workdir: Path, dataset_id: int = DATASET_ID, *, fresh: bool = False) -> Path:
    """The cases of the MSD folder ``data_dir`` in nnU-Net v2's raw layout; returns the dataset folder.

    ``WORKDIR/nnunet/<data_dir name>/raw/DatasetXXX_BRATSsynth/`` holds ``imagesTr/CASE_0000..0003.nii.gz``
    (one 3D file per channel, split by nnU-Net's ``split_4d_nifti``), ``labelsTr/CASE.nii.gz`` (copied)
    and ``dataset.json`` (channel_names FLAIR/T1w/t1gd/T2w; labels background 0, edema 1, non-enhancing
    tumor 2, enhancing tumour 3; numTraining; file_ending ``.nii.gz``). A marker written last holds the
    data folder's fingerprint, so a rewritten data folder is converted again.

    Raises:
        MissingPiece: nnunetv2 (or SimpleITK) is not importable.
    """
    split_4d_nifti = require("nnunetv2.dataset_conversion.convert_MSD_dataset", "split_4d_nifti")
    target = workdir / "nnunet" / data_dir.name / "raw" / f"Dataset{dataset_id:03d}_BRATSsynth"
    wanted = {"data": data_fingerprint(data_dir), "data_dir": str(data_dir)}
    if not fresh and _marker_ok(target, wanted):
        return target
    remove_path(target)
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir()
    cases = case_files(data_dir)
    print(f"  converting {len(cases)} cases to nnU-Net's raw layout in {target} (once) ...", flush=True)
    started = time.perf_counter()
    for case_id, image, label in cases:
        split_4d_nifti(str(image), str(target / "imagesTr"))
        shutil.copy(label, target / "labelsTr" / f"{case_id}.nii.gz")
    dataset_json = _nnunet_dataset_json(data_dir, len(cases))
    (target / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    (target / MARKER).write_text(json.dumps(wanted))
    print(f"  ... done in {time.perf_counter() - started:.0f} s", flush=True)
    return target


def _dataset_id(raw_dataset: Path) -> int:
    """The id of a ``DatasetXXX_Name`` folder."""
    head = raw_dataset.name.split("_", 1)[0]
    if not head.startswith("Dataset") or not head[len("Dataset") :].isdigit():
        raise ValueError(f"expected an nnU-Net dataset folder named DatasetXXX_Name, found {raw_dataset}")
    return int(head[len("Dataset") :])


def nnunet_preprocess(
    raw_dataset: Path, workdir: Path, processes: int, *, output: Path | None = None
) -> tuple[Path, float, dict[str, Any]]:
    """Fingerprint, plan and preprocess ``raw_dataset`` for ``3d_fullres`` into a fresh folder; timed.

    Args:
        raw_dataset: a ``DatasetXXX_Name`` folder of :func:`nnunet_raw` (its parent is ``nnUNet_raw``).
        workdir: the benchmark work folder; the output goes to a new folder under ``WORKDIR/nnunet-runs``
            unless ``output`` names one (``nnUNet_preprocessed``; emptied first).
        processes: ``-npfp`` and ``-np``: worker processes of fingerprint extraction and preprocessing.

    Returns:
        ``(folder, seconds, details)``: ``folder`` is ``.../DatasetXXX_Name/nnUNetPlans_3d_fullres`` (one
        ``CASE.b2nd`` image, ``CASE_seg.b2nd`` label and ``CASE.pkl`` properties per case; the caller owns
        it: remove it or keep it with :func:`adopt_preprocessed`), ``seconds`` is fingerprint extraction +
        preprocessing (planning excluded: it builds networks to size the patch and has no per-case work),
        ``details`` has ``fingerprint_s``, ``planning_s``, ``preprocess_s``, ``child_wall_s`` (the
        child's whole life, imports included), ``cpu_s`` (user + system CPU of the child and its
        worker pools, imports included), ``processes``, ``cases`` and ``nnunetv2``.

    Raises:
        MissingPiece: nnunetv2 is not installed.
        RuntimeError: nnU-Net's preprocessing failed (its last error line).
    """
    require("nnunetv2.experiment_planning.plan_and_preprocess_api")
    made_here = output is None
    if output is None:
        (workdir / "nnunet-runs").mkdir(parents=True, exist_ok=True)
        output = Path(tempfile.mkdtemp(prefix=f"np{processes}-", dir=workdir / "nnunet-runs"))
    remove_path(output)
    output.mkdir(parents=True)
    (output / "results").mkdir()
    env = {
        **os.environ,
        "nnUNet_raw": str(raw_dataset.parent),
        "nnUNet_preprocessed": str(output / "preprocessed"),
        "nnUNet_results": str(output / "results"),
    }
    command = [sys.executable, "-c", CHILD, str(_dataset_id(raw_dataset)), str(processes), CONFIGURATION]
    started, cpu_before = time.perf_counter(), children_cpu_seconds()
    child = subprocess.run(command, env=env, capture_output=True, text=True)
    child_wall, cpu_s = time.perf_counter() - started, children_cpu_seconds() - cpu_before
    if child.returncode != 0:
        if made_here:
            remove_path(output)
        lines = child.stderr.strip().splitlines()
        raise RuntimeError(
            f"nnU-Net preprocessing of {raw_dataset} failed: {lines[-1] if lines else 'no output'}"
        )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    folder = output / "preprocessed" / raw_dataset.name / f"{result['plans']}_{CONFIGURATION}"
    details = {
        **{k: result[k] for k in ("fingerprint_s", "planning_s", "preprocess_s")},
        "child_wall_s": child_wall,
        "cpu_s": cpu_s,
        "processes": processes,
        "cases": len(case_data_files(folder)) // 3,
        "nnunetv2": version("nnunetv2"),
    }
    return folder, result["fingerprint_s"] + result["preprocess_s"], details


def case_data_files(folder: Path) -> list[Path]:
    """The per-case files of an nnU-Net preprocessed configuration folder: ``.b2nd`` and ``.pkl``.

    Its plans, fingerprint, ``dataset.json`` and ``gt_segmentations`` copy live one level up and are not
    per-case data.
    """
    return sorted(p for p in folder.iterdir() if p.suffix in (".b2nd", ".pkl"))


def case_data_bytes(folder: Path) -> tuple[int, int]:
    """(bytes on disk of :func:`case_data_files`, cases) of a preprocessed configuration folder."""
    files = case_data_files(folder)
    cases = sum(1 for p in files if p.suffix == ".pkl")
    return sum(path_bytes(p) for p in files), cases


def _cache_root(data_dir: Path, workdir: Path) -> Path:
    return workdir / "nnunet" / data_dir.name / "preprocessed"


def _cache_wanted(raw_dataset: Path) -> dict[str, Any]:
    return {"raw": json.loads((raw_dataset / MARKER).read_text()), "nnunetv2": version("nnunetv2")}


def adopt_preprocessed(folder: Path, data_dir: Path, workdir: Path, raw_dataset: Path) -> Path:
    """Keep the output of a :func:`nnunet_preprocess` run as the cache of :func:`nnunet_preprocessed`.

    ``folder``'s ``nnUNet_preprocessed`` tree (two levels up) is moved, not copied, unless the cache is
    already valid; the rest of the run's folder is removed. Returns the cached configuration folder.
    """
    root = _cache_root(data_dir, workdir)
    cached = root / raw_dataset.name / folder.name
    if cached.is_dir() and _marker_ok(root, _cache_wanted(raw_dataset)):
        remove_path(folder.parent.parent.parent)
        return cached
    remove_path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder.parent.parent), root)
    remove_path(folder.parent.parent.parent)
    (root / MARKER).write_text(json.dumps(_cache_wanted(raw_dataset)))
    return root / folder.parent.name / folder.name


def nnunet_preprocessed(data_dir: Path, workdir: Path, processes: int = 2, *, fresh: bool = False) -> Path:
    """nnU-Net's ``3d_fullres`` preprocessed folder of ``data_dir``, made once and reused (for readers).

    Cached under ``WORKDIR/nnunet/<data_dir name>/preprocessed`` with a marker holding the raw dataset's
    marker (the data fingerprint) and the nnunetv2 version. Not for timing: see :func:`nnunet_preprocess`.
    """
    raw_dataset = nnunet_raw(data_dir, workdir, fresh=fresh)
    root = _cache_root(data_dir, workdir)
    folder = root / raw_dataset.name / f"{PLANS}_{CONFIGURATION}"
    if not fresh and folder.is_dir() and _marker_ok(root, _cache_wanted(raw_dataset)):
        return folder
    print(f"  nnU-Net preprocessing of {data_dir.name} for the cache (once) ...", flush=True)
    made, seconds, _ = nnunet_preprocess(raw_dataset, workdir, processes)
    print(f"  ... done in {seconds:.0f} s", flush=True)
    return adopt_preprocessed(made, data_dir, workdir, raw_dataset)


def nnunet_patch_size(folder: Path, patch_size: tuple[int, int, int] = PATCH_SIZE) -> tuple[int, int, int]:
    """Our (X, Y, Z) patch in the axis order of nnU-Net's arrays in ``folder``.

    nnU-Net reads NIfTI with SimpleITK, whose arrays are (z, y, x), then permutes the axes by the plans'
    ``transpose_forward`` (identity for the synthetic cases' isotropic 1 mm spacing): our 160x160x16 is
    its 16x160x160.
    """
    plans = json.loads((folder.parent / f"{PLANS}.json").read_text())
    zyx = tuple(reversed(patch_size))
    return tuple(int(zyx[axis]) for axis in plans["transpose_forward"])  # type: ignore[return-value]


def nnunet_loader_rate(
    folder: Path,
    patch_size: tuple[int, int, int] = PATCH_SIZE,
    batch_size: int = 2,
    workers: int = 2,
    n_patches: int = 96,
    warmup_batches: int = 4,
) -> tuple[float, dict[str, Any]]:
    """Patches/s of nnU-Net v2's training loader over its preprocessed folder, without augmentation.

    ``nnUNetDataLoader(nnUNetDatasetBlosc2(folder), batch_size, patch, patch, label_manager,
    oversample_foreground_percent=0.33, transforms=None)`` (its trainer's default share of each batch
    forced onto foreground; the same patch as initial and final size since nothing rotates it), in
    ``workers`` processes of ``NonDetMultiThreadedAugmenter`` as ``nnUNetTrainer.get_dataloaders`` wraps
    it (``transform=None``, ``num_cached=max(6, workers // 2)``, ``wait_time=0.002``, no pinned memory on
    the CPU). Batches are float32 images (B, 4, *patch) and int16 labels (B, 1, *patch); each is touched
    as :func:`common.touch` does and timed by :func:`common.time_stream` after ``warmup_batches``.

    Args:
        folder: a ``.../nnUNetPlans_3d_fullres`` folder (:func:`nnunet_preprocessed`).
        patch_size: our (X, Y, Z) patch (default 160x160x16), mapped by :func:`nnunet_patch_size`.

    Returns:
        ``(patches/s, details)`` with ``patches``, ``seconds``, ``warmup_s``, ``patch`` (nnU-Net's order),
        ``batch_size``, ``workers``, ``cases`` and ``oversample_foreground_percent``.
    """
    require("nnunetv2")
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    patch = nnunet_patch_size(folder, patch_size)
    plans = PlansManager(str(folder.parent / f"{PLANS}.json"))
    labels = plans.get_label_manager(json.loads((folder.parent / "dataset.json").read_text()))
    dataset = nnUNetDatasetBlosc2(str(folder))
    loader = nnUNetDataLoader(
        dataset, batch_size, patch, patch, labels, oversample_foreground_percent=OVERSAMPLE_FOREGROUND
    )
    stream = NonDetMultiThreadedAugmenter(
        data_loader=loader,
        transform=None,
        num_processes=workers,
        num_cached=max(6, workers // 2),
        seeds=None,
        pin_memory=False,
        wait_time=0.002,
    )
    try:
        result = time_stream(stream, n_patches, warmup_batches, lambda b: touch([b["data"], b["target"]]))
    finally:
        stream._finish()  # its worker processes; the trainer does the same at the end of training
    details = {
        "patches": result.patches,
        "seconds": result.seconds,
        "warmup_s": result.warmup_seconds,
        "patch": "x".join(map(str, patch)),
        "batch_size": batch_size,
        "workers": workers,
        "cases": len(dataset.identifiers),
        "oversample_foreground_percent": OVERSAMPLE_FOREGROUND,
    }
    return result.rate, details


def main(argv: list[str] | None = None) -> int:
    """Smoke run: convert, preprocess (cached), loader rate, on the benchmark's synthetic cases."""
    from common import base_parser, synthetic_dataset

    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3, help="synthetic cases (default 3)")
    parser.add_argument("--processes", type=int, default=2, help="nnU-Net processes and loader workers")
    args = parser.parse_args(argv)
    try:
        data_dir = synthetic_dataset(args.workdir, args.cases)
        folder = nnunet_preprocessed(data_dir, args.workdir, args.processes, fresh=args.fresh)
    except MissingPiece as err:
        print(f"not run: {err}")
        return 0
    size, cases = case_data_bytes(folder)
    print(f"{folder}: {cases} cases, {size / cases / 1e6:.2f} MB per case (.b2nd + .pkl)")
    rate, details = nnunet_loader_rate(folder, workers=args.processes, n_patches=24)
    print(f"nnUNetDataLoader: {rate:.1f} patches/s {details}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
