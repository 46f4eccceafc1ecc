"""The GPU benchmark's harness on the CPU (``--cpu-smoke``): a drawn GPU's few minutes must not be spent
finding that the script broke. ``python -m pytest benchmarks/test_bench_gpu.py -q``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.mark.slow
def test_the_gpu_benchmark_trains_from_both_store_kinds_on_the_cpu(tmp_path):
    import bench_gpu

    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--cpu-smoke", "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {row["name"]: row["value"] for row in report["rows"]}
    for kind in ("patch store", "volume store"):
        assert rows[f"training patches/s ({kind})"] > 0
        for share in ("data wait share", "augmentation share"):
            value = rows[f"{share} ({kind})"]
            assert math.isfinite(value) and 0 < value < 1, (share, kind, value)
    assert {bar["name"] for bar in report["bars"]} == {
        f"{what} of step time, {kind}"
        for what in ("data wait share", "augmentation share")
        for kind in ("patch store", "volume store")
    }
