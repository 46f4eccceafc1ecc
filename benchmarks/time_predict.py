"""Seconds for ``brainnet.predict.predict_case`` on one full-size scan on this machine, course U-Net.

    python benchmarks/time_predict.py [DATA_DIR] [--base-filters 32 8]

Untrained weights (the time does not depend on them); window 160x160x16, overlap 0.5, Gaussian blend,
batch 4, CPU unless CUDA is present. DATA_DIR defaults to the benchmark's cached synthetic cases.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from brainnet.model import ModelConfig, build_model
from brainnet.predict import predict_case
from brainprep import discover_cases, read_case
from brainprep.params import BuildParams

DEFAULT_DATA = Path.home() / ".cache" / "brainprep-bench" / "synth-msd-8-seed0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--base-filters", type=int, nargs="+", default=[32, 8])
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    case = read_case(discover_cases(args.data).cases[0])
    for base in args.base_filters:
        model = build_model(ModelConfig(base_filters=base)).to(device).eval()
        start = time.perf_counter()
        predict_case(model, case, BuildParams(), overlap=0.5, batch_size=4, device=device)
        print(
            f"base_filters {base}: {case.shape} scan on {device}, window 160x160x16, overlap 0.5, gaussian: "
            f"{time.perf_counter() - start:.1f} s"
        )


if __name__ == "__main__":
    main()
