"""Evaluate a checkpoint on a store split: Dice, sensitivity and specificity per class and BraTS region.

The Dice is the label-map Dice of :mod:`brainnet.metrics` (``dice_labelmap``), the one the training log
reports and ``best.pt`` is chosen by. What is scored depends on the store's kind:

- a patch store: every stored patch of the split, predicted as a whole. Per case, the metrics are over
  all of the case's patches taken together (patches may overlap; each is counted as cut).
- a volume store: every case of the split over its whole stored crop (the brain's bounding box), by the
  sliding window of :func:`brainnet.predict.predict_volume` (the model's window, overlap 0.5, Gaussian
  blending, the brain mask) over the box :func:`brainnet.predict.predict_case` slides over, so these are
  whole-scan numbers: the crop holds every brain voxel, and outside it prediction and truth are both
  background (only the specificity's true negatives differ from a prediction over the whole scan).

Overall metrics come from the voxel counts of :func:`~brainnet.metrics.confusion_counts` summed over the
split, so evaluating a large store never holds more than one case in memory, and give the same numbers
as :func:`~brainnet.metrics.segmentation_metrics` on the concatenation.
"""

from __future__ import annotations

import contextlib
import csv
import io
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
from brainnet.predict import model_probabilities, predict_volume
from brainprep.errors import ConfigError, StoreMismatchError
from brainprep.files import replacing
from brainprep.spec import MSD_SPEC, DatasetSpec
from brainprep.volume import Crop, axis_hits, crop_from_hits, cut_crop, window_parts

logger = logging.getLogger(__name__)

OVERALL = "overall"
PATCHES, CROPS = "patches", "crops"


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
            # the (X, Y) slice's shape, not the displayed (Y, X) one: non-square slices differ
            shown = np.zeros(np.shape(row.image), dtype=np.uint8) if labels is None else labels
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
    try:
        with replacing(path) as temporary:  # a failed or killed write leaves no half picture
            figure.savefig(temporary, dpi=100, facecolor=figure.get_facecolor())
    finally:
        plt.close(figure)
    return path


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics of one split.

    Attributes:
        split: the evaluated split.
        overall: ``{target: {metric: value}}`` over the whole split.
        cases: ``{case_id: {target: {metric: value}}}``.
        counts: what was scored per case, in :attr:`unit`: its patches (a patch store) or 1, its whole
            crop (a volume store).
        overlays: a few slices drawn by :func:`draw_overlays`.
        spec: the store's dataset spec (the classes and regions scored).
        unit: ``"patches"`` or ``"crops"``.
    """

    split: str
    overall: dict[str, dict[str, float]]
    cases: dict[str, dict[str, dict[str, float]]]
    counts: dict[str, int]
    overlays: list[OverlayRow] = field(default_factory=list, repr=False)
    spec: DatasetSpec = MSD_SPEC
    unit: str = PATCHES

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
            "unit": self.unit,
            "counts": self.counts,
        }


def _overlay_row(title: str, image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> OverlayRow:
    """The axial slice of (4, X, Y, Z) ``image`` with the most true plus predicted tumour."""
    tumour = (truth > 0).sum(axis=(0, 1)) + (pred > 0).sum(axis=(0, 1))
    z = int(np.argmax(tumour))
    return OverlayRow(f"{title} z={z}", image[0, :, :, z], truth[:, :, z], pred[:, :, z])


@dataclass(frozen=True)
class _Scored:
    """One case's prediction: (N, X, Y, Z) truth and labels (N patches, or N = 1: the whole crop), the
    (N, 4, X, Y, Z) images and the title of each item's picture."""

    case_id: str
    truth: np.ndarray
    predicted: np.ndarray
    images: Any
    titles: list[str]


def _n_cases(store: Any, split: str, volumes: bool) -> int:
    """Cases of ``split`` that hold something to score."""
    if volumes:
        return len(store.case_indices(split))
    return len(np.unique(np.asarray(store.table.case)[store.patch_indices(split=split)]))


def _score_patches(model: torch.nn.Module, store: Any, split: str, options: dict[str, Any]):
    """Yield a :class:`_Scored` per case of a patch store: every patch of ``split``, predicted whole."""
    slots = store.patch_indices(split=split)
    if len(slots) == 0:
        raise ConfigError(f"store {store.location} has no patches in split {split!r}")
    case_of_slot = np.asarray(store.table.case)[slots]
    case_ids = store.case_ids
    batch_size = options["batch_size"]
    for case_index in np.unique(case_of_slot):
        case_slots = slots[case_of_slot == case_index]
        images, truth = store.read_patches(case_slots)
        predicted = np.empty_like(truth)
        for first in range(0, len(case_slots), batch_size):
            batch = torch.from_numpy(np.asarray(images[first : first + batch_size], dtype=np.float32))
            probabilities = model_probabilities(model, batch, options["amp"], options["amp_dtype"]).cpu()
            predicted[first : first + batch_size] = probabilities_to_labels(
                probabilities, options["threshold"], axis=1
            ).numpy()
        case_id = case_ids.get(int(case_index), f"case{int(case_index)}")
        yield _Scored(case_id, truth, predicted, images, [f"{case_id} slot {int(k)}" for k in case_slots])


