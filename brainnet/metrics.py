"""Segmentation metrics (Dice, sensitivity, specificity), BraTS regions, label conversions.

**The Dice of brainnet** (``dice_labelmap``, :data:`DICE_DEFINITION`), the one number the training log,
``brainnet evaluate``, ``brainnet predict`` and the choice of ``best.pt`` all report: sigmoid probabilities
become the MSD label map that ``predict`` writes (:func:`probabilities_to_labels`: threshold, innermost
class wins); for each tumour class and BraTS region, ``2 tp / (2 tp + fp + fn)`` over the voxel counts of
that label map against the true labels (:func:`confusion_counts`, :func:`metrics_from_counts`), the
counts pooled over all the voxels scored together: every patch of a split (training log, ``evaluate``
overall), the patches of one case (``evaluate`` per case), or a whole scan (``predict``). The score of a
model (:func:`class_score`, the log's ``val_dice_labelmap``, what ``best.pt`` is chosen by) is the mean of
the class Dice. Why the label map and not each sigmoid channel on its own: the label map is what a
user gets; a channel's voxels that a more inner class overwrites are in no written file, so a per-channel
Dice scores a segmentation nobody sees.

One implementation per formula, in torch: every function accepts a ``numpy.ndarray`` or a
``torch.Tensor`` (numpy arrays are wrapped without a copy), so training metrics on torch batches and
evaluation of whole numpy scans share the same code. Label maps hold the canonical classes of a
:class:`~brainprep.spec.DatasetSpec` (the glioma family: 0 background, 1 edema, 2 non-enhancing tumour,
3 enhancing tumour, as MSD); one-hot tensors drop the background (the course's 3 sigmoid channels, one
per foreground class). The classes and regions scored are the spec's (``spec=``, default the MSD spec):
its foreground classes, then its regions (BraTS whole tumour, tumour core, enhancing tumour).

Empty structures (a case without enhancing tumour is common) follow the BraTS rule and never yield NaN:

=====================  ============  ============================  ===========================
truth / prediction     Dice          sensitivity tp/(tp+fn)        specificity tn/(tn+fp)
=====================  ============  ============================  ===========================
empty / empty          1.0           1.0 (nothing to find, none    usual formula
                                     claimed)
empty / non-empty      0.0           0.0 (claimed positives that   usual formula (< 1)
                                     do not exist)
non-empty / empty      0.0           0.0                           usual formula (1.0)
non-empty / non-empty  usual         usual                         usual formula
=====================  ============  ============================  ===========================

Specificity mirrors sensitivity on the negatives: when the truth has no negative voxel it is 1.0 if no
negative was predicted, else 0.0. With ``epsilon > 0`` (the course's 1e-5), :func:`dice_coefficient`
gives the same values up to ``epsilon`` without a special case: ``eps / eps = 1`` when both are empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TypeVar

import numpy as np
import torch

from brainprep.errors import InvalidValueError, ShapeMismatchError
from brainprep.spec import MSD_SPEC, DatasetSpec

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)

METRIC_NAMES: tuple[str, ...] = ("dice", "sensitivity", "specificity")
DICE_EPSILON = 1e-5
#: the name of the Dice of this module (see the module docstring) in every table header and log column.
DICE_NAME = "dice_labelmap"
DICE_DEFINITION = (
    f"{DICE_NAME}: Dice per class/region on the label map predict writes (threshold, innermost class wins), "
    "voxels pooled over the patches or scan scored"
)
#: the table header of each metric of :data:`METRIC_NAMES`.
METRIC_COLUMNS: Mapping[str, str] = MappingProxyType(
    {"dice": DICE_NAME, "sensitivity": "sensitivity", "specificity": "specificity"}
)


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Wrap ``x`` as a tensor (no copy for writable, native-endian, positively strided numpy arrays)."""
    if isinstance(x, torch.Tensor):
        return x
    x = np.asarray(x)
    if not x.flags.writeable or not x.dtype.isnative or any(stride < 0 for stride in x.strides):
        x = np.array(x, dtype=x.dtype.newbyteorder("="))  # torch cannot wrap these without a copy
    return torch.from_numpy(x)


