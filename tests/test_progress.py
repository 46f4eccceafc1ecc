"""``RUN_DIR/progress.png``: the training curves drawn from the run's log rows."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from brainnet.train.progress import BEST_COLUMN, best_epoch, progress_figure, write_progress_png

SCORE = "val_dice_labelmap"


def _rows(scores, with_val=True):
    rows = []
    for epoch, score in enumerate(scores, start=1):
        row = {"epoch": epoch, "global_step": 10 * epoch, "train_loss": 1 / epoch, "train_dice_labelmap": 0.1}
        if with_val:
            row |= {"val_loss": 0.5 / epoch, SCORE: score, f"{SCORE}_edema": score / 2}
        rows.append(row)
    return rows


def _line(figure, panel, label):
    (line,) = [x for x in figure.axes[panel].lines if x.get_label().startswith(label)]
    return line


def test_best_epoch_is_the_first_highest_score_as_best_pt_keeps_it():
    # best.pt moves only when the score rises: of two equal highs it holds the first
    assert best_epoch(_rows([0.2, 0.6, 0.4, 0.6]), SCORE) == 2
    # rows read back from log.csv on resume hold strings; an empty cell is no score
    rows = [{k: str(v) for k, v in r.items()} for r in _rows([0.3, 0.7, 0.1])]
    rows[1][SCORE] = ""
    assert best_epoch(rows, SCORE) == 1
    assert best_epoch(_rows([0.3], with_val=False), SCORE) is None


def test_best_epoch_is_the_last_marked_one_when_the_rows_mark_it():
    # a resume that changed the score's measure forgot the best score: best.pt is epoch 3, not the
    # highest score's epoch 2
    rows = _rows([0.2, 0.6, 0.4])
    for row, marked in zip(rows, (1, 1, 1), strict=True):
        row[BEST_COLUMN] = marked
    assert best_epoch(rows, SCORE) == 3
    rows[2][BEST_COLUMN] = "0"  # strings, as read back from log.csv
    assert best_epoch(rows, SCORE) == 2
    assert _line(progress_figure(rows, SCORE), 1, "best.pt").get_label() == "best.pt: epoch 2, 0.600"
    rows[1][BEST_COLUMN] = 0
    rows[0][BEST_COLUMN] = 0
    assert best_epoch(rows, SCORE) is None


def test_the_figure_draws_each_column_of_the_rows():
    rows = _rows([0.2, 0.6, 0.4])
    figure = progress_figure(rows, SCORE)
    assert list(_line(figure, 0, "train").get_ydata()) == [1.0, 0.5, pytest.approx(1 / 3)]
    assert list(_line(figure, 0, "validation").get_ydata()) == [0.5, 0.25, pytest.approx(0.5 / 3)]
    assert list(_line(figure, 1, "mean of the classes").get_ydata()) == [0.2, 0.6, 0.4]
    assert list(_line(figure, 1, "edema").get_ydata()) == [0.1, 0.3, 0.2]
    best = _line(figure, 1, "best.pt")
    assert (list(best.get_xdata()), list(best.get_ydata())) == ([2.0], [0.6])
    assert best.get_label() == "best.pt: epoch 2, 0.600"


def test_without_validation_the_training_score_is_drawn(tmp_path):
    rows = _rows([0.0, 0.0], with_val=False)
    figure = progress_figure(rows, "train_dice_labelmap")
    assert [x.get_label() for x in figure.axes[0].lines] == ["train"]
    assert list(_line(figure, 1, "best.pt").get_xdata()) == [1.0]
    path = write_progress_png(rows, tmp_path / "run" / "progress.png", "train_dice_labelmap")
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] > picture.size[1] > 100
    assert [p.name for p in path.parent.iterdir()] == ["progress.png"]  # no temporary left


def test_a_missing_column_is_a_gap_not_an_error():
    rows = _rows([0.5, 0.6])
    del rows[0]["val_loss"]
    figure = progress_figure(rows, SCORE)
    assert math.isnan(_line(figure, 0, "validation").get_ydata()[0])
