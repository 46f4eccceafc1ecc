"""Per-epoch CSV log and TensorBoard scalars of a run folder (written by rank 0 only)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from brainnet.train.progress import PNG_NAME, write_progress_png

logger = logging.getLogger(__name__)

CSV_NAME = "log.csv"
TENSORBOARD_DIR = "tensorboard"


class RunLogger:
    """Appends one CSV row per epoch to ``RUN_DIR/log.csv``, writes TensorBoard scalars and redraws
    ``RUN_DIR/progress.png`` (:mod:`brainnet.train.progress`; ``score_column``: the column ``best.pt`` is
    chosen by, marked there; ``None``: no picture).

    On resume (``resume_epoch`` epochs done) rows of later epochs, written by a run killed after its CSV
    row but before its checkpoint, are dropped so the log matches the checkpoint.
    """

    def __init__(
        self, out_dir: Path, *, resume_epoch: int = 0, resume_step: int = 0, score_column: str | None = None
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.score_column = score_column
        self.png_path = Path(out_dir) / PNG_NAME
        self.csv_path = Path(out_dir) / CSV_NAME
        self.rows: list[dict[str, Any]] = []
        if resume_epoch > 0 and self.csv_path.exists():
            with self.csv_path.open(newline="") as file:
                self.rows = [row for row in csv.DictReader(file) if int(row["epoch"]) <= resume_epoch]
        self.writer = SummaryWriter(
            str(Path(out_dir) / TENSORBOARD_DIR), purge_step=resume_step if resume_step > 0 else None
        )

    def step(self, values: dict[str, float], global_step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step)

    def epoch(self, row: dict[str, Any]) -> None:
        """Record one finished epoch (``row`` holds ``epoch``, ``global_step`` and metrics)."""
        self.rows.append(row)
        for name, value in row.items():
            if name not in ("epoch", "global_step") and isinstance(value, int | float):
                self.writer.add_scalar(f"epoch/{name}", value, int(row["global_step"]))
        self.writer.flush()
        fields: list[str] = []
        for r in self.rows:
            fields.extend(k for k in r if k not in fields)
        temporary = self.csv_path.with_suffix(".csv.tmp")
        with temporary.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        temporary.replace(self.csv_path)
        if self.score_column is not None:
            try:
                write_progress_png(self.rows, self.png_path, self.score_column)
            except Exception as err:  # a picture that cannot be drawn must not end a training
                logger.warning("could not draw %s: %s", self.png_path, err)

    def close(self) -> None:
        self.writer.close()
