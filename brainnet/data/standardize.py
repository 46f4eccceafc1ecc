"""The course's standardization on the training device: the twin of :mod:`brainprep.standardize` in torch.

A volume store's loader delivers raw windows; the training loop standardizes them where it expands the
batch (:func:`brainnet.data.dataset.to_training_batch`), on the GPU when training there. brainprep's own
functions are numpy (brainprep does not need torch); these apply the same formulas to tensors, and
``tests/test_standardize.py`` holds them equal to brainprep's.
"""

from __future__ import annotations

import torch

from brainprep.standardize import MIN_STD, resolved_std


def standardize_slices_torch(image: torch.Tensor, region: tuple[slice, slice] | None = None) -> torch.Tensor:
    """:func:`brainprep.standardize.standardize_patch_slices` in torch, in float32, on whatever device
    ``image`` is on: how a volume store's raw windows are standardized, by the training loop on its device
    (:func:`brainnet.data.dataset.to_training_batch`) and by ``brainnet sample``.

    The same formula (each channel of each z-slice to mean 0 / std 1, population std, a constant slice
    stays exactly 0):

    - each slice is first shifted by its first voxel: the difference of two float16 values (the volume
      store's raw intensities) is exact in float32, so a constant slice becomes exactly 0 (its std is
      exactly 0 and it stays 0, the course's ``std != 0`` rule) and centering loses nothing to
      cancellation;
    - the mean and the norm are float32 reductions, relative error ~1e-6 of the std: far below the
      rounding of float16 raw intensities. Exact float64 agreement is what :func:`standardize_patch_slices`
      is for (:meth:`~brainprep.store.volume_reader.VolumeStore.read_window` and the builds use it).

    Fastest when ``image`` is slice-major (:func:`brainprep.store.volume_schema.slice_major`, each z-slice
    contiguous: the layout of a volume store's windows); any other layout costs one transposing copy.

    Args:
        image: float (..., C, X, Y, Z) tensor, any layout and device.
        region: (X slice, Y slice): take each slice's shift, mean and norm over this part of it only (the
            patch inside a window read with context around it: :mod:`brainnet.augment.context`) and apply
            them to the whole slice; the region then comes out exactly as the patch alone would (the same
            float32 operations on the same values). ``None``: the whole slice.

    Returns:
        float32, the same shape, slice-major (a new tensor).
    """
    x, y = image.shape[-3:-1]
    slices = image.transpose(-1, -3).to(torch.float32)  # (..., C, Z, Y, X)
    rows = slices.reshape(-1, x * y)  # a view when slice-major, a copy otherwise
    stats = rows if region is None else slices[..., region[1], region[0]].reshape(len(rows), -1)
    count = stats.shape[1]
    shift = stats[:, :1].clone()
    stats = stats - shift
    mean = stats.mean(dim=1, keepdim=True)
    stats -= mean
    norm = torch.linalg.vector_norm(stats, dim=1, keepdim=True)
    if region is not None:  # the whole slice, shifted and centred as its region was
        stats = rows - shift
        stats -= mean
    stats *= torch.where(norm > 0, float(count) ** 0.5 / norm, torch.zeros_like(norm))
    return stats.view(*slices.shape).transpose(-1, -3)


def brain_mask_torch(image: torch.Tensor) -> torch.Tensor:
    """:func:`brainprep.standardize.brain_mask` with a background of 0 (skull-stripped scans), in torch:
    the voxels nonzero in any channel of ``image`` (B, C, X, Y, Z), any dtype and device; bool (B, X, Y, Z).
    A batch standardized ``volume-nonzero`` is 0 in every channel exactly outside it."""
    return (image != 0).any(dim=1)


def standardize_with_statistics_torch(
    image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """:func:`brainprep.standardize.standardize_with_statistics` in torch (float32, any device):
    ``(x - mean[c]) / max(std[c], 1e-8)`` inside the brain (voxels nonzero in any channel: a volume store
    keeps its crops less the case's background), 0 outside and in a channel whose std is below what
    ``image``'s dtype resolves near its mean (:func:`brainprep.standardize.resolved_std`).

    Args:
        image: (B, C, X, Y, Z) of a store dtype (float16, float32, an integer type), any layout;
        mean, std: (B, C) per sample and channel.

    Returns:
        float32 (B, C, X, Y, Z) (a new tensor).
    """
    values = image.to(torch.float32)
    shape = (*mean.shape, 1, 1, 1)
    # a channel flat within the stored dtype's resolution reads 0: the reader's rule, on the (B, C) host copy
    stored = torch.empty(0, dtype=image.dtype).numpy().dtype
    resolved = torch.from_numpy(resolved_std(mean.cpu().numpy(), std.cpu().numpy(), stored))
    flat = (resolved == 0).to(values.device).view(shape)
    mask = brain_mask_torch(values).unsqueeze(1) & ~flat
    mean = mean.to(values.device, torch.float32).view(shape)
    std = resolved.to(values.device, torch.float32).clamp(min=MIN_STD).view(shape)
    return torch.where(mask, (values - mean) / std, torch.zeros((), device=values.device))
