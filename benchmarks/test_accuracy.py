"""Tests of bench_accuracy's pure pieces, no training: ``python -m pytest benchmarks/test_accuracy.py -q``."""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_accuracy import (
    ARMS,
    LoaderThreadClock,
    _mean_sd,
    arm_table,
    bars,
    children_cpu_seconds,
    main,
    patch_size,
)
from common import Report, Row

KEYS = (
    "edema",
    "non_enhancing",
    "enhancing",
    "whole_tumour",
    "tumour_core",
    "enhancing_tumour",
    "mean",
    "wt_small",
    "wt_specificity",
    "wt_false_positives",
    "loader_cpu_s",
    "train_s",
)


def _row(arm: str, mean: float, wt: tuple[float, float], cpu: float) -> Row:
    summary = {key: (0.5, 0.0) for key in KEYS}
    summary.update(mean=(mean, 0.01), whole_tumour=wt, loader_cpu_s=(cpu, 0.1))
    return Row(f"{ARMS[arm]}: mean Dice", mean, "dice", extra={"summary": summary})


def test_mean_sd_is_the_sample_sd_and_zero_for_one_value():
    assert _mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert _mean_sd([0.7]) == (0.7, 0.0)


def test_patch_option_parses_three_sides_and_refuses_others(capsys: pytest.CaptureFixture[str]) -> None:
    assert patch_size("64,64,4") == (64, 64, 4)
    for bad in ("64,64", "64,0,4", "a,b,c"):
        with pytest.raises(ValueError):
            patch_size(bad)
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error, before any data is made
        main(["--patch", "64,64"])
    assert exit_info.value.code == 2 and "--patch" in capsys.readouterr().err


def test_bars_by_hand():
    report = Report("t")
    report.rows = [
        _row("i", 0.70, (0.80, 0.02), 1.0),
        _row("ii", 0.755, (0.85, 0.01), 2.0),
        _row("iii", 0.76, (0.84, 0.03), 40.0),
    ]
    by_name = {b.name: b for b in bars(report)}
    dice, wt, cpu = by_name.values()
    assert dice.ratio == pytest.approx(-0.005) and dice.status == "PASS"  # within 0.01 of MONAI
    assert wt.ratio == pytest.approx(0.05 / 0.02) and wt.status == "PASS"  # the larger sd is (i)'s
    assert cpu.ratio == pytest.approx(0.05) and cpu.status == "PASS"
    report.rows[1] = _row("ii", 0.74, (0.81, 0.01), 5.0)
    assert [b.status for b in bars(report)] == ["MISS", "MISS", "MISS"]


def test_bars_and_table_without_an_arm():
    report = Report("t")
    report.rows = [_row("ii", 0.7, (0.8, 0.0), 1.0)]
    assert [b.status for b in bars(report)] == ["N/A", "N/A", "N/A"]
    table = arm_table(report)
    lines = {line.split("  ")[0]: line.split() for line in table.splitlines()[1:]}
    assert lines[ARMS["i"]][-2:] == ["not", "run"]
    assert "0.800±0.000" in lines[ARMS["ii"]] and "0.700±0.010" in lines[ARMS["ii"]]


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_children_cpu_seconds_counts_a_reaped_child():
    before = children_cpu_seconds()
    child = multiprocessing.get_context("fork").Process(target=_spin, args=(0.3,))
    child.start()
    child.join()
    assert children_cpu_seconds() - before >= 0.25


class _SpinningDataset:
    """What ThreadedLoader reads: each batch spins for 0.1 CPU s in the loader thread."""

    def read_batch(self, positions, **_):
        end = time.thread_time() + 0.1
        while time.thread_time() < end:
            pass
        return {"slot": list(positions)}


def test_loader_thread_clock_counts_the_loader_threads_and_restores():
    from brainnet.data.loader import ThreadedLoader
    from brainnet.data.volume_sampler import VolumeDraws

    load, init = ThreadedLoader._load, VolumeDraws.__init__
    with LoaderThreadClock() as clock:
        loader = ThreadedLoader(_SpinningDataset(), [[0], [1], [2]], threads=2, prefetch=2)
        started = time.thread_time()
        assert [b["slot"] for b in loader] == [[0], [1], [2]]
        main_thread = time.thread_time() - started
    assert 0.28 <= clock.seconds <= 0.5  # the three batches' spins, in the loader's threads
    assert main_thread < 0.1  # not this thread's time: it only waited
    assert ThreadedLoader._load is load and VolumeDraws.__init__ is init


def test_score_scans_counts_what_the_model_predicts(tmp_path: Path) -> None:
    """score_scans on a real (tiny) case and U-Net: its whole-tumour Dice and false positives are those of
    the label map predict_case writes, counted by hand."""
    import numpy as np
    import torch
    from bench_accuracy import score_scans

    from brainnet.model import ModelConfig, UNet3D
    from brainnet.predict import predict_case
    from brainprep import discover_cases, read_case
    from brainprep.params import BuildParams, SamplingParams
    from brainprep.synth import SynthParams, write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "d", SynthParams(n_cases=1, shape=(32, 32, 16), seed=3))
    case = read_case(discover_cases(data).cases[0])
    torch.manual_seed(0)
    model = UNet3D(ModelConfig(base_filters=2, depth=2)).eval()
    build = BuildParams(sampling=SamplingParams(patch_size=(16, 16, 8)))
    scores = score_scans(model, [case], build)
    labels, _ = predict_case(model, case, build, overlap=0.5, batch_size=4)
    predicted, truth = labels > 0, case.label > 0
    assert scores["wt_false_positives"] == float(np.count_nonzero(predicted & ~truth))
    overlap = np.count_nonzero(predicted & truth)
    total = predicted.sum() + truth.sum()
    assert scores["whole_tumour"] == pytest.approx(2 * overlap / total if total else 1.0)
