"""nnU-Net's ``MaskImageTransform`` for batches standardized inside the brain (``volume-nonzero``).

nnU-Net normalizes BraTS inside the nonzero mask, so its background is 0, and it keeps it 0 through
augmentation: preprocessing writes -1 into the segmentation where it is background outside the mask
(``nnunetv2/preprocessing/cropping/cropping.py``, ``crop_to_nonzero``: ``seg[(seg == 0) & ~mask] = -1``),
the spatial transforms move that label with the image, and after the last transform ``MaskImageTransform``
sets the image to 0 where the label is negative and ``RemoveLabelTansform`` turns -1 back into background
(``nnUNetTrainer.get_training_transforms``, ``trainer.py:838-846`` of nnunetv2 2.8.1). Without it noise,
contrast and gamma move the background off 0, a background the model never meets at inference.

brainnet does the same with a uint8 marker, :data:`OUTSIDE`, on the batch's label between
:func:`mark_outside_brain_` (before augmentation) and :func:`mask_outside_brain_` (after), inside
:class:`brainnet.augment.BatchAugment` with ``mask_background`` (which ``brainnet train`` sets when the
batches are standardized ``volume-nonzero``: a patch store built so, or a volume store's windows). The
brain is what :func:`brainnet.data.standardize.standardize_with_statistics_torch` standardizes
(:func:`brainnet.data.standardize.brain_mask_torch`: voxels nonzero in any channel of the raw window, so
the voxels 0 in every channel of the standardized batch are outside it)
(nnU-Net also fills holes in its mask; brainnet's standardization does not, so neither does the mask).
The course's ``patch-slice`` standardization maps the background with its slice, not to 0, so its
batches are not masked.
"""

from __future__ import annotations

import torch

from brainnet.data.standardize import brain_mask_torch

#: the label of background voxels outside the brain while a batch is augmented (labels are uint8 class
#: values, far below it; nnU-Net's -1)
OUTSIDE = 255


def mark_outside_brain_(label: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Set :data:`OUTSIDE` in ``label`` where it is background and ``image`` is 0 in every channel.

    Args:
        label: uint8 (B, X, Y, Z), changed in place.
        image: (B, C, X, Y, Z) standardized ``volume-nonzero`` (or raw: the same voxels are 0), any dtype.

    Returns:
        ``label``.
    """
    outside = ~brain_mask_torch(image) & (label == 0)
    return label.masked_fill_(outside, OUTSIDE)


def mask_outside_brain_(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Set ``image`` to 0 in every channel where ``label`` is :data:`OUTSIDE`, then the label to 0.

    Args:
        image: float (B, C, X, Y, Z) and label uint8 (B, X, Y, Z) after augmentation, changed in place.

    Returns:
        ``image`` and ``label``.
    """
    outside = label == OUTSIDE
    image.masked_fill_(outside.unsqueeze(1), 0.0)
    return image, label.masked_fill_(outside, 0)
