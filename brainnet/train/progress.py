"""``RUN_DIR/progress.png``: a run's training curves, redrawn after every epoch (as nnU-Net's trainer
draws its ``progress.png``), so a run can be judged at a glance without TensorBoard.

Left: the train and validation loss per epoch. Right: the label-map Dice of each class and region the
log holds (``val_dice_labelmap_<target>``, or the training ones without validation) and the mean by
which ``best.pt`` is chosen, with the epoch ``best.pt`` holds marked: the last row whose
:data:`BEST_COLUMN` is 1 (after a resume that changed what the score measures, a later epoch than the
highest score of the rows), or in rows from before that column the first highest score. The curves are
drawn from the rows :class:`~brainnet.train.logs.RunLogger` writes to ``log.csv`` (a resumed run's come
from its checkpoint's history), so a resumed run draws its whole history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainprep.files import replacing

PNG_NAME = "progress.png"
#: log column: 1 for an epoch written to ``best.pt`` (its score beat the best so far), 0 otherwise
BEST_COLUMN = "best_pt"
_LOSSES = (("train_loss", "train"), ("val_loss", "validation"))


def _value(row: Mapping[str, Any], name: str) -> float:
    """A row's number (CSV rows read back on resume hold strings); NaN where absent or empty."""
    try:
        return float(row[name])
    except (KeyError, TypeError, ValueError):
        return math.nan


def best_epoch(rows: Sequence[Mapping[str, Any]], score_column: str) -> int | None:
    """The epoch ``best.pt`` holds: the last marked in :data:`BEST_COLUMN`; in rows without the column, the
    first whose ``score_column`` is the highest (``None``: no score)."""
    if any(BEST_COLUMN in r for r in rows):
        marked = [int(_value(r, "epoch")) for r in rows if _value(r, BEST_COLUMN) == 1]
        return marked[-1] if marked else None
    scored = [(_value(r, score_column), -int(_value(r, "epoch"))) for r in rows]
    scored = [s for s in scored if not math.isnan(s[0])]
    return -max(scored)[1] if scored else None


def progress_figure(rows: Sequence[Mapping[str, Any]], score_column: str):
    """The two-panel matplotlib ``Figure`` of ``rows`` (one mapping per epoch: ``epoch``, losses, Dice)."""
    from matplotlib.figure import Figure

    epochs = [_value(r, "epoch") for r in rows]
    figure = Figure(figsize=(11, 4), layout="constrained")
    losses, scores = figure.subplots(1, 2)
    for name, title in _LOSSES:
        if any(name in r for r in rows):
            losses.plot(epochs, [_value(r, name) for r in rows], marker=".", label=title)
    losses.set(xlabel="epoch", ylabel="loss", title="loss")
    prefix = f"{score_column}_"
    targets = [k for k in rows[-1] if k.startswith(prefix)] if rows else []
    for name in targets:
        scores.plot(
            epochs, [_value(r, name) for r in rows], lw=1, label=name[len(prefix) :].replace("_", " ")
        )
    scores.plot(epochs, [_value(r, score_column) for r in rows], "k", lw=2.5, label="mean of the classes")
    best = best_epoch(rows, score_column)
    if best is not None:
        value = next(_value(r, score_column) for r in rows if int(_value(r, "epoch")) == best)
        scores.axvline(best, color="grey", ls="--", lw=1)
        scores.plot([best], [value], "k*", ms=12, label=f"best.pt: epoch {best}, {value:.3f}")
    scores.set(xlabel="epoch", ylabel="Dice (label map)", title=score_column, ylim=(0, 1))
    for axes in (losses, scores):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return figure


def write_progress_png(rows: Sequence[Mapping[str, Any]], path: Path | str, score_column: str) -> Path:
    """Draw :func:`progress_figure` into ``path`` atomically (a killed write leaves the previous one)."""
    figure = progress_figure(rows, score_column)
    with replacing(path) as temporary:
        figure.savefig(temporary, dpi=90)
    return Path(path)
