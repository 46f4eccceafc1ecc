"""Soft Dice loss and segmentation metrics against hand-computed tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brainnet.losses import SoftDiceLoss, soft_dice_loss
from brainnet.metrics import (
    class_score,
    confusion_counts,
    dice_coefficient,
    label_map_counts,
    label_masks,
    labels_to_onehot,
    metrics_from_counts,
    onehot_to_regions,
    probabilities_to_labels,
    segmentation_metrics,
    sensitivity_specificity,
)
from brainprep.errors import InvalidValueError, ShapeMismatchError
from brainprep.spec import MSD_SPEC

TARGETS = MSD_SPEC.targets

EPS = 1e-5

# One example, 2 classes, 1x1x2 voxels -> tensors of shape (1, 2, 1, 1, 2).
P1 = torch.tensor([[0.5, 1.0], [0.0, 0.5]]).reshape(1, 2, 1, 1, 2)
T1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 1, 2)
# A second example predicted perfectly for class 0 and with class 1 empty in both.
P2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 2, 1, 1, 2)
T2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 2, 1, 1, 2)


# ----------------------------------------------------------------------------------------- soft Dice loss
def test_soft_dice_course_worked_example():
    # Course notebook: pred [[1, 0], [0, 1]], label [[1, 1], [0, 0]], epsilon 1 (one class, 2x2 voxels):
    # numerator 2*1 + 1 = 3, denominator (1+1) + (1+1) + 1 = 5, loss 1 - 3/5 = 0.4
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2, 1)
    label = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).reshape(1, 1, 2, 2, 1)
    assert soft_dice_loss(pred, label, epsilon=1.0).item() == pytest.approx(0.4)


def test_soft_dice_single_example_by_hand():
    # class 0: 2*(0.5*1) = 1 over (1) + (0.25 + 1) = 2.25; class 1: 2*(0.5*1) = 1 over 1 + 0.25 = 1.25
    expected = 1 - ((1 + EPS) / (2.25 + EPS) + (1 + EPS) / (1.25 + EPS)) / 2  # = 0.37778
    assert soft_dice_loss(P1, T1).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.377778, abs=1e-5)
    # The course's own call on one (C, x, y, z) example with axis=(1, 2, 3) is the same number.
    assert soft_dice_loss(P1[0], T1[0], axis=(1, 2, 3)).item() == pytest.approx(expected, rel=1e-6)


def test_soft_dice_batch_default_is_mean_of_examples():
    pred, target = torch.cat([P1, P2]), torch.cat([T1, T2])
    # example 2: class 0 = (2 + eps) / (1 + 1 + eps) = 1, class 1 = eps / eps = 1 -> loss 0
    assert soft_dice_loss(P2, T2).item() == pytest.approx(0.0, abs=1e-6)
    expected = (soft_dice_loss(P1, T1).item() + 0.0) / 2  # 0.188889
    assert soft_dice_loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.188889, abs=1e-5)


def test_soft_dice_batch_dice_variant_by_hand():
    pred, target = torch.cat([P1, P2]), torch.cat([T1, T2])
    # axis (0, 2, 3, 4): class 0 sums over both examples: 2*(0.5 + 1) = 3 over (1 + 1) + (1.25 + 1) = 4.25
    # class 1: 2*0.5 = 1 over 1 + 0.25 = 1.25;  loss = 1 - (3/4.25 + 1/1.25) / 2 = 0.247059
    expected = 1 - ((3 + EPS) / (4.25 + EPS) + (1 + EPS) / (1.25 + EPS)) / 2
    assert soft_dice_loss(pred, target, axis=(0, 2, 3, 4)).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.247059, abs=1e-5)


def test_nnunet_dice_has_a_linear_denominator_by_hand():
    pred, target = torch.cat([P1, P2]), torch.cat([T1, T2])
    batch = soft_dice_loss(pred, target, axis=(0, 2, 3, 4))
    linear = soft_dice_loss(pred, target, axis=(0, 2, 3, 4), squared=False)
    sums = [(pred * target).sum(dim=(0, 2, 3, 4)), target.sum(dim=(0, 2, 3, 4)), pred.sum(dim=(0, 2, 3, 4))]
    expected = 1 - float(((2 * sums[0] + EPS) / (sums[1] + sums[2] + EPS)).mean())
    assert linear.item() == pytest.approx(expected, rel=1e-6)
    assert linear.item() != pytest.approx(batch.item(), rel=1e-3)  # a soft prediction tells them apart


def test_nnunet_dice_mode_is_nnunets_own_soft_dice_and_region_loss():
    """Against nnunetv2's MemoryEfficientSoftDiceLoss and DC_and_BCE_loss as nnU-Net builds its region
    loss (batch_dice, do_bg=True, smooth 1e-5), values and gradients: nnU-Net minimizes -mean(dc)."""
    pytest.importorskip("nnunetv2", reason="nnunetv2 is in the bench extra, not the test one")
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from brainnet.losses import segmentation_loss

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 6, 5, 4, generator=g) * 2
    target = (torch.rand(2, 3, 6, 5, 4, generator=g) < 0.3).float()
    kwargs = {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False}
    theirs_dice = MemoryEfficientSoftDiceLoss(apply_nonlin=torch.sigmoid, **kwargs)
    ours = segmentation_loss(logits, target, "nnunet")
    assert float(ours) == pytest.approx(1 + float(theirs_dice(logits, target)), abs=1e-6)
    region = DC_and_BCE_loss({}, kwargs, use_ignore_label=False)
    mine, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    segmentation_loss(mine, target, "nnunet", bce_weight=1.0).backward()
    region(theirs, target).backward()
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-7)


def test_soft_dice_extremes_and_gradient():
    target = torch.zeros(2, 3, 4, 4, 2)
    target[:, :, :2] = 1.0
    assert soft_dice_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(torch.zeros_like(target), target).item() == pytest.approx(1.0, abs=1e-5)
    pred = torch.full_like(target, 0.5, requires_grad=True)
    soft_dice_loss(pred, target).backward()
    assert pred.grad is not None
    # raising p where t = 1 lowers the loss, raising it where t = 0 increases it
    assert float(pred.grad[:, :, :2].max()) < 0.0 < float(pred.grad[:, :, 2:].min())


def test_batch_dice_penalizes_false_positives_of_a_window_without_tumour():
    # example 0 holds the class, example 1 none: its predicted voxels are false positives
    from brainnet.losses import DICE_AXES

    target = torch.zeros(2, 1, 4, 4, 2)
    target[0, :, :2] = 1.0
    pred = torch.full_like(target, 0.5, requires_grad=True)
    gradients = {}
    for mode, axis in DICE_AXES.items():
        pred.grad = None
        soft_dice_loss(pred, target, axis=axis).backward()
        gradients[mode] = pred.grad[1].clone()
    # per example (the course's): eps / (sum p^2 + eps), a gradient of order eps on the empty window
    assert float(gradients["sample"].abs().max()) < 1e-5
    # per batch: the empty window's voxels add to the class's denominator, raising them raises the loss
    assert float(gradients["batch"].min()) > 1e-3
    assert DICE_AXES["sample"] == (2, 3, 4) and DICE_AXES["batch"] == (0, 2, 3, 4)


def test_segmentation_loss_is_the_dice_plus_the_weighted_cross_entropy_by_hand():
    from brainnet.losses import DICE_AXES, DICE_SQUARED, segmentation_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 2, generator=g, dtype=torch.float64) * 3
    target = (torch.rand(2, 3, 4, 4, 2, generator=g) < 0.3).double()
    for dice in DICE_AXES:
        axis, squared = DICE_AXES[dice], DICE_SQUARED[dice]
        course = soft_dice_loss(torch.sigmoid(logits), target, axis=axis, squared=squared)
        course32 = soft_dice_loss(torch.sigmoid(logits.float()), target.float(), axis=axis, squared=squared)
        assert torch.equal(segmentation_loss(logits.float(), target.float(), dice), course32)
        p = torch.sigmoid(logits)
        bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
        got = segmentation_loss(logits.float(), target.float(), dice, bce_weight=0.5)
        assert float(got) == pytest.approx(float(course + 0.5 * bce), rel=1e-5)


def test_cross_entropy_pulls_back_a_channel_saturated_over_the_volume():
    """A channel at logit +12 everywhere (the whole brain one class): the Dice alone gives its logits
    almost no gradient (the sigmoid's slope vanishes); with the cross-entropy each background logit is
    pushed down by about 1 / (voxels x classes)."""
    from brainnet.losses import segmentation_loss

    target = torch.zeros(2, 3, 8, 8, 4)
    target[:, :, 2:4, 2:4, 1:3] = 1.0  # 8 tumour voxels of 256 per example and class
    for weight, low, high in ((0.0, 0.0, 1e-5), (1.0, 0.99, 1.01)):
        logits = torch.full(target.shape, 12.0, requires_grad=True)
        segmentation_loss(logits, target, "sample", bce_weight=weight).backward()
        background = logits.grad[target == 0] * target.numel()  # in units of 1 / (voxels x classes)
        assert float(background.min()) >= low and float(background.max()) <= high, weight


def test_soft_dice_module_and_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 2)
    target = (torch.rand(2, 3, 4, 4, 2) > 0.5).float()
    expected = soft_dice_loss(torch.sigmoid(logits), target)
    assert SoftDiceLoss(from_logits=True)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert SoftDiceLoss()(torch.sigmoid(logits), target).item() == pytest.approx(expected.item(), rel=1e-6)
    half = soft_dice_loss(torch.sigmoid(logits).half(), target)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(expected.item(), abs=1e-3)
    with pytest.raises(ShapeMismatchError):
        soft_dice_loss(logits, target[:, :2])


# ------------------------------------------------------------------------------------- Dice / sens / spec
def test_dice_coefficient_by_hand():
    pred = np.array([1, 1, 0, 0], dtype=bool)
    target = np.array([1, 0, 1, 0], dtype=bool)
    # intersection 1, |p| = 2, |t| = 2: (2*1 + eps) / (2 + 2 + eps)
    assert float(dice_coefficient(pred, target)) == pytest.approx((2 + EPS) / (4 + EPS))
    assert float(dice_coefficient(pred, target, epsilon=0.0)) == 0.5
    # the same formula on torch tensors
    assert float(dice_coefficient(torch.from_numpy(pred), torch.from_numpy(target), epsilon=0.0)) == 0.5


def test_dice_coefficient_per_class_on_batch():
    probs = torch.tensor([[[0.9, 0.8, 0.1, 0.2], [0.1, 0.1, 0.1, 0.1]]]).reshape(1, 2, 4, 1, 1)
    target = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]).reshape(1, 2, 4, 1, 1)
    per = dice_coefficient(probs > 0.5, target, axis=(0, 2, 3, 4), epsilon=0.0, reduction="none")
    # class 0: p = [1, 1, 0, 0], t = [1, 0, 0, 0] -> 2/3; class 1: both empty -> 1
    assert per.shape == (2,)
    assert per.tolist() == pytest.approx([2 / 3, 1.0])
    assert float(dice_coefficient(probs > 0.5, target, axis=(2, 3, 4), epsilon=0.0)) == pytest.approx(5 / 6)


def test_sensitivity_specificity_course_example():
    # Course: pred [[1, 0], [0, 1]], label [[1, 1], [0, 0]]: tp 1, fn 1, tn 1, fp 1 -> 0.5, 0.5
    sens, spec = sensitivity_specificity(np.array([[1, 0], [0, 1]]), np.array([[1, 1], [0, 0]]))
    assert (float(sens), float(spec)) == (0.5, 0.5)


def test_sensitivity_specificity_by_hand_and_per_class():
    pred = np.array([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=bool)
    true = np.array([[1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=bool)
    sens, spec = sensitivity_specificity(pred, true, axis=1)
    # class 0: tp 1, fn 2, fp 1, tn 2 -> 1/3, 2/3;  class 1: tp 1, fn 1, fp 0, tn 4 -> 1/2, 1
    assert sens.tolist() == pytest.approx([1 / 3, 1 / 2])
    assert spec.tolist() == pytest.approx([2 / 3, 1.0])


@pytest.mark.parametrize(
    ("pred", "true", "dice", "sens", "spec"),
    [
        ([0, 0, 0, 0], [0, 0, 0, 0], 1.0, 1.0, 1.0),  # both empty: perfect agreement
        ([1, 0, 0, 0], [0, 0, 0, 0], 0.0, 0.0, 3 / 4),  # empty truth, false positive
        ([0, 0, 0, 0], [1, 0, 0, 0], 0.0, 0.0, 1.0),  # missed structure
        ([1, 1, 0, 0], [1, 0, 0, 0], 2 / 3, 1.0, 2 / 3),  # both non-empty: the usual formulas
        ([1, 1, 1, 1], [1, 1, 1, 1], 1.0, 1.0, 1.0),  # no negatives in truth, none predicted
        ([1, 1, 1, 0], [1, 1, 1, 1], 6 / 7, 3 / 4, 0.0),  # no negatives in truth, one predicted
    ],
)
def test_empty_structure_rules(pred, true, dice, sens, spec):
    p, t = np.array(pred, dtype=bool), np.array(true, dtype=bool)
    got_sens, got_spec = sensitivity_specificity(p, t)
    assert float(dice_coefficient(p, t, epsilon=0.0)) == pytest.approx(dice)
    assert (float(got_sens), float(got_spec)) == pytest.approx((sens, spec))
    assert not math.isnan(float(got_sens)) and not math.isnan(float(got_spec))


def test_dice_with_epsilon_matches_empty_rules():
    empty = np.zeros(4, dtype=bool)
    one = np.array([1, 0, 0, 0], dtype=bool)
    assert float(dice_coefficient(empty, empty)) == 1.0  # eps / eps
    assert float(dice_coefficient(one, empty)) == pytest.approx(0.0, abs=1e-4)  # eps / (1 + eps)


# ------------------------------------------------------------------------------------ labels and regions
def test_labels_to_onehot_numpy_and_torch_batch():
    labels = np.array([0, 1, 2, 3, 1], dtype=np.uint8)
    onehot = labels_to_onehot(labels)
    assert isinstance(onehot, np.ndarray) and onehot.dtype == np.float32
    expected = np.array([[0, 1, 0, 0, 1], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(onehot, expected)
    batch = torch.from_numpy(np.stack([labels, labels[::-1].copy()]))  # (B=2, 5)
    out = labels_to_onehot(batch, axis=1)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out[1].numpy(), expected[:, ::-1])


def test_labels_to_onehot_rejects_bad_labels():
    with pytest.raises(InvalidValueError, match=r"found \[4\]"):
        labels_to_onehot(np.array([0, 4, 1], dtype=np.uint8))
    with pytest.raises(InvalidValueError, match="integer"):
        labels_to_onehot(np.array([0.0, 1.0]))


def test_probabilities_to_labels_rule():
    prob = np.array(
        [
            # vox: none  edema  core in edema  enh over core  all=0.5  all three
            [0.1, 0.9, 0.95, 0.2, 0.5, 0.9],
            [0.2, 0.1, 0.6, 0.8, 0.5, 0.9],
            [0.3, 0.1, 0.1, 0.7, 0.5, 0.6],
        ],
        dtype=np.float32,
    )
    labels = probabilities_to_labels(prob)
    assert isinstance(labels, np.ndarray) and labels.dtype == np.uint8
    # the innermost structure above the threshold wins, even against a more probable outer one
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 0, 3])
    batch = torch.from_numpy(prob)[None]  # (1, 3, 6), class axis 1
    assert probabilities_to_labels(batch, axis=1).tolist() == [[0, 1, 2, 3, 0, 3]]


def test_onehot_labels_round_trip():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(6, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(probabilities_to_labels(labels_to_onehot(labels)), labels)
    flipped = labels[::-1]  # negative strides and read-only arrays are accepted (copied)
    np.testing.assert_array_equal(labels_to_onehot(flipped)[:, ::-1], labels_to_onehot(labels))
    labels.flags.writeable = False
    np.testing.assert_array_equal(probabilities_to_labels(labels_to_onehot(labels)), labels)


def test_onehot_to_regions_and_label_masks():
    labels = np.array([0, 1, 2, 3], dtype=np.uint8)
    regions = onehot_to_regions(labels_to_onehot(labels))
    # whole tumour 1|2|3, tumour core 2|3, enhancing 3
    np.testing.assert_array_equal(regions, [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]])
    masks = label_masks(labels, {"core": (2, 3)})
    assert masks["core"].tolist() == [False, False, True, True]


def test_segmentation_metrics_by_hand():
    true = np.array([0, 1, 1, 2, 3, 3, 0, 0], dtype=np.uint8)
    pred = np.array([0, 1, 2, 2, 3, 0, 0, 1], dtype=np.uint8)
    expected = {
        # edema: true {1,2}, pred {1,7}: tp 1, fp 1, fn 1, tn 5
        "edema": (2 / 4, 1 / 2, 5 / 6),
        # non-enhancing: true {3}, pred {2,3}: tp 1, fp 1, fn 0, tn 6
        "non_enhancing": (2 / 3, 1.0, 6 / 7),
        # enhancing: true {4,5}, pred {4}: tp 1, fp 0, fn 1, tn 6
        "enhancing": (2 / 3, 1 / 2, 1.0),
        # whole tumour: true {1..5}, pred {1,2,3,4,7}: tp 4, fp 1, fn 1, tn 2
        "whole_tumour": (8 / 10, 4 / 5, 2 / 3),
        # tumour core: true {3,4,5}, pred {2,3,4}: tp 2, fp 1, fn 1, tn 4
        "tumour_core": (4 / 6, 2 / 3, 4 / 5),
        "enhancing_tumour": (2 / 3, 1 / 2, 1.0),
    }
    got = segmentation_metrics(pred, true)
    assert list(got) == list(expected)
    for name, (dice, sens, spec) in expected.items():
        assert got[name] == pytest.approx({"dice": dice, "sensitivity": sens, "specificity": spec}), name
    assert segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(true)) == got
    assert all(isinstance(v, float) for d in got.values() for v in d.values())


def test_segmentation_metrics_absent_enhancing_tumour():
    true = np.array([0, 1, 1, 0], dtype=np.uint8)
    got = segmentation_metrics(true.copy(), true)
    assert got["enhancing"] == {"dice": 1.0, "sensitivity": 1.0, "specificity": 1.0}
    wrong = np.array([0, 1, 3, 0], dtype=np.uint8)
    assert got["whole_tumour"]["dice"] == 1.0
    assert segmentation_metrics(wrong, true)["enhancing_tumour"]["dice"] == 0.0
    with pytest.raises(ShapeMismatchError):
        segmentation_metrics(wrong[:3], true)


def test_the_dice_is_the_label_maps_not_each_channels():
    # Truth: background, edema, non-enhancing, enhancing. The edema channel bleeds into the core (as a
    # network trained on whole tumours does); each inner channel sees its own class.
    true = np.array([0, 1, 2, 3], dtype=np.uint8)
    prob = np.array(
        [[0.1, 0.9, 0.9, 0.9], [0.1, 0.1, 0.9, 0.9], [0.1, 0.1, 0.1, 0.9]],
        dtype=np.float32,
    )
    onehot = labels_to_onehot(true)
    # Per channel, edema predicts voxels 1, 2, 3 against truth {1}: 2 / (3 + 1).
    per_channel = dice_coefficient(prob > 0.5, onehot, axis=1, epsilon=0.0, reduction="none")
    assert per_channel.tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    # The label map predict writes is exactly the truth, so every label-map Dice is 1.
    counts = label_map_counts(torch.from_numpy(prob)[None], torch.from_numpy(onehot)[None], 0.5)
    assert counts.dtype == torch.int64 and counts.shape == (len(TARGETS), 4)
    assert counts[TARGETS.index("edema")].tolist() == [1, 0, 0, 3]  # tp, fp, fn, tn
    metrics = metrics_from_counts(counts)
    assert all(metrics[t]["dice"] == 1.0 for t in TARGETS)
    assert metrics == segmentation_metrics(probabilities_to_labels(prob), true)
    assert class_score(metrics) == 1.0


def test_confusion_counts_of_batches_add_up_and_score_is_the_class_mean():
    true = np.array([[0, 1, 1, 2], [3, 3, 0, 0]], dtype=np.uint8)
    pred = np.array([[0, 1, 2, 2], [3, 0, 0, 1]], dtype=np.uint8)
    total = confusion_counts(pred[:1], true[:1]) + confusion_counts(pred[1:], true[1:])
    assert torch.equal(total, confusion_counts(pred, true))
    # edema: true {1, 2}, pred {1, 7}: tp 1, fp 1, fn 1 -> 2/4; non-enhancing: true {3}, pred {2, 3} -> 2/3;
    # enhancing: true {4, 5}, pred {4} -> 2/3 (as in test_segmentation_metrics_by_hand).
    assert class_score(metrics_from_counts(total)) == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)


def test_probabilities_to_labels_on_a_batch_tensor_keeps_dtype_and_device():
    prob = torch.tensor([[[0.9, 0.2], [0.9, 0.1], [0.2, 0.7]]])  # (1, 3, 2)
    labels = probabilities_to_labels(prob, axis=1)
    assert labels.dtype == torch.uint8 and labels.device == prob.device
    assert labels.tolist() == [[2, 3]]
