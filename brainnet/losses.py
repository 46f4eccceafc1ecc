"""The course's soft Dice loss, in PyTorch.

Course (Keras), for one example ``y_true, y_pred`` of shape ``(num_classes, x, y, z)``::

    dice_numerator   = 2 * K.sum(y_true * y_pred, axis=(1, 2, 3)) + epsilon
    dice_denominator = K.sum(y_true**2, axis=(1, 2, 3)) + K.sum(y_pred**2, axis=(1, 2, 3)) + epsilon
    dice_loss        = 1 - K.mean(dice_numerator / dice_denominator)

i.e. one Dice per class over the spatial axes, averaged over classes. (When the course compiles the model
it passes the same function with its default ``axis=(1, 2, 3)`` to Keras, which on a 5-D batch
``(B, C, x, y, z)`` sums over classes, x and y and averages per (example, z-slice): a quirk we do not copy.)

Batches here are ``(B, C, X, Y, Z)``. The default ``axis=(2, 3, 4)`` computes one Dice per
(example, class) and averages over examples *and* classes: exactly the course's loss of each example,
averaged over the batch. ``axis=(0, 2, 3, 4)`` gives the "batch Dice" variant (one Dice per class, sums
over the whole batch, as nnU-Net's ``batch_dice``), averaged over classes.

Both keep the course's squared denominator, ``sum t^2 + sum p^2``. nnU-Net's own soft Dice
(``MemoryEfficientSoftDiceLoss``, nnunetv2/training/loss/dice.py) sums ``t + p`` without squares, with a
smooth term of 1e-5 in both parts: that is ``dice="nnunet"`` (the batch axes, the linear denominator), and
with ``bce_weight=1`` nnU-Net's region loss ``DC_and_BCE_loss`` (``batch_dice``, ``do_bg=True``, smooth
1e-5), up to its constant: nnU-Net minimizes ``-mean(dc)``, this ``1 - mean(dc)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from brainprep.errors import ShapeMismatchError

SPATIAL_AXES: tuple[int, int, int] = (2, 3, 4)
BATCH_AXES: tuple[int, int, int, int] = (0, 2, 3, 4)
DICE_EPSILON = 1e-5
#: ``TrainConfig.dice``: the axes one Dice sums over. ``sample`` (the course): per (example, class), so an
#: example without a class gives ``eps / (sum p^2 + eps)``, a loss near 1 whose gradient (about
#: ``2 eps p / (sum p^2)^2``) vanishes: false positives on a tumour-free window are not penalized.
#: ``batch`` (the axes of nnU-Net's ``batch_dice``): per class over the whole batch, where they add to the
#: denominator. Both with the course's squared denominator (see the module docstring).
#: ``nnunet``: the ``batch`` axes with nnU-Net's linear denominator ``sum t + sum p``.
DICE_AXES: dict[str, tuple[int, ...]] = {"sample": SPATIAL_AXES, "batch": BATCH_AXES, "nnunet": BATCH_AXES}
#: whether a mode's denominator squares its terms (the course's) or sums them (nnU-Net's)
DICE_SQUARED: dict[str, bool] = {"sample": True, "batch": True, "nnunet": False}


def soft_dice_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    axis: Sequence[int] = SPATIAL_AXES,
    epsilon: float = DICE_EPSILON,
    sum_across: Callable[[torch.Tensor], torch.Tensor] | None = None,
    squared: bool = True,
) -> torch.Tensor:
    """``1 - mean((2 sum(p t) + eps) / (sum(t^2) + sum(p^2) + eps))``, sums over ``axis``
    (``squared=False``: ``sum(t) + sum(p)`` in the denominator, nnU-Net's).

    Args:
        pred: probabilities, float ``(B, C, X, Y, Z)`` (any shape equal to ``target``'s works).
        target: one-hot float of the same shape.
        axis: axes summed inside one Dice; the mean runs over all remaining axes.
        epsilon: smoothing added to numerator and denominator (course: 1e-5).
        sum_across: applied to the stacked sums ``(sum p t, sum t^2, sum p^2)`` before the ratio, e.g. a
            differentiable all-reduce over DDP ranks (:func:`brainnet.train.distributed.sum_across_ranks`)
            so that a batch Dice sums over every rank's batch.
        squared: the course's squared denominator terms; ``False``: nnU-Net's plain sums.

    Returns:
        0-d float tensor, differentiable with respect to ``pred``.
    """
    if pred.shape != target.shape:
        raise ShapeMismatchError(
            f"soft_dice_loss: pred and target must have the same shape, found {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    axis = tuple(axis)
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()  # sums of ~400k squared voxels overflow / lose precision in half
    target = target.to(pred.dtype)
    if squared:
        sums = torch.stack(
            [(pred * target).sum(dim=axis), (target * target).sum(dim=axis), (pred * pred).sum(dim=axis)]
        )
    else:
        sums = torch.stack([(pred * target).sum(dim=axis), target.sum(dim=axis), pred.sum(dim=axis)])
    if sum_across is not None:
        sums = sum_across(sums)
    numerator = 2.0 * sums[0] + epsilon
    denominator = sums[1] + sums[2] + epsilon
    return 1.0 - (numerator / denominator).mean()


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice: str = "sample",
    bce_weight: float = 0.0,
    sum_across: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The training loss: soft Dice of ``sigmoid(logits)`` (:data:`DICE_AXES` ``dice``), plus ``bce_weight``
    times the binary cross-entropy of the logits averaged over every voxel and class (the cross-entropy
    term of nnU-Net's region loss ``DC_and_BCE_loss`` at weight 1; its Dice term has no squares, see the
    module docstring), all in float32 whatever the autocast dtype.

    The course's loss is ``bce_weight=0``. A channel whose sigmoid saturates over the whole brain gets no
    gradient from the Dice (the sigmoid's slope vanishes) and stays there; the cross-entropy's gradient on
    a logit is ``p - t``, so it pulls such a channel back.

    Args:
        logits: (B, C, X, Y, Z) pre-sigmoid outputs.
        target: float (B, C, X, Y, Z) one-hot.
        dice: ``sample``, ``batch`` or ``nnunet`` (:data:`DICE_AXES`, :data:`DICE_SQUARED`).
        bce_weight: weight of the cross-entropy term, >= 0.
        sum_across: for the ``batch`` Dice, :func:`soft_dice_loss`'s (its sums over every DDP rank's batch,
            as nnU-Net all-gathers them); unused by the ``sample`` Dice, whose every example is its own.

    Returns:
        0-d float32 tensor.
    """
    logits = logits.float()
    across = sum_across if DICE_AXES[dice] == BATCH_AXES else None
    loss = soft_dice_loss(
        torch.sigmoid(logits), target, axis=DICE_AXES[dice], sum_across=across, squared=DICE_SQUARED[dice]
    )
    if bce_weight:
        target = target.to(logits.dtype)
        loss = loss + bce_weight * nn.functional.binary_cross_entropy_with_logits(logits, target)
    return loss


class SoftDiceLoss(nn.Module):
    """Module form of :func:`soft_dice_loss`.

    Args:
        axis: see :func:`soft_dice_loss`.
        epsilon: see :func:`soft_dice_loss`.
        from_logits: apply a float32 sigmoid to ``pred`` first (safe under mixed precision, feed it
            ``UNet3D.forward_logits``).
    """

    def __init__(
        self, axis: Sequence[int] = SPATIAL_AXES, epsilon: float = DICE_EPSILON, from_logits: bool = False
    ) -> None:
        super().__init__()
        self.axis = tuple(axis)
        self.epsilon = float(epsilon)
        self.from_logits = from_logits

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.from_logits:
            pred = torch.sigmoid(pred.float())
        return soft_dice_loss(pred, target, axis=self.axis, epsilon=self.epsilon)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, epsilon={self.epsilon}, from_logits={self.from_logits}"


__all__ = [
    "BATCH_AXES",
    "DICE_AXES",
    "DICE_EPSILON",
    "SPATIAL_AXES",
    "SoftDiceLoss",
    "segmentation_loss",
    "soft_dice_loss",
]