def _like(result: torch.Tensor, original: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Return ``result`` as the type of ``original`` (numpy in, numpy out)."""
    return result if isinstance(original, torch.Tensor) else result.numpy()


def _as_float(x: torch.Tensor) -> torch.Tensor:
    # bool / integer masks are summed in float64 so voxel counts of whole scans stay exact.
    return x if x.is_floating_point() else x.to(torch.float64)


def _axes(x: torch.Tensor, axis: int | Sequence[int] | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.ndim))
    return (axis,) if isinstance(axis, int) else tuple(axis)


def _check_same_shape(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ShapeMismatchError(
            f"{name}: prediction and truth must have the same shape, found {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


def dice_coefficient(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    axis: int | Sequence[int] | None = None,
    epsilon: float = DICE_EPSILON,
    reduction: str = "mean",
) -> torch.Tensor:
    """Course's Dice ``(2 sum(p t) + eps) / (sum(p) + sum(t) + eps)``, sums over ``axis``.

    Meant for thresholded predictions (``probs > 0.5``); float inputs are used as they are. The course's
    formula for any axes and masks; the Dice brainnet reports is :func:`segmentation_metrics`' (module
    docstring), which equals this one with ``epsilon=0`` on the masks of the label map.

    Args:
        pred: prediction, bool or float, any shape (e.g. ``(B, C, X, Y, Z)``).
        target: truth of the same shape.
        axis: axes summed inside one Dice (``None``: all). For a batch, ``(2, 3, 4)`` gives one Dice per
            example and class, ``(0, 2, 3, 4)`` one per class.
        epsilon: smoothing; with ``0`` an empty-empty pair still scores 1.0 (see the module table).
        reduction: ``"mean"`` over the remaining axes (0-d tensor) or ``"none"`` (their shape).

    Returns:
        float tensor (float64 for bool / integer inputs) on the inputs' device.
    """
    p, t = _as_float(_as_tensor(pred)), _as_float(_as_tensor(target))
    _check_same_shape("dice_coefficient", p, t)
    if reduction not in ("mean", "none"):
        raise ValueError(f"dice_coefficient: reduction must be 'mean' or 'none', got {reduction!r}")
    axes = _axes(p, axis)
    numerator = 2.0 * (p * t).sum(dim=axes) + epsilon
    denominator = p.sum(dim=axes) + t.sum(dim=axes) + epsilon
    dice = torch.where(denominator == 0, torch.ones_like(denominator), numerator / denominator)
    return dice.mean() if reduction == "mean" else dice


def sensitivity_specificity(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    axis: int | Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Course's ``compute_class_sens_spec``: ``tp / (tp + fn)`` and ``tn / (tn + fp)``.

    Args:
        pred: bool mask (nonzero = positive), any shape, e.g. one class ``(X, Y, Z)`` or ``(C, X, Y, Z)``.
        target: bool mask of the same shape.
        axis: axes counted over (``None``: all); pass ``(1, 2, 3)`` on ``(C, X, Y, Z)`` for one value per
            class.

    Returns:
        ``(sensitivity, specificity)`` float64 tensors of the shape left after reducing ``axis``;
        empty positives / negatives follow the module table (no NaN).
    """
    p, t = _as_tensor(pred).bool(), _as_tensor(target).bool()
    _check_same_shape("sensitivity_specificity", p, t)
    axes = _axes(p, axis)
    tp = (p & t).sum(dim=axes).double()
    fn = (~p & t).sum(dim=axes).double()
    fp = (p & ~t).sum(dim=axes).double()
    tn = (~p & ~t).sum(dim=axes).double()
    return _ratio_or_rule(tp, fn, fp), _ratio_or_rule(tn, fp, fn)


def _ratio_or_rule(hits: torch.Tensor, misses: torch.Tensor, false_claims: torch.Tensor) -> torch.Tensor:
    """``hits / (hits + misses)``; where nothing existed: 1.0 without false claims, else 0.0."""
    total = hits + misses
    rule = (false_claims == 0).double()
    return torch.where(total > 0, hits / total.clamp(min=1), rule)


def labels_to_onehot(
    labels: ArrayLike,
    num_classes: int = MSD_SPEC.n_classes,
    axis: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ArrayLike:
    """Canonical label map -> one-hot without background (course: channel ``c`` is label ``c + 1``).

    Args:
        labels: integer labels in ``0..num_classes``, any shape (``(X, Y, Z)`` or a batch ``(B, X, Y, Z)``).
        num_classes: foreground classes (:attr:`~brainprep.spec.DatasetSpec.n_classes`, 3 for gliomas).
        axis: where the class axis goes: 0 gives ``(K, X, Y, Z)``; 1 on a batch gives ``(B, K, X, Y, Z)``.
        dtype: torch float dtype of the result (numpy input gives the matching numpy dtype).

    Returns:
        float one-hot of ``labels``' type (numpy or torch).
    """
    lab = _as_tensor(labels)
    if lab.is_floating_point() or lab.dtype == torch.bool:
        raise InvalidValueError(f"labels_to_onehot: labels must be an integer array, found {lab.dtype}")
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) > num_classes):
        found = sorted({int(v) for v in torch.unique(lab)} - set(range(num_classes + 1)))
        raise InvalidValueError(f"labels_to_onehot: label values must be in 0..{num_classes}, found {found}")
    onehot = torch.stack([lab == c for c in range(1, num_classes + 1)], dim=axis).to(dtype)
    return _like(onehot, labels)  # type: ignore[return-value]


