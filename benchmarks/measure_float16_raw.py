"""Is float16 enough for RAW intensities? What rounding them costs once a window is standardized.

For each real case in ../shared/data (BraTS 2023 layout), prints the intensity range per channel and, for
random 160x160x16 windows of the brain crop, the largest difference between the window standardized from
float32 intensities and from float16-rounded ones (``patch-slice`` and ``volume-nonzero``), next to the
float16 rounding the patch store applies to the standardized values themselves.

    python benchmarks/measure_float16_raw.py [--windows 20] [DATA_DIR ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from brainprep.read import discover_cases, read_case
from brainprep.standardize import (
    brain_mask,
    nonzero_statistics,
    standardize_patch_slices,
    standardize_with_statistics,
)
from brainprep.volume import brain_crop, cut_crop

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PATCH = (160, 160, 16)


def measure(case, windows: int, rng: np.random.Generator) -> None:
    crop = brain_crop(
        case.image, case.label if case.label is not None else np.zeros(case.shape, np.uint8), PATCH
    )
    image = cut_crop(case.image, crop)
    rounded = image.astype(np.float16).astype(np.float32)
    mean, std = nonzero_statistics(image)
    peak = np.abs(image).reshape(4, -1).max(axis=1)
    print(f"{case.case_id}: crop {crop.shape}, max |intensity| per channel {peak.tolist()}")
    worst = {"patch-slice": 0.0, "volume-nonzero": 0.0, "float16 of the standardized": 0.0}
    for _ in range(windows):
        corner = rng.integers(0, np.array(crop.shape) - PATCH + 1)
        window = tuple(slice(int(c), int(c) + p) for c, p in zip(corner, PATCH, strict=True))
        exact, coarse = image[(slice(None), *window)], rounded[(slice(None), *window)]
        a = standardize_patch_slices(exact)
        worst["patch-slice"] = max(
            worst["patch-slice"], float(np.abs(a - standardize_patch_slices(coarse)).max())
        )
        b = standardize_with_statistics(exact, mean, std, mask=brain_mask(exact))
        c = standardize_with_statistics(coarse, mean, std, mask=brain_mask(coarse))
        worst["volume-nonzero"] = max(worst["volume-nonzero"], float(np.abs(b - c).max()))
        stored = float(np.abs(a - a.astype(np.float16).astype(np.float32)).max())
        worst["float16 of the standardized"] = max(worst["float16 of the standardized"], stored)
    for name, value in worst.items():
        print(f"  max |difference|, {name}: {value:.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="*", type=Path)
    parser.add_argument("--windows", type=int, default=20)
    args = parser.parse_args()
    folders = args.data or [SHARED / "brats2023", SHARED / "brats2023-with-seg"]
    rng = np.random.default_rng(0)
    for folder in folders:
        if not folder.exists():
            print(f"{folder}: not found, skipped")
            continue
        for files in discover_cases(folder).cases:
            measure(read_case(files), args.windows, rng)


if __name__ == "__main__":
    main()
