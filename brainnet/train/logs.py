"""Per-epoch CSV log and TensorBoard scalars of a run folder (written by rank 0 only)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainnet.train.progress import BEST_COLUMN, PNG_NAME, write_progress_png

logger = logging.getLogger(__name__)

CSV_NAME = "log.csv"
TENSORBOARD_DIR = "tensorboard"


class RunLogger:
    """Writes one CSV row per epoch to ``RUN_DIR/log.csv``, TensorBoard scalars, and redraws
    ``RUN_DIR/progress.png`` (:mod:`brainnet.train.progress`; ``score_column``: the column ``best.pt`` is
    chosen by, marked there; ``None``: no picture).

    On resume ``history`` holds the checkpoint's rows (its ``history``, one per epoch it completed), and
    both files are rewritten from them at once: the checkpoint, written before the log, is the record, so
    a run killed between the two, a row of a later epoch or a deleted ``log.csv`` all come back as the
    checkpoint's epochs. ``resume_step`` (the checkpoint's steps) drops later TensorBoard scalars.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        history: Sequence[Mapping[str, Any]] = (),
        resume_step: int = 0,
        score_column: str | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.score_column = score_column
        self.png_path = Path(out_dir) / PNG_NAME
        self.csv_path = Path(out_dir) / CSV_NAME
        self.rows: list[dict[str, Any]] = [dict(row) for row in history]  # copies: the caller appends its own
        self.writer = SummaryWriter(
            str(Path(out_dir) / TENSORBOARD_DIR), purge_step=resume_step if resume_step > 0 else None
        )
        if self.rows:
            self._write()

    def step(self, values: dict[str, float], global_step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step)

    def epoch(self, row: dict[str, Any]) -> None:
        """Record one finished epoch (``row`` holds ``epoch``, ``global_step`` and metrics)."""
        self.rows.append(row)
        for name, value in row.items():
            if name not in ("epoch", "global_step", BEST_COLUMN) and isinstance(value, int | float):
                self.writer.add_scalar(f"epoch/{name}", value, int(row["global_step"]))
        self.writer.flush()
        self._write()

    def _write(self) -> None:
        """Rewrite ``log.csv`` (atomically) and ``progress.png`` from the rows."""
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