def probabilities_to_labels(prob: ArrayLike, threshold: float = 0.5, axis: int = 0) -> ArrayLike:
    """Sigmoid probabilities -> one canonical label per voxel.

    The course's sigmoid channels are independent, so a voxel may pass the threshold in several.
    Rule: background (0) where no channel is strictly above ``threshold``; otherwise the latest class
    among those above it wins, which for the glioma classes is the innermost structure, following the
    BraTS nesting enhancing < core < whole tumour: enhancing (3) over non-enhancing (2) over edema (1)
    (a 4th class, a resection cavity or a cystic component, wins over all three). The outer classes'
    channels bleed inwards (a network trained on whole tumours lights the edema channel inside the core
    too): an argmax would then label the core as edema, while this rule keeps each inner class where its
    own channel sees it. The label map's class Dice is *not* the per-channel Dice of the course (an edema
    channel that also lights the core scores those voxels in a per-channel Dice, never in the label map):
    brainnet reports the label map's (module docstring).

    Args:
        prob: float ``(K, X, Y, Z)`` (or the class axis at ``axis``, e.g. 1 for a batch).
        threshold: a channel counts as present where ``prob > threshold``.
        axis: the class axis.

    Returns:
        uint8 labels, ``prob``'s shape without ``axis``, of ``prob``'s type (numpy or torch).
    """
    p = _as_tensor(prob)
    above = (p > threshold).movedim(axis, 0)
    labels = torch.zeros(above.shape[1:], dtype=torch.uint8, device=p.device)
    for channel in range(above.shape[0]):  # inner classes come later and overwrite
        # masked_fill, not labels[mask] = v: boolean indexing waits for the GPU on every training step
        labels = labels.masked_fill(above[channel], channel + 1)
    return _like(labels, prob)  # type: ignore[return-value]


def label_masks(
    labels: np.ndarray | torch.Tensor, groups: Mapping[str, Sequence[int]]
) -> dict[str, torch.Tensor]:
    """Bool mask per named group of labels, e.g. ``label_masks(y, spec.region_classes)``."""
    lab = _as_tensor(labels)
    masks: dict[str, torch.Tensor] = {}
    for name, values in groups.items():
        mask = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
        for v in values:
            mask |= lab == v
        masks[name] = mask
    return masks


def onehot_to_regions(onehot: ArrayLike, axis: int = 0, spec: DatasetSpec = MSD_SPEC) -> ArrayLike:
    """One-hot of the spec's foreground classes -> bool regions of the spec, in its order.

    For gliomas: whole tumour = any channel, tumour core = non-enhancing | enhancing, enhancing =
    enhancing. Works on thresholded sigmoid outputs as well (``probs > 0.5``), where channels may overlap.
    """
    channels = _as_tensor(onehot).bool().unbind(dim=axis)
    regions = []
    for members in spec.region_classes.values():
        mask = channels[members[0] - 1]
        for c in members[1:]:
            mask = mask | channels[c - 1]
        regions.append(mask)
    return _like(torch.stack(regions, dim=axis), onehot)  # type: ignore[return-value]


def confusion_counts(
    pred_labels: np.ndarray | torch.Tensor,
    true_labels: np.ndarray | torch.Tensor,
    spec: DatasetSpec = MSD_SPEC,
) -> torch.Tensor:
    """Voxel counts of the label-map Dice: tp, fp, fn, tn per target of ``spec.targets``.

    Counts add up: the counts of several patches summed are the counts of the patches taken together.

    Args:
        pred_labels, true_labels: integer canonical labels of the same shape, any (a scan ``(X, Y, Z)``
            or a batch ``(B, X, Y, Z)``).
        spec: whose classes and regions are counted.

    Returns:
        int64 ``(T, 4)`` (T targets: classes then regions, 6 for gliomas; columns tp, fp, fn, tn) on
        the inputs' device.
    """
    pred, true = _as_tensor(pred_labels), _as_tensor(true_labels)
    _check_same_shape("confusion_counts", pred, true)
    groups = spec.groups
    pred_masks, true_masks = label_masks(pred, groups), label_masks(true, groups)
    rows = []
    for name in groups:
        p, t = pred_masks[name], true_masks[name]
        tp, predicted, present = (p & t).sum(), p.sum(), t.sum()
        fp, fn = predicted - tp, present - tp
        rows.append(torch.stack([tp, fp, fn, pred.numel() - tp - fp - fn]))
    return torch.stack(rows).to(torch.int64)


