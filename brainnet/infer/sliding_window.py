"""Whole-scan inference from patch-sized windows, blended with Gaussian (or constant) weights.

Pure tensor code, no file I/O. Window placement, padding and weights reproduce MONAI's
``sliding_window_inference(mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0)``
(monai/inferers/utils.py and monai/data/utils.py):

- an axis shorter than the window is zero-padded to the window, ``diff // 2`` before and the rest after,
  and the output is cropped back;
- windows start every ``int(window * (1 - overlap))`` voxels (at least 1) and the last one is moved back to
  end flush with the (padded) axis; an axis exactly one window long gets a single window;
- each window's prediction is multiplied by the importance map and summed; the sum of the maps is divided
  out at the end.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from brainprep.errors import ConfigError, ShapeMismatchError

logger = logging.getLogger(__name__)

BLEND_MODES = ("gaussian", "constant")
#: the course's patch size, the window the network was trained on.
DEFAULT_WINDOW: tuple[int, int, int] = (160, 160, 16)
#: MONAI's floor on importance weights, so voxels near every window edge still get a nonzero weight sum.
MIN_WEIGHT = 1e-3

Predictor = Callable[[torch.Tensor], torch.Tensor]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows covering ``range(size)`` along one axis (MONAI's placement).

    Args:
        size: axis length (already padded or not; ``size <= window`` gives ``[0]`` and the caller pads).
        window: window length along the axis.
        overlap: fraction of a window shared by neighbours, in ``[0, 1)``.

    Returns:
        increasing starts; the first is 0 and the last is ``size - window`` (when ``size > window``).

    Example:
        ``window_starts(10, 4, 0.5) == [0, 2, 4, 6]``; ``window_starts(9, 4, 0.5) == [0, 2, 4, 5]``.
    """
    if size < 1 or window < 1:
        raise ConfigError(f"window_starts: size and window must be >= 1, got size {size}, window {window}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"sliding window overlap must be in [0, 1), got {overlap}")
    if size <= window:
        return [0]
    interval = max(int(window * (1 - overlap)), 1)  # MONAI's _get_scan_interval, same float expression
    starts = []
    for d in range(math.ceil(size / interval)):
        start = d * interval
        if start + window >= size:
            starts.append(size - window)
            break
        starts.append(start)
    return starts


def gaussian_weights(
    window: Sequence[int],
    sigma_scale: float | Sequence[float] = 0.125,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """MONAI's Gaussian importance map (``compute_importance_map(mode="gaussian")``).

    Separable ``exp(-x**2 / (2 sigma**2))`` with ``x`` the offset from the window centre
    (``-(n-1)/2 .. (n-1)/2``) and ``sigma = sigma_scale * n`` per axis; peak 1 (exactly 1 for odd sizes,
    slightly below for even sizes), not renormalized because the floor is absolute: values are clamped
    from below at ``max(min, 1e-3)`` as MONAI does. (nnU-Net uses the same sigma = 1/8 of the window.)

    Args:
        window: window size, e.g. ``(160, 160, 16)``.
        sigma_scale: sigma as a fraction of the window size, one value or one per axis.
        device: device of the result.

    Returns:
        float32 tensor of shape ``window``, symmetric, largest at the centre, all values >= 1e-3.
    """
    window = tuple(int(w) for w in window)
    scales = (
        tuple(float(s) for s in sigma_scale)
        if isinstance(sigma_scale, Sequence)
        else (float(sigma_scale),) * len(window)
    )
    if len(scales) != len(window) or any(s <= 0 for s in scales) or any(w < 1 for w in window):
        raise ConfigError(f"gaussian_weights: need positive window {window} and sigma_scale {sigma_scale}")
    weights = torch.ones((), dtype=torch.float32, device=device)
    for i, (n, scale) in enumerate(zip(window, scales, strict=True)):
        sigma = n * scale
        x = torch.arange(start=-(n - 1) / 2.0, end=(n - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        x = torch.exp(x**2 / (-2 * sigma**2))  # 1-D Gaussian, the same float32 ops as MONAI
        weights = x if i == 0 else weights.unsqueeze(-1) * x[(None,) * i]
    return weights.clamp(min=max(float(weights.min()), MIN_WEIGHT))


def _importance_map(
    window: tuple[int, ...], blend: str, sigma_scale: float | Sequence[float]
) -> torch.Tensor:
    if blend == "gaussian":
        return gaussian_weights(window, sigma_scale)
    return torch.ones(window, dtype=torch.float32)


def _pad_to_window(volume: torch.Tensor, window: tuple[int, ...]) -> tuple[torch.Tensor, list[slice]]:
    """Zero-pad each short spatial axis to the window (``diff // 2`` before); slices that crop back."""
    before = [max(w - s, 0) // 2 for s, w in zip(volume.shape[1:], window, strict=True)]
    after = [max(w - s, 0) - b for s, w, b in zip(volume.shape[1:], window, before, strict=True)]
    crop = [slice(b, b + s) for b, s in zip(before, volume.shape[1:], strict=True)]
    if any(before) or any(after):
        pad: list[int] = []
        for b, a in zip(reversed(before), reversed(after), strict=True):  # F.pad lists the last axis first
            pad.extend([b, a])
        volume = F.pad(volume, pad, mode="constant", value=0.0)
    return volume, crop


def window_regions(spatial: Sequence[int], window: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """The spatial slices of every window over a (padded) volume of shape ``spatial``, first axis slowest
    (MONAI's order: its meshgrid ``"ij"``)."""
    axis_starts = [window_starts(s, w, overlap) for s, w in zip(spatial, window, strict=True)]
    return [
        tuple(slice(c, c + w) for c, w in zip(corner, window, strict=True))
        for corner in itertools.product(*axis_starts)
    ]


def weight_sum(
    spatial: Sequence[int], window: Sequence[int], overlap: float, weights: torch.Tensor
) -> torch.Tensor:
    """float32 ``(1, *spatial)``: the sum of ``weights`` (shape ``window``) over every window, in window
    order (the divisor of the blend; equal to MONAI's count map bit for bit)."""
    total = torch.zeros((1, *spatial), dtype=torch.float32, device=weights.device)
    for region in window_regions(spatial, window, overlap):
        total[(slice(None), *region)] += weights
    return total


@functools.lru_cache(maxsize=2)
def _cached_weights(
    spatial: tuple[int, ...],
    window: tuple[int, ...],
    overlap: float,
    blend: str,
    sigma_scale: float | tuple[float, ...],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(window weights, their sum over every window) for these shapes; never written to."""
    # Scans of a dataset share one shape: both are made once, not once per scan.
    with torch.inference_mode():
        weights = _importance_map(window, blend, sigma_scale).to(device)
        return weights, weight_sum(spatial, window, overlap, weights)


def _check_arguments(
    volume: torch.Tensor, window: tuple[int, ...], blend: str, batch_size: int, mask: torch.Tensor | None
) -> None:
    """Refuse what :func:`sliding_window` cannot take, before any work."""
    if volume.ndim != 4:
        raise ShapeMismatchError(
            f"sliding_window: volume must be (C, X, Y, Z), got shape {tuple(volume.shape)}"
        )
    if len(window) != 3 or any(w < 1 for w in window):
        raise ConfigError(f"sliding_window: window must be three positive ints, got {window}")
    if blend not in BLEND_MODES:
        raise ConfigError(f"sliding_window: blend must be one of {BLEND_MODES}, got {blend!r}")
    if batch_size < 1:
        raise ConfigError(f"sliding_window: batch_size must be >= 1, got {batch_size}")
    if mask is not None and tuple(mask.shape) != tuple(volume.shape[1:]):
        raise ShapeMismatchError(
            f"sliding_window: mask must have the volume's spatial shape {tuple(volume.shape[1:])}, "
            f"got {tuple(mask.shape)}"
        )


def sliding_window(
    volume: torch.Tensor,
    predictor: Predictor,
    window: Sequence[int] = DEFAULT_WINDOW,
    overlap: float = 0.5,
    blend: str = "gaussian",
    batch_size: int = 4,
    device: torch.device | str | None = None,
    sigma_scale: float | Sequence[float] = 0.125,
    progress: bool = False,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predict a whole volume window by window and blend the overlapping predictions.

    The window weights and their sum over the windows (the blend's divisor) depend only on the shapes and
    the blend, so those of the last two shapes are kept (:func:`_cached_weights`; the divisor of a
    240x240x155 scan is 36 MB, on the volume's device); ``_cached_weights.cache_clear()`` frees them.

    Args:
        volume: float ``(C, X, Y, Z)`` scan of any size (numpy arrays are wrapped).
        predictor: maps a float batch ``(b, C, *window)`` on ``device`` to ``(b, K, *window)``; e.g. the
            model after ``model.eval()`` (its probabilities are blended; MONAI too blends whatever the
            predictor returns). It runs under ``torch.inference_mode()``.
        window: window size ``(x, y, z)``, e.g. the training patch size.
        overlap: fraction of a window shared by neighbours along each axis, ``[0, 1)``.
        blend: ``gaussian`` (centre voxels of a window count more) or ``constant`` (plain average).
        batch_size: windows per predictor call.
        device: where windows are sent for prediction (default: the volume's device). Accumulation and
            the result stay on the volume's device.
        sigma_scale: Gaussian sigma as a fraction of the window (MONAI and nnU-Net: 1/8).
        progress: show a tqdm bar over window batches.
        mask: bool ``(X, Y, Z)``, e.g. the brain: the output is zero outside it, and windows holding none
            of its voxels are not predicted at all. Every window covering a mask voxel is still predicted
            and accumulated in the same order, so inside the mask the output equals the unmasked one bit
            for bit when the predictor's result for a window does not depend on the other windows of its
            batch (true of the U-Net on CPU; skipping regroups the batches).

    Returns:
        float32 ``(K, X, Y, Z)`` on the volume's device.
    """
    volume = torch.as_tensor(volume)
    window = tuple(int(w) for w in window)
    _check_arguments(volume, window, blend, batch_size, mask)
    device = torch.device(device) if device is not None else volume.device
    out_device = volume.device

    spatial = tuple(max(s, w) for s, w in zip(volume.shape[1:], window, strict=True))
    sigma_key = (
        tuple(float(v) for v in sigma_scale) if isinstance(sigma_scale, Sequence) else float(sigma_scale)
    )
    weights, divisor = _cached_weights(
        spatial, window, float(overlap), blend, sigma_key, torch.device(out_device)
    )
    # The output is an ordinary tensor, made outside inference mode and only updated in place inside it,
    # so it is returned without a copy and callers may still modify it or use it in autograd.
    output = torch.empty(0)  # allocated once the first batch tells the channel count K
    with torch.inference_mode():
        padded, crop = _pad_to_window(volume.float(), window)
        regions = window_regions(spatial, window, overlap)
        if mask is not None:
            padded_mask, _ = _pad_to_window(torch.as_tensor(mask, device=out_device).bool()[None], window)
            holding = [region for region in regions if bool(padded_mask[(slice(None), *region)].any())]
            skipped = len(regions) - len(holding)
            regions = holding or regions[:1]  # one window still tells the channel count of an empty mask
            logger.debug("sliding_window: %d windows hold no mask voxel, not predicted", skipped)
        weighted = torch.empty(0)  # (K, *window), made with the first batch
        logger.debug("sliding_window: %d windows of %s over %s", len(regions), window, spatial)
        batches = range(0, len(regions), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="windows", unit="batch")
        for first in batches:
            chunk = regions[first : first + batch_size]
            tiles = torch.stack([padded[(slice(None), *region)] for region in chunk]).to(device)
            pred = predictor(tiles)
            if pred.ndim != 5 or pred.shape[0] != len(chunk) or tuple(pred.shape[2:]) != window:
                raise ShapeMismatchError(
                    f"sliding_window: predictor must return ({len(chunk)}, K, {', '.join(map(str, window))}) "
                    f"for a batch of {len(chunk)} windows, got {tuple(pred.shape)}"
                )
            pred = pred.to(device=out_device, dtype=torch.float32)
            if first == 0:
                weighted = torch.empty_like(pred[0])
                with torch.inference_mode(False):
                    output = torch.zeros((pred.shape[1], *spatial), dtype=torch.float32, device=out_device)
            # Weighted one window at a time into a reused window-sized buffer, which stays in the CPU cache:
            # MONAI's product and sum bit for bit (addcmul_ would round differently), no temporary per
            # batch, and the predictor's tensor (it may keep it, or it may be an expanded view) only read.
            for region, tile_pred in zip(chunk, pred, strict=True):
                output[(slice(None), *region)] += torch.mul(tile_pred, weights, out=weighted)
        output /= divisor
        if mask is not None:
            output.masked_fill_(~padded_mask, 0.0)  # outside the mask, skipped windows left partial sums
    if spatial != tuple(volume.shape[1:]):
        return output[(slice(None), *crop)].clone()  # padded axes cropped back into a compact tensor
    return output


__all__ = [
    "BLEND_MODES",
    "DEFAULT_WINDOW",
    "MIN_WEIGHT",
    "gaussian_weights",
    "sliding_window",
    "weight_sum",
    "window_regions",
    "window_starts",
]
