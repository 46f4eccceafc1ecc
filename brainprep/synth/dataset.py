"""Write a synthetic dataset in the MSD Task01 layout or in a BraTS 2021 / 2023 release layout.

The MSD layout stores RAS arrays with an identity affine, like the real Task01 files. The BraTS layouts
store each channel as a 3D int16 file with the LPS affine of the real releases (x and y flipped), so
:func:`brainprep.read_case` of a written case gives back exactly the arrays of the MSD layout.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from brainprep.errors import ConfigError
from brainprep.read.labels import convention_spec
from brainprep.read.layouts import CHANNEL_KEYS
from brainprep.read.nifti import from_ras, write_nifti
from brainprep.synth.case import build_case
from brainprep.synth.params import SynthParams

logger = logging.getLogger(__name__)

MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
PARAMS_FILE = "synth.json"  # provenance of the per-case-folder layouts (MSD's goes in dataset.json)


def release_case_id(layout: str, index: int) -> str:
    """Case id of the 0-based ``index`` as the release names it."""
    if layout == "brats2021":
        return f"BraTS2021_{index + 1:05d}"
    if layout == "brats2023":
        return f"BraTS-GLI-{index + 1:05d}-000"
    return f"BRATS_{index + 1:03d}"


def lps_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """(4, 4) voxel-to-world affine of the BraTS releases: 1 mm, x to the left, y posterior."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def msd_dataset_json(params: SynthParams) -> dict:
    """The ``dataset.json`` of an MSD-layout synthetic dataset, shaped like Task01's."""
    ids = [release_case_id("msd", i) for i in range(params.n_cases)]
    return {
        "name": "BRATS",
        "description": "Synthetic BraTS-like gliomas (brainprep synth), not real patients",
        "reference": "brainprep",
        "licence": "CC-BY-SA 4.0",
        "release": "synthetic",
        "tensorImageSize": "4D",
        "modality": MSD_MODALITY,
        "labels": MSD_LABELS,
        "numTraining": params.n_cases,
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids],
        "test": [],
        "brainprep_synth": params.to_dict(),
    }


def write_case(image: np.ndarray, label: np.ndarray, root: Path, layout: str, index: int) -> list[Path]:
    """Write one case under ``root`` in ``layout``.

    Args:
        image: float32 (X, Y, Z, 4), RAS, channels FLAIR, T1w, T1gd, T2w (integer-valued).
        label: uint8 (X, Y, Z), RAS, MSD convention.

    Returns:
        The written files.
    """
    case_id = release_case_id(layout, index)
    if layout == "msd":
        affine = np.eye(4)
        return [
            write_nifti(image, affine, root / "imagesTr" / f"{case_id}.nii.gz"),
            write_nifti(label, affine, root / "labelsTr" / f"{case_id}.nii.gz"),
        ]
    affine = lps_affine(label.shape)
    separator = "-" if layout == "brats2023" else "_"
    folder = root / case_id
    source = from_ras(image, affine)  # flips x and y: the LPS voxel order of the release files
    paths = [
        write_nifti(
            source[..., channel].astype(np.int16), affine, folder / f"{case_id}{separator}{key}.nii.gz"
        )
        for channel, key in enumerate(CHANNEL_KEYS[layout])
    ]
    seg = convention_spec(layout).to_source(from_ras(label, affine))
    paths.append(write_nifti(seg, affine, folder / f"{case_id}{separator}seg.nii.gz"))
    return paths


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def write_synthetic_dataset(
    out_dir: Path | str, params: SynthParams, progress: bool = False, *, overwrite: bool = False
) -> Path:
    """Write the dataset; returns ``out_dir``.

    Everything is written into a hidden sibling folder that is renamed to ``out_dir`` at the end, so an
    interrupted run never leaves a half-written dataset behind.

    Raises:
        ConfigError: ``out_dir`` exists and is not an empty folder (unless ``overwrite``).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not _is_empty_dir(out_dir) and not overwrite:
        raise ConfigError(f"output folder {out_dir} exists and is not empty (expected a new or empty folder)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        indices = range(params.n_cases)
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc="synth", unit="case")
        for index in indices:
            case = build_case(params, index)
            write_case(case.image, case.label, staging, params.layout, index)
            logger.debug("wrote case %d of %d", index + 1, params.n_cases)
        if params.layout == "msd":
            meta_path, meta = staging / "dataset.json", msd_dataset_json(params)
        else:
            meta_path, meta = staging / PARAMS_FILE, {"brainprep_synth": params.to_dict()}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %d synthetic cases (%s layout) to %s", params.n_cases, params.layout, out_dir)
    return out_dir