def label_map_counts(
    probabilities: torch.Tensor,
    onehot: torch.Tensor,
    threshold: float = 0.5,
    axis: int = 1,
    spec: DatasetSpec = MSD_SPEC,
) -> torch.Tensor:
    """:func:`confusion_counts` of the label map ``predict`` would write from ``probabilities``.

    Args:
        probabilities: float sigmoid outputs, class axis at ``axis`` (a batch ``(B, K, X, Y, Z)``).
        onehot: the true one-hot of the same shape (as :func:`brainnet.data.dataset.to_training_batch`).
        threshold: see :func:`probabilities_to_labels`.
        spec: whose classes and regions are counted (K = ``spec.n_classes``).

    Returns:
        int64 ``(T, 4)`` on the inputs' device (no device synchronisation).
    """
    pred = probabilities_to_labels(probabilities, threshold, axis=axis)
    return confusion_counts(pred, probabilities_to_labels(onehot, 0.5, axis=axis), spec)


def metrics_from_counts(
    counts: np.ndarray | torch.Tensor, spec: DatasetSpec = MSD_SPEC
) -> dict[str, dict[str, float]]:
    """``{target: {"dice", "sensitivity", "specificity"}}`` from the ``(T, 4)`` :func:`confusion_counts`
    of ``spec``.

    Dice is exact (no epsilon); empty structures follow the module table.
    """
    counts = _as_tensor(counts)
    if counts.shape[0] != len(spec.targets):
        raise ShapeMismatchError(
            f"metrics_from_counts: {len(spec.targets)} rows expected ({spec.convention} targets), "
            f"found {counts.shape[0]}"
        )
    tp, fp, fn, tn = counts.to(torch.float64).cpu().unbind(-1)
    denominator = 2 * tp + fp + fn
    dice = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.ones_like(denominator))
    sensitivity, specificity = _ratio_or_rule(tp, fn, fp), _ratio_or_rule(tn, fp, fn)
    return {
        name: {
            "dice": float(dice[i]),
            "sensitivity": float(sensitivity[i]),
            "specificity": float(specificity[i]),
        }
        for i, name in enumerate(spec.targets)
    }


def class_score(metrics: Mapping[str, Mapping[str, float]], spec: DatasetSpec = MSD_SPEC) -> float:
    """The score of a model: the mean label-map Dice of the spec's foreground classes (``best.pt`` is
    chosen by it)."""
    return float(np.mean([metrics[name]["dice"] for name in spec.foreground]))


def segmentation_metrics(
    pred_labels: np.ndarray | torch.Tensor,
    true_labels: np.ndarray | torch.Tensor,
    spec: DatasetSpec = MSD_SPEC,
) -> dict[str, dict[str, float]]:
    """Dice, sensitivity and specificity per class and per region of one scan.

    :func:`metrics_from_counts` of :func:`confusion_counts`: the label-map Dice of the module docstring.

    Args:
        pred_labels: predicted canonical labels, integer ``(X, Y, Z)``.
        true_labels: true canonical labels, same shape.
        spec: whose classes and regions are scored.

    Returns:
        ``{name: {"dice", "sensitivity", "specificity"}}`` for the names of ``spec.targets`` (gliomas:
        edema, non_enhancing, enhancing, whole_tumour, tumour_core, enhancing_tumour), plain floats.
    """
    return metrics_from_counts(confusion_counts(pred_labels, true_labels, spec), spec)


__all__ = [
    "DICE_DEFINITION",
    "DICE_EPSILON",
    "DICE_NAME",
    "METRIC_COLUMNS",
    "METRIC_NAMES",
    "class_score",
    "confusion_counts",
    "dice_coefficient",
    "label_map_counts",
    "label_masks",
    "labels_to_onehot",
    "metrics_from_counts",
    "onehot_to_regions",
    "probabilities_to_labels",
    "segmentation_metrics",
    "sensitivity_specificity",
]
