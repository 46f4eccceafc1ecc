"""Tests of the benchmark harness (no benchmark runs): ``python -m pytest benchmarks/test_common.py -q``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Bar,
    MissingPiece,
    Report,
    Row,
    cycle,
    finish,
    format_table,
    format_value,
    measure_row,
    measure_rows,
    require,
    time_stream,
    touch,
)


def test_bar_ratio_and_status_by_hand():
    assert Bar("a", 80.0, 2.0, ">=", 40.0).ratio == 40.0
    assert Bar("a", 80.0, 2.0, ">=", 40.0).status == "PASS"
    assert Bar("a", 79.0, 2.0, ">=", 40.0).status == "MISS"
    assert Bar("b", 3.0, 2.0, "<=", 1.5).status == "PASS"
    assert Bar("b", 3.1, 2.0, "<=", 1.5).status == "MISS"
    assert Bar("c", 0.1, None, "<", 0.1).status == "MISS"  # strict: equal is not below
    assert Bar("c", 0.09, None, "<", 0.1).status == "PASS"


def test_bar_without_a_number_is_not_applicable():
    assert Bar("a", None, 2.0, ">=", 1.0).status == "N/A"
    assert Bar("a", 1.0, None, ">=", 1.0).status == "PASS"  # no denominator: the value itself
    assert Bar("a", 1.0, 0.0, ">=", 1.0).status == "N/A"
    assert Bar("a", float("nan"), 1.0, ">=", 1.0).status == "N/A"


def test_touch_counts_the_patches_of_the_first_5d_array():
    batch = {
        "image": torch.zeros(3, 4, 8, 8, 2),
        "target": torch.zeros(3, 3, 8, 8, 2),
        "slot": torch.arange(3),
    }
    assert touch(batch) == 3
    assert touch([np.zeros((4, 8, 8, 2))]) == 1
    with pytest.raises(ValueError, match="holds no array"):
        touch({"name": "x"})


def test_touch_unwraps_tensor_subclasses():
    class Tagged(torch.Tensor):
        pass

    batch = {"image": torch.ones(2, 1, 4, 4, 4).as_subclass(Tagged)}
    assert touch(batch) == 2


def test_time_stream_excludes_warmup_and_counts_patches():
    batches = cycle(lambda: [torch.zeros(2, 1, 2, 2, 2)] * 3)
    result = time_stream(batches, n_patches=5, warmup_batches=2)
    assert result.patches == 6  # three batches of 2 cover 5; the last one counts whole
    assert result.seconds > 0


def test_cycle_refuses_an_empty_loader():
    with pytest.raises(RuntimeError, match="no batch"):
        next(cycle(list))


def test_measure_row_reports_missing_pieces_and_failures(capsys):
    def missing() -> Row:
        raise MissingPiece("brainprep.nothing is not importable")

    def broken() -> Row:
        raise ZeroDivisionError("division by zero")

    row = measure_row("x", "patches/s", missing)
    assert row.value is None and row.note.startswith("not run: brainprep.nothing")
    row = measure_row("y", "patches/s", broken)
    assert row.value is None and "ZeroDivisionError" in row.note
    rows = measure_rows(["p", "q"], "s", broken)
    assert [r.name for r in rows] == ["p", "q"] and all(r.value is None for r in rows)


def test_require_names_what_is_missing():
    with pytest.raises(MissingPiece, match="brainprep_no_such_module"):
        require("brainprep_no_such_module")
    with pytest.raises(MissingPiece, match=r"json\.no_such_function"):
        require("json", "no_such_function")
    assert require("json", "dumps") is json.dumps


def test_format_value():
    assert format_value(None) == "-"
    assert format_value(12345.6) == "12,346"
    assert format_value(123.45) == "123.5"
    assert format_value(1.234) == "1.23"
    assert format_value(0.01234) == "0.0123"


def test_table_and_json(tmp_path, capsys):
    report = Report("T", rows=[Row("a", 80.0, "patches/s"), Row("c", 2.0, "patches/s")])
    report.bars = [Bar("a / c", report.value("a"), report.value("c"), ">=", 40.0)]
    text = format_table(report)
    assert "a / c      40.00x   >= 40.00x  PASS" in text
    out = tmp_path / "r.json"
    assert finish(report, out) == 0
    data = json.loads(out.read_text())
    assert data["bars"][0]["ratio"] == 40.0 and data["bars"][0]["status"] == "PASS"
    assert data["rows"][1] == {"name": "c", "value": 2.0, "unit": "patches/s", "note": "", "extra": {}}