def _window_box(
    crop: Crop, brain: np.ndarray, source_shape: tuple[int, ...], window: tuple[int, ...]
) -> Crop | None:
    """The box :func:`brainnet.predict.brain_box` slides ``window`` over on the case's scan, in the
    coordinates of its stored ``crop`` (``None`` when the crop holds no brain voxel).

    The store widened its crop to its own patch size: a model trained with another window slides over
    another box (wider, narrower or placed elsewhere where the brain is shorter than either), and its
    labels differ from ``predict``'s unless the box is the same. Outside the crop the scan is background,
    which the crop is stored relative to: zeros, as the box's padding is.
    """
    hits = [np.zeros(int(n), dtype=bool) for n in source_shape]
    for axis, planes in enumerate(axis_hits(brain)):
        hits[axis][np.flatnonzero(planes) + crop.offset[axis]] = True  # brain voxels lie on the scan
    box = crop_from_hits(tuple(hits), tuple(source_shape), window)  # type: ignore[arg-type]
    if box is None:
        return None
    offset = tuple(int(b) - int(c) for b, c in zip(box.offset, crop.offset, strict=True))
    return Crop(offset, box.shape, box.padding)  # type: ignore[arg-type]


def _score_crops(model: torch.nn.Module, store: Any, split: str, options: dict[str, Any]):
    """Yield a :class:`_Scored` per case of a volume store: its whole crop by the sliding window of
    ``options["window"]`` (the model's training windows; default the store's patch size), standardized as
    ``options["standardize"]`` (the model's training windows) or the store's method."""
    from brainprep.standardize import brain_mask

    indices = store.case_indices(split)
    if len(indices) == 0:
        raise ConfigError(f"store {store.location} has no cases in split {split!r}")
    params = store.params
    if options.get("standardize") is not None:  # a volume store reads with either method
        params = params.replace(standardize=params.standardize.replace(method=options["standardize"]))
    window = tuple(options.get("window") or params.sampling.patch_size)
    per_window = params.standardize.method == "patch-slice"
    case_ids = store.case_ids
    for index in indices:
        raw, truth = store.read_volume(int(index))
        if per_window:  # the predictor standardizes each window as the training windows were
            volume = np.asarray(raw, dtype=np.float32)
        else:
            # the crop read once: standardized with the case's stored statistics, as read_volume would
            # (in float32, as training's windows: the store rounded the raw values, not these)
            volume = np.asarray(store.standardize(int(index), raw, params.standardize.method), np.float32)
        # the crop is stored relative to the case's background: the brain is its nonzero voxels
        brain = brain_mask(raw, 0.0)
        source_shape = tuple(store.cases[int(index)]["source_shape"])[-3:]
        box = _window_box(store.crop(int(index)), brain, source_shape, window)
        predicted = np.zeros(truth.shape, dtype=np.uint8)
        if box is not None:  # no brain voxel: predict runs no window either, and predicts background
            labels, _ = predict_volume(
                model,
                cut_crop(volume, box),
                params,
                cut_crop(brain, box),
                window,  # type: ignore[arg-type]
                batch_size=options["batch_size"],
                threshold=options["threshold"],
                amp=options["amp"],
                amp_dtype=options["amp_dtype"],
            )
            # every predicted voxel is a brain voxel (the mask), and the crop holds them all
            inside, part = window_parts(truth.shape, box.offset, box.shape)  # type: ignore[misc]
            predicted[inside] = labels[part]
        case_id = case_ids.get(int(index), f"case{int(index)}")
        yield _Scored(case_id, truth[None], predicted[None], raw[None], [f"{case_id} crop"])


