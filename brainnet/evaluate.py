"""Evaluate a checkpoint on a store split: Dice, sensitivity and specificity per class and BraTS region.

The Dice is the label-map Dice of :mod:`brainnet.metrics` (``dice_labelmap``), the one the training log
reports and ``best.pt`` is chosen by. Per case, the metrics are over all of the case's patches of the split
taken together (patches may overlap; each is counted as cut). Overall metrics come from the voxel counts
of :func:`~brainnet.metrics.confusion_counts` summed over every patch of the split, so evaluating a large
store never holds more than one case in memory, and give the same numbers as
:func:`~brainnet.metrics.segmentation_metrics` on the concatenation.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainnet.metrics import (
    DICE_DEFINITION,
    DICE_NAME,
    METRIC_COLUMNS,
    METRIC_NAMES,
    class_score,
    confusion_counts,
    metrics_from_counts,
    probabilities_to_labels,
)
from brainnet.predict import model_probabilities
from brainprep.errors import ConfigError
from brainprep.spec import MSD_SPEC, DatasetSpec

logger = logging.getLogger(__name__)

OVERALL = "overall"


@dataclass(frozen=True)
class OverlayRow:
    """One picture row: an axial slice with the truth and the prediction.

    Attributes:
        title: row title.
        image: float (X, Y) slice shown in grey (FLAIR).
        truth: uint8 (X, Y) MSD labels, or ``None`` when unknown.
        prediction: uint8 (X, Y) MSD labels.
    """

    title: str
    image: np.ndarray
    truth: np.ndarray | None
    prediction: np.ndarray


def draw_overlays(rows: list[OverlayRow], path: Path, spec: DatasetSpec = MSD_SPEC) -> Path:
    """PNG with one row per axial slice: image, truth over image, prediction over image.

    Same colours (edema red, non-enhancing green, enhancing blue) and radiological orientation as
    ``brainprep show``: drawn by its ``overlay_rgb`` and ``plane_slice``; the legend names ``spec``'s
    classes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from brainprep.show import LABEL_COLOURS, overlay_rgb, plane_slice

    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False, facecolor="black")
    for row, ax_row in zip(rows, axes, strict=True):
        grey = plane_slice(np.asarray(row.image, dtype=np.float32)[:, :, None], "axial", 0)
        panels = (("image", None), ("truth", row.truth), ("prediction", row.prediction))
        for ax, (name, labels) in zip(ax_row, panels, strict=True):
            shown = np.zeros(grey.shape, dtype=np.uint8) if labels is None else labels
            ax.imshow(overlay_rgb(grey, plane_slice(shown[:, :, None], "axial", 0)), interpolation="nearest")
            title = f"{row.title}: {name}" if name == "image" else name
            if name == "truth" and labels is None:
                title = "truth: not available"
            ax.set_title(title, fontsize=8, color="white")
            ax.axis("off")
    figure.legend(
        handles=[Patch(color=LABEL_COLOURS[i + 1] / 255.0, label=n) for i, n in enumerate(spec.foreground)],
        loc="lower center",
        ncol=spec.n_classes,
        fontsize=8,
        facecolor="black",
        labelcolor="white",
    )
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, facecolor=figure.get_facecolor())
    plt.close(figure)
    return path


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics of one split.

    Attributes:
        split: the evaluated split.
        overall: ``{target: {metric: value}}`` over all patches.
        cases: ``{case_id: {target: {metric: value}}}``.
        patches: patches per case.
        overlays: a few patches drawn by :func:`draw_overlays`.
        spec: the store's dataset spec (the classes and regions scored).
    """

    split: str
    overall: dict[str, dict[str, float]]
    cases: dict[str, dict[str, dict[str, float]]]
    patches: dict[str, int]
    overlays: list[OverlayRow] = field(default_factory=list, repr=False)
    spec: DatasetSpec = MSD_SPEC

    @property
    def score(self) -> float:
        """:func:`~brainnet.metrics.class_score` of :attr:`overall` (the log's ``val_dice_labelmap``)."""
        return class_score(self.overall, self.spec)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "dice_definition": DICE_DEFINITION,
            "score": self.score,
            "overall": self.overall,
            "cases": self.cases,
            "patches": self.patches,
        }


def _overlay_row(
    case_id: str, slot: int, image: np.ndarray, truth: np.ndarray, pred: np.ndarray
) -> OverlayRow:
    tumour = (truth > 0).sum(axis=(0, 1)) + (pred > 0).sum(axis=(0, 1))
    z = int(np.argmax(tumour))
    return OverlayRow(f"{case_id} slot {slot} z={z}", image[0, :, :, z], truth[:, :, z], pred[:, :, z])