def check_model_spec(model_spec: DatasetSpec, store_spec: DatasetSpec, location: Any) -> None:
    """Refuse to score a model on a store of other classes or channels (in another order included): its
    outputs would be compared with the wrong classes, or fed the wrong scans, and no number would say so.

    Raises:
        StoreMismatchError: the class names or the channel names differ.
    """
    for what in ("classes", "channels"):
        mine, theirs = getattr(model_spec, what), getattr(store_spec, what)
        if tuple(mine) != tuple(theirs):
            raise StoreMismatchError(
                f"the model was trained on {what} {', '.join(mine)}, the store {location} holds "
                f"{', '.join(theirs)}: its scores would be of other {what}"
            )


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
    model_spec: DatasetSpec | None = None,
    standardize: str | None = None,
    window: tuple[int, int, int] | None = None,
) -> EvaluationResult:
    """Predict ``split`` of the store and score it against the stored labels (the module docstring says
    what is scored for each store kind).

    Args:
        model: the network, on its device (put in eval mode here).
        store: an open store (:func:`~brainprep.store.open_store`): a patch store or a volume store.
        split: ``train`` or ``val``.
        batch_size: patches (windows) per forward pass.
        threshold: probability threshold of :func:`~brainnet.metrics.probabilities_to_labels`.
        amp, amp_dtype: autocast on CUDA (see :func:`~brainnet.predict.model_probabilities`); the
            training's settings reproduce its validation numbers.
        n_overlays: cases to draw (the slice with the most tumour of the most tumorous patch or crop of
            each of the first cases).
        model_spec: the dataset spec the model was trained on (:attr:`LoadedModel.spec`), checked
            against the store's: output channel ``k`` is the model's class ``k + 1``.
        standardize: the method the model's training windows were standardized with (its checkpoint's
            ``build_params.standardize.method``); a volume store's crops are standardized so (default: the
            store's method). A patch store holds its patches standardized once: this is unused there
            (``brainnet evaluate`` warns when the two differ).
        window: the sliding window over a volume store's crops: the model's training windows (its
            checkpoint's ``build_params.sampling.patch_size``, the window ``predict`` slides), so that a
            case scores as ``predict`` segments it (default: the store's patch size). Unused on a patch
            store, whose patches are predicted whole.

    Raises:
        StoreMismatchError: ``model_spec`` names other classes or channels than the store's.
    """
    from brainnet.train.loop import is_volume_store

    if model_spec is not None:
        check_model_spec(model_spec, store.spec, store.location)
    model.eval()
    options = {
        "batch_size": batch_size,
        "threshold": threshold,
        "amp": amp,
        "amp_dtype": amp_dtype,
        "standardize": standardize,
        "window": window,
    }
    volumes = is_volume_store(store)
    scored = (_score_crops if volumes else _score_patches)(model, store, split, options)
    if progress:
        from tqdm.auto import tqdm

        scored = tqdm(scored, total=_n_cases(store, split, volumes), desc=f"evaluate {split}", unit="case")
    spec = store.spec
    total = torch.zeros((len(spec.targets), 4), dtype=torch.int64)
    cases: dict[str, dict[str, dict[str, float]]] = {}
    counts: dict[str, int] = {}
    overlays: list[OverlayRow] = []
    for case in scored:
        case_counts = confusion_counts(case.predicted, case.truth, spec)
        cases[case.case_id] = metrics_from_counts(case_counts, spec)
        counts[case.case_id] = len(case.truth)
        total += case_counts
        if len(overlays) < n_overlays:
            best = int(np.argmax((case.truth > 0).sum(axis=(1, 2, 3))))
            image = np.asarray(case.images[best])
            overlays.append(_overlay_row(case.titles[best], image, case.truth[best], case.predicted[best]))
    unit = CROPS if volumes else PATCHES
    return EvaluationResult(split, metrics_from_counts(total, spec), cases, counts, overlays, spec, unit)


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
    ``overlay.png`` into ``out_dir``; returns their paths by kind.

    All or nothing: every file is written under a temporary name first and renamed once all are, so a
    failure (a full disk, the picture) leaves the folder's previous evaluation as it was, never new
    metrics beside an old picture. A result without overlays removes a previous ``overlay.png``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["case", result.unit, "target", *(METRIC_COLUMNS[m] for m in METRIC_NAMES)])
    n_all = sum(result.counts.values())
    for case_id, metrics in [*result.cases.items(), (OVERALL, result.overall)]:
        n = result.counts.get(case_id, n_all)
        for target in result.spec.targets:
            writer.writerow([case_id, n, target, *(f"{metrics[target][m]:.6f}" for m in METRIC_NAMES)])
    paths = {"csv": out_dir / "metrics.csv", "json": out_dir / "metrics.json"}
    picture = out_dir / "overlay.png"
    with contextlib.ExitStack() as outputs:  # each temporary is renamed when the block ends without error
        outputs.enter_context(replacing(paths["csv"])).write_text(table.getvalue(), encoding="utf-8")
        document = json.dumps({**(extra or {}), **result.to_dict()}, indent=2)
        outputs.enter_context(replacing(paths["json"])).write_text(document, encoding="utf-8")
        if result.overlays:
            draw_overlays(result.overlays, outputs.enter_context(replacing(picture)), result.spec)
            paths["png"] = picture
    if not result.overlays:
        picture.unlink(missing_ok=True)  # a previous run's picture of another prediction
    return paths