def evaluate_store(
    model: torch.nn.Module,
    store: Any,
    split: str = "val",
    *,
    batch_size: int = 4,
    threshold: float = 0.5,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    n_overlays: int = 4,
    progress: bool = False,
) -> EvaluationResult:
    """Predict every patch of ``split`` and score it against the stored labels.

    Args:
        model: the network, on its device (put in eval mode here).
        store: an open :class:`~brainprep.store.reader.PatchStore`.
        split: ``train`` or ``val``.
        batch_size: patches per forward pass.
        threshold: probability threshold of :func:`~brainnet.metrics.probabilities_to_labels`.
        amp, amp_dtype: autocast on CUDA (see :func:`~brainnet.predict.model_probabilities`); the
            training's settings reproduce its validation numbers.
        n_overlays: patches to keep for the picture (the most tumorous patch of the first cases).
    """
    slots = store.patch_indices(split=split)
    if len(slots) == 0:
        raise ConfigError(f"store {store.location} has no patches in split {split!r}")
    model.eval()
    case_of_slot = np.asarray(store.table.case)[slots]
    case_ids = {int(c["index"]): str(c["case_id"]) for c in store.cases}
    spec = store.spec
    total = torch.zeros((len(spec.targets), 4), dtype=torch.int64)
    cases: dict[str, dict[str, dict[str, float]]] = {}
    patches: dict[str, int] = {}
    overlays: list[OverlayRow] = []
    groups = np.unique(case_of_slot)
    if progress:
        from tqdm.auto import tqdm

        groups = tqdm(groups, desc=f"evaluate {split}", unit="case")
    for case_index in groups:
        case_slots = slots[case_of_slot == case_index]
        images, truth = store.read_patches(case_slots)
        predicted = np.empty_like(truth)
        for first in range(0, len(case_slots), batch_size):
            batch = torch.from_numpy(np.asarray(images[first : first + batch_size], dtype=np.float32))
            probabilities = model_probabilities(model, batch, amp, amp_dtype).cpu()
            predicted[first : first + batch_size] = probabilities_to_labels(
                probabilities, threshold, axis=1
            ).numpy()
        case_id = case_ids.get(int(case_index), f"case{int(case_index)}")
        counts = confusion_counts(predicted, truth, spec)
        cases[case_id] = metrics_from_counts(counts, spec)
        patches[case_id] = len(case_slots)
        total += counts
        if len(overlays) < n_overlays:
            best = int(np.argmax((truth > 0).sum(axis=(1, 2, 3))))
            overlays.append(
                _overlay_row(
                    case_id, int(case_slots[best]), np.asarray(images[best]), truth[best], predicted[best]
                )
            )
    return EvaluationResult(split, metrics_from_counts(total, spec), cases, patches, overlays, spec)


def _short_name(target: str) -> str:
    """Column header of a target: initials of a compound name (``tumour_core`` -> TC), else the first two
    letters (``edema`` -> ED)."""
    words = target.split("_")
    return "".join(w[0] for w in words).upper() if len(words) > 1 else target[:2].upper()


def format_table(result: EvaluationResult) -> str:
    """Plain-text tables: overall Dice / sensitivity / specificity per target, then Dice per case.

    The header names the Dice (:data:`~brainnet.metrics.DICE_DEFINITION`); the score line is the number
    the training log calls ``val_dice_labelmap``.
    """
    targets = result.spec.targets
    width = max(len(t) for t in targets)
    columns = [METRIC_COLUMNS[m] for m in METRIC_NAMES]
    lines = [DICE_DEFINITION, "", f"{'target':<{width}}  " + "  ".join(f"{c:>13}" for c in columns)]
    for target in targets:
        values = "  ".join(f"{result.overall[target][m]:>13.4f}" for m in METRIC_NAMES)
        lines.append(f"{target:<{width}}  {values}")
    classes = ", ".join(result.spec.foreground)
    lines.append(f"score (mean {DICE_NAME} of {classes}; best.pt is chosen by it): {result.score:.4f}")
    id_width = max([len(OVERALL), *(len(c) for c in result.cases)])
    short = [_short_name(t) for t in targets]
    lines += ["", f"{DICE_NAME} per case", f"{'case':<{id_width}}  " + "  ".join(f"{s:>6}" for s in short)]
    for case_id, metrics in [*result.cases.items(), (OVERALL, result.overall)]:
        lines.append(f"{case_id:<{id_width}}  " + "  ".join(f"{metrics[t]['dice']:>6.3f}" for t in targets))
    return "\n".join(lines)


def write_evaluation(
    result: EvaluationResult, out_dir: Path, extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``metrics.csv`` (one row per case and target, ``overall`` last), ``metrics.json`` and
    ``overlay.png`` into ``out_dir``; returns their paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "metrics.csv"
    with csv_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["case", "patches", "target", *(METRIC_COLUMNS[m] for m in METRIC_NAMES)])
        n_all = sum(result.patches.values())
        for case_id, metrics in [*result.cases.items(), (OVERALL, result.overall)]:
            n = result.patches.get(case_id, n_all)
            for target in result.spec.targets:
                writer.writerow([case_id, n, target, *(f"{metrics[target][m]:.6f}" for m in METRIC_NAMES)])
    json_path = out_dir / "metrics.json"
    json_path.write_text(json.dumps({**(extra or {}), **result.to_dict()}, indent=2))
    paths = {"csv": csv_path, "json": json_path}
    if result.overlays:
        paths["png"] = draw_overlays(result.overlays, out_dir / "overlay.png", result.spec)
    return paths
