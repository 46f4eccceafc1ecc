"""The batched augmentation: per-sample parameters drawn on the CPU, transforms applied on the batch's device.

Layers: :func:`draw_parameters` (the only random part: a seeded CPU ``torch.Generator``, a fixed number of
draws per batch whatever the probabilities) gives :class:`BatchParams`; :func:`apply_parameters` applies
them with the pure functions of :mod:`brainnet.augment.functional`; :class:`BatchAugment` does both for a
key such as ``(seed, rank, global_step)``. The training loop augments each batch on its device after it
arrives, so loader workers do no augmentation, and since every random number comes from the key the
batches do not depend on the worker count, the loader backend, a resume or the device (CPU and CUDA agree
within float rounding: parameters are drawn on the CPU, noise voxels come from a counter-based hash).

Each transform runs only on the samples (or (sample, channel) pairs) it fires on, selected on the host
(no device sync), in place on the working batch: runs of consecutive pairs as views (no gather, no
scatter back; on the CPU in cache-sized pieces), the resampled samples of a slice stack in one gather
per channel, those of a 3D patch one at a time (written back with one copy); on the CPU each resampled
sample, image and labels together, by :mod:`brainnet.augment.cpu_kernels` (no grid tensor). The
training loop hands its freshly converted batch over (``inplace=True``); otherwise nothing copies the
batch first either: each volume comes from the input when it is first changed (:class:`_Working`).
Order, probabilities and ranges: :class:`~brainnet.augment.config.AugmentConfig`.

Border rule. Rotation and scaling read positions outside the patch (a 160x160 patch rotated by 45 degrees
reaches 41% beyond its faces; a scale of 1.4 reaches 20%). nnU-Net reads a larger window around each patch
(``initial_patch_size``) so that those positions hold real data and pads with zeros only outside the scan;
so does brainnet on a volume store: its loader reads each window with the context of
:func:`brainnet.augment.context.context_margin` and :func:`apply_parameters` (``out_shape``) resamples the
patch from it, or takes its centre for a sample that draws no spatial transform.
A patch store holds only the patch, so brainnet reflects it at its faces (``SpatialParams.padding =
"reflection"``, ``grid_sample``'s mirror about the face of the boundary voxel): the field of view keeps
image texture and labels (mirrored with the image, so they stay aligned) instead of a block of constant
image with background labels that exists in no scan. ``zeros`` (image 0, labels background) and ``border``
(nearest face voxel) are the alternatives.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from brainnet.augment import cpu_kernels as CK
from brainnet.augment import functional as AF
from brainnet.augment.brain_mask import mark_outside_brain_, mask_outside_brain_
from brainnet.augment.config import AugmentConfig, GammaParams, SpatialParams
from brainprep.errors import ShapeMismatchError

logger = logging.getLogger(__name__)

#: Bytes of volumes an intensity transform handles at a time (see :func:`_on_pairs`): a course volume
#: (160x160x16 float32, 1.6 MB) alone, small test volumes many at a time.
PIECE_BYTES = 2**21
#: Intensity transforms in nnU-Net's order (``trainer.py:772-829``), by AugmentConfig field.
_INTENSITY_ORDER = ("noise", "blur", "brightness", "contrast", "low_resolution", "gamma_inverted", "gamma")


@dataclass(frozen=True)
class BatchParams:
    """Every random choice for one batch of B samples with C channels (CPU tensors).

    Attributes:
        spatial: bool (B,) sample is resampled; matrices float64 (B, 3, 3) output -> input;
            control float32 (B, D, G1, .., GD) elastic control displacements in voxels (zero where
            off; D = 2, over the plane, for an anisotropic patch), ``None`` without elastic deformation.
        noise: bool (B,), noise_std (B,), noise_keys int64 (B,).
        blur: bool (B, C), blur_sigma (B, C, 3).
        brightness, contrast: bool (B, C), their factors (B, C).
        low_resolution: bool (B, C), low_resolution_scale (B, C, 3).
        gamma_inverted, gamma: bool (B, C), their exponents (B, C).
        flips: bool (B, 3).
    """

    spatial: torch.Tensor
    matrices: torch.Tensor
    control: torch.Tensor | None
    noise: torch.Tensor
    noise_std: torch.Tensor
    noise_keys: torch.Tensor
    blur: torch.Tensor
    blur_sigma: torch.Tensor
    brightness: torch.Tensor
    brightness_factor: torch.Tensor
    contrast: torch.Tensor
    contrast_factor: torch.Tensor
    low_resolution: torch.Tensor
    low_resolution_scale: torch.Tensor
    gamma_inverted: torch.Tensor
    gamma_inverted_gamma: torch.Tensor
    gamma: torch.Tensor
    gamma_gamma: torch.Tensor
    flips: torch.Tensor


def generator_for(key: Sequence[int]) -> torch.Generator:
    """A CPU generator seeded from integers (e.g. ``(seed, rank, step)``) through numpy's SeedSequence."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def short_axis(shape: Sequence[int], spatial: SpatialParams) -> int | None:
    """The axis an anisotropic patch is augmented across (in-plane only), ``None`` for a 3D patch.

    nnU-Net's rule (``do_dummy_2d_data_aug``): longest side over the short one above the threshold.
    """
    shortest = int(np.argmin(shape))
    return shortest if max(shape) / shape[shortest] > spatial.anisotropy_threshold else None


def _uniform(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return bounds[0] + u * (bounds[1] - bounds[0])


def _split_uniform(coin: np.ndarray, u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """batchgeneratorsv2's ``BGContrast``: half the time uniform in (low, 1), else in (max(low, 1), high)."""
    low, high = bounds
    below = (coin < 0.5) & (low < 1)
    lower = np.where(below, low, max(low, 1.0))
    upper = np.where(below, 1.0, high)
    return lower + u * (upper - lower)


class _Uniforms:
    """Consecutive pieces of one array of uniforms (float64, drawn at once): the blocks' draws as numpy
    arithmetic, a few microseconds each, where a torch op per draw had cost a tenth of a course batch."""

    def __init__(self, values: np.ndarray) -> None:
        self.values, self.used = values, 0

    def take(self, *shape: int) -> np.ndarray:
        count = math.prod(shape)
        piece = self.values[self.used : self.used + count].reshape(shape)
        self.used += count
        return piece


def _uniform_count(batch: int, channels: int) -> int:
    """Uniforms :func:`draw_parameters` takes after the spatial draws: 12 per sample, 18 per (sample,
    channel) (a fixed count, whatever the probabilities)."""
    return 12 * batch + 18 * batch * channels


def _float(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _control_shape(shape: Sequence[int], spacing: float) -> tuple[int, ...]:
    return tuple(max(2, math.ceil((s - 1) / spacing) + 1) for s in shape)


def _spatial_draws(config: SpatialParams, batch: int, shape: Sequence[int], g: torch.Generator):
    fire = torch.rand(batch, 3, generator=g)  # rotation, scaling, elastic
    angle_u = torch.rand(batch, 3, generator=g, dtype=torch.float64)
    scale_u = torch.rand(batch, generator=g, dtype=torch.float64)
    magnitude_u = torch.rand(batch, generator=g)
    rotate, scale, deform = (fire[:, k] < p for k, p in enumerate(config.probabilities))
    short = short_axis(shape, config)
    angles = torch.zeros(batch, 3, dtype=torch.float64)
    if short is None:
        angles = _uniform(angle_u, config.rotation_degrees)
    else:
        angles[:, short] = _uniform(angle_u[:, short], config.rotation_degrees_2d)
    angles = torch.where(rotate[:, None], torch.deg2rad(angles), torch.zeros_like(angles))
    scales = torch.where(scale, _uniform(scale_u, config.scaling), torch.ones_like(scale_u))
    scales = scales[:, None].expand(batch, 3).clone()
    if short is not None:
        scales[:, short] = 1.0
    return rotate | scale | deform, AF.rotation_scaling_matrices(angles, scales), deform, magnitude_u, short


def _warn_unused_rotation(spatial: SpatialParams, patch_size: tuple[int, ...]) -> None:
    """Warn when the rotation range set away from its default is the one ``patch_size`` does not use (an
    anisotropic patch turns by ``rotation_degrees_2d`` only, a 3D one by ``rotation_degrees`` only)."""
    if spatial.p_rotation <= 0:
        return
    unused = "rotation_degrees" if short_axis(patch_size, spatial) is not None else "rotation_degrees_2d"
    if getattr(spatial, unused) != getattr(SpatialParams(), unused):
        used = "rotation_degrees_2d" if unused == "rotation_degrees" else "rotation_degrees"
        shape = "x".join(map(str, patch_size))
        message = "spatial.%s is not used for the %s patch (it turns by spatial.%s)"
        logger.warning(message, unused, shape, used)


def draw_parameters(
    config: AugmentConfig, batch: int, channels: int, shape: Sequence[int], generator: torch.Generator
) -> BatchParams:
    """Draw every random choice of one batch; the draws' count and order depend only on (B, C, shape).

    Args:
        config: the augmentation.
        batch, channels: B and C of the image batch.
        shape: (X, Y, Z) of the patches.
        generator: a CPU generator (:func:`generator_for`).
    """
    g = generator
    spatial, matrices, deform, magnitude_u, short = _spatial_draws(config.spatial, batch, shape, g)
    u = _Uniforms(torch.rand(_uniform_count(batch, channels), generator=g, dtype=torch.float64).numpy())

    def fires(p: float) -> np.ndarray:
        return u.take(batch) < p

    def per_channel(sample: np.ndarray, p: float) -> torch.Tensor:
        return torch.from_numpy(sample[:, None] & (u.take(batch, channels) < p))

    def split(bounds: tuple[float, float]) -> torch.Tensor:
        coin, value = u.take(2, batch, channels)
        return _float(_split_uniform(coin, value, bounds))

    noise = torch.from_numpy(fires(config.noise.p))
    noise_std = _float(_uniform(u.take(batch), config.noise.std))
    noise_keys = torch.from_numpy((u.take(batch) * (2**31 - 1)).astype(np.int64))
    blur = per_channel(fires(config.blur.p), config.blur.p_per_channel)
    blur_sigma = _float(_uniform(u.take(batch, channels, 3), config.blur.sigma))
    brightness = per_channel(fires(config.brightness.p), 1.0)
    brightness_factor = split(config.brightness.multiplier)
    contrast = per_channel(fires(config.contrast.p), 1.0)
    contrast_factor = split(config.contrast.factor)
    low = config.low_resolution
    low_resolution = per_channel(fires(low.p), low.p_per_channel)
    low_scale = np.repeat(_uniform(u.take(batch, channels), low.scale)[..., None], 3, axis=-1)
    if short is not None:
        low_scale[..., short] = 1.0  # nnU-Net's ignore_axes: the short axis keeps its resolution
    low_scale = _float(low_scale)
    gamma_inverted = per_channel(fires(config.gamma_inverted.p), 1.0)
    gamma_inverted_gamma = split(config.gamma_inverted.gamma)
    gamma = per_channel(fires(config.gamma.p), 1.0)
    gamma_gamma = split(config.gamma.gamma)
    axes = np.array([a in config.mirror.axes for a in range(3)])
    flips = torch.from_numpy((u.take(batch, 3) < config.mirror.p) & axes[None, :])
    if u.used != len(u.values):  # the count the stream depends on, kept with the takes
        raise RuntimeError(f"draw_parameters took {u.used} uniforms of {len(u.values)}")
    control = None
    if config.spatial.p_elastic > 0:  # drawn last: its size depends on the patch shape
        plane = [shape[a] for a in range(3) if a != short]  # in-plane only for an anisotropic patch
        grid = _control_shape(plane, config.spatial.elastic_spacing)
        std = _uniform(magnitude_u, config.spatial.elastic_magnitude) * deform
        control = torch.randn(batch, len(plane), *grid, generator=g) * std.view(-1, *[1] * (len(plane) + 1))
    return BatchParams(
        spatial=spatial,
        matrices=matrices,
        control=control,
        noise=noise,
        noise_std=noise_std,
        noise_keys=noise_keys,
        blur=blur,
        blur_sigma=blur_sigma,
        brightness=brightness,
        brightness_factor=brightness_factor,
        contrast=contrast,
        contrast_factor=contrast_factor,
        low_resolution=low_resolution,
        low_resolution_scale=low_scale,
        gamma_inverted=gamma_inverted,
        gamma_inverted_gamma=gamma_inverted_gamma,
        gamma=gamma,
        gamma_gamma=gamma_gamma,
        flips=flips,
    )


@dataclass
class _Working:
    """The batch being augmented: ``image`` (B, C, X, Y, Z), contiguous, changed in place, and the volumes
    of it not written yet, whose values are still those of ``source`` (the caller's batch, or the centres
    of its windows with context).

    A volume is copied from ``source`` just before the first transform that changes it, so that the
    transform reads it from the cache instead of memory, and one no intensity transform changes is
    copied by :meth:`mirror` (flipped on the way): no copy of the whole batch first (a pass over it in
    memory, then each transform's own).

    A volume's flips (nnU-Net's last transform) are made right after the last intensity transform that
    changes it, while the piece is in the cache (:meth:`done`); the others by :meth:`mirror`.

    Attributes:
        pending: per flat volume ``b C + c`` (host bools), whether it still has to come from ``source``.
        last: per flat volume, the index of the last step (:meth:`done`'s ``step``) that changes it (-1:
            none); empty when nothing flips.
        flips: per sample, the dims (-3 X, -2 Y, -1 Z) it flips (set by :meth:`plan`).
    """

    image: torch.Tensor
    source: torch.Tensor
    pending: list[bool]
    last: list[int] = dataclasses.field(default_factory=list)
    flips: list[list[int]] = dataclasses.field(default_factory=list)

    def plan(self, masks: Sequence[torch.Tensor], flips: torch.Tensor) -> None:
        """Remember the steps' masks (bool (B, C) each, in order) and ``flips`` (bool (B, 3))."""
        self.flips = [[axis - 3 for axis in range(3) if row[axis]] for row in flips.tolist()]
        if not any(self.flips):
            return
        steps = torch.stack([m.flatten() for m in masks])  # (steps, B C)
        order = torch.arange(len(masks))[:, None]
        self.last = torch.where(steps, order, -1).amax(dim=0).tolist()

    def done(self, start: int, stop: int, step: int) -> None:
        """Flat volumes ``start`` .. ``stop - 1`` have been changed by ``step``: flip those it was the last
        for (a volume each, the copy back read from the cache)."""
        if not self.last:
            return
        channels = self.image.shape[1]
        flat = self.image.view(-1, *self.image.shape[2:])
        for i in range(start, stop):
            dims = self.flips[i // channels]
            if self.last[i] == step and dims:
                flat[i].copy_(flat[i].flip(dims))

    def volumes(self, start: int, stop: int) -> torch.Tensor:
        """Flat volumes ``start`` .. ``stop - 1`` of ``image`` (P, X, Y, Z), each written or copied in."""
        channels = self.image.shape[1]
        flat = self.image.view(-1, *self.image.shape[2:])
        for i in range(start, stop):
            if self.pending[i]:
                flat[i].copy_(self.source[i // channels, i % channels])
                self.pending[i] = False
        return flat[start:stop]

    def mirror(self) -> None:
        """Flip the volumes :meth:`done` has not flipped, a volume at a time (the copy back read from the
        cache); a pending one is flipped from ``source`` into place."""
        channels = self.image.shape[1]
        for sample, dims in enumerate(self.flips):
            for channel in range(channels):
                i = sample * channels + channel
                volume = self.image[sample, channel]
                if self.pending[i]:
                    source = self.source[sample, channel]
                    volume.copy_(source.flip(dims) if dims else source)
                elif dims and (not self.last or self.last[i] < 0):
                    volume.copy_(volume.flip(dims))


def _on_pairs(
    work: _Working,
    mask: torch.Tensor,
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    step: int,
) -> None:
    """Apply ``transform(volumes (P, X, Y, Z), pair_index (P,))`` to the (sample, channel) pairs of ``mask``
    (bool (B, C)) of ``work.image``, in place.

    The pairs are taken as views, one run of consecutive pairs at a time (no gather, no scatter back); on
    the CPU a run is cut into pieces of at most :data:`PIECE_BYTES` (at least one volume): a transform
    makes several passes over its volumes and allocates temporaries like them, and a piece that fits the
    cache, with temporaries the allocator hands back without fresh pages, is several times faster than
    a whole batch streamed through memory (``benchmarks/README.md``, augmentation). ``transform`` may
    change its volumes in place; a result that is a new tensor is copied into them. ``step``: its index in
    the order of transforms (:meth:`_Working.done`).
    """
    image = work.image
    flat = image.view(-1, *image.shape[2:])
    piece = max(1, PIECE_BYTES // (flat[0].numel() * flat.element_size()))
    for run_start, run_stop, _ in AF.sample_runs(mask.flatten().nonzero().flatten().tolist()):
        pieces = range(run_start, run_stop, piece) if image.device.type == "cpu" else [run_start]
        for start in pieces:
            stop = min(start + piece, run_stop) if image.device.type == "cpu" else run_stop
            volumes = work.volumes(start, stop)
            out = transform(volumes, torch.arange(start, stop))
            if out.data_ptr() != volumes.data_ptr():
                volumes.copy_(out)
            work.done(start, stop, step)


def _apply_spatial(
    config: SpatialParams,
    params: BatchParams,
    image: torch.Tensor,
    label: torch.Tensor | None,
    source: tuple[torch.Tensor, torch.Tensor | None],
) -> None:
    """Resample into ``image`` and ``label``, in place, the samples that drew a spatial transform, reading
    ``source`` (the same tensors, or windows with context around them: :mod:`brainnet.augment.context`);
    an anisotropic patch slice by slice (2D grids: a quarter of the taps of 3D ones, and nnU-Net's dummy
    2D). The others are not touched (nnU-Net's ``SpatialTransform`` also skips the resampling when nothing
    fires: ``grid is None``)."""
    index = params.spatial.nonzero().flatten()
    if index.numel() == 0:
        return
    shape, in_shape = image.shape[2:], source[0].shape[2:]
    short = short_axis(shape, config)
    plane = [a for a in range(3) if a != short]
    if short is not None and in_shape[short] != shape[short]:
        raise ShapeMismatchError(
            f"a patch {tuple(shape)} turns in-plane only: its window needs no context across axis {short}, "
            f"found {tuple(in_shape)}"
        )
    matrices = params.matrices[index][:, plane][:, :, plane]
    sides, in_sides = [shape[a] for a in plane], [in_shape[a] for a in plane]
    if _kernels_resample(config, params, image, shape):
        columns, shift = AF.normalized_affine(matrices, in_sides)
        for n, sample in enumerate(index.tolist()):  # each sample read before written (copied if shared)
            labels = (None, None) if label is None else (source[1][sample], label[sample])
            CK.warp_sample(
                source[0][sample], labels[0], columns[n], shift[n], config.padding, image[sample], labels[1]
            )
        return
    displacement = None
    if params.control is not None:
        displacement = AF.elastic_displacement(
            params.control[index].to(image.device), [shape[a] for a in plane]
        )
    grid = AF.sampling_grid(matrices, sides, in_sides, displacement=displacement, device=image.device)
    padding = config.padding
    if padding == "reflection":  # reflected once here, for the image and the labels
        grid, padding = AF.reflect_grid(grid, in_sides), "zeros"
    if short == 2:  # slices along the last axis, contiguous: one gather for every selected sample
        AF.warp_slices(source[0].contiguous(), grid, index, padding, out=image)
        if label is not None:
            AF.warp_slice_labels(source[1].contiguous(), grid, index, padding, out=label)
        return
    for n, sample in enumerate(index.tolist()):
        # a sample at a time: views in and one copy back; the short axis of a slice stack leads the plane
        volumes, window = image[sample : sample + 1], source[0][sample : sample + 1]
        if short is None:
            # channels last: the CPU 3D kernel then reads a corner's C values from one cache line
            window = window.contiguous(memory_format=torch.channels_last_3d)
        else:
            volumes, window = volumes.movedim(2 + short, 2), window.movedim(2 + short, 2)
        AF.warp(window, grid[n : n + 1], padding, out=volumes)  # each sample read before written
        if label is not None:
            labels, windows = label[sample : sample + 1], source[1][sample : sample + 1]
            if short is not None:
                labels, windows = labels.movedim(1 + short, 1), windows.movedim(1 + short, 1)
            AF.warp_labels(windows, grid[n : n + 1], padding, out=labels)


def _kernels_resample(
    config: SpatialParams, params: BatchParams, image: torch.Tensor, shape: Sequence[int]
) -> bool:
    """Whether :mod:`brainnet.augment.cpu_kernels` resample the batch's samples of patch ``shape``: an
    affine map (no elastic field), ``image`` one they take (:func:`~brainnet.augment.cpu_kernels.runs_on`),
    a 3D patch or a slice stack along its last axis."""
    return params.control is None and CK.runs_on(image) and short_axis(shape, config) in (None, 2)


def centre(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The centre ``shape`` of the last three axes of ``x`` (a view), each side shorter by an even count.

    Raises:
        ShapeMismatchError: ``x`` is smaller than ``shape`` or not larger by an even count along an axis.
    """
    sides = x.shape[-3:]
    if any(s < t or (s - t) % 2 for s, t in zip(sides, shape, strict=True)):
        raise ShapeMismatchError(
            f"a window with context must exceed the patch {tuple(shape)} by an even count per axis, "
            f"found {tuple(sides)}"
        )
    return x[(..., *(slice((s - t) // 2, (s + t) // 2) for s, t in zip(sides, shape, strict=True)))]


def _gamma(block: GammaParams, gammas: torch.Tensor):
    return lambda x, i: AF.gamma_(x, gammas.flatten()[i], block.invert, block.retain_stats)


def apply_parameters(
    config: AugmentConfig,
    params: BatchParams,
    image: torch.Tensor,
    label: torch.Tensor | None = None,
    *,
    inplace: bool = False,
    out_shape: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply one batch's draws.

    Args:
        config: the augmentation the parameters were drawn for (padding, contrast range, gamma flags).
        params: :func:`draw_parameters` of this batch.
        image: float (B, C, X, Y, Z) on any device.
        label: (B, X, Y, Z) label map (any integer dtype), or ``None``; only spatial transforms and
            mirroring touch it.
        inplace: the caller hands ``image`` and ``label`` over (e.g. a batch just converted on its
            device): they are changed in place (when contiguous) instead of copied first; except on the
            CPU when a sample is resampled by :mod:`~brainnet.augment.cpu_kernels`, which then write into
            new tensors straight from the inputs (in place, each resampled sample would be read from a
            copy of itself).
        out_shape: the patch (X, Y, Z), when ``image`` and ``label`` are windows with context around it
            (:func:`~brainnet.augment.context.context_margin`): a resampled sample reads its window, any
            other is the window's centre. Default: the input's shape.

    Returns:
        The image and label of ``out_shape``: the inputs themselves, changed, when ``inplace`` takes them
        (above); otherwise new tensors, the inputs not modified (windows with context are only read).
    """
    source = image, label
    labels_change = label is not None and (bool(params.spatial.any()) or bool(params.flips.any()))
    patch = image.shape[2:] if out_shape is None else out_shape
    kernels_resample = bool(params.spatial.any()) and _kernels_resample(config.spatial, params, image, patch)
    if inplace and not kernels_resample and (out_shape is None or tuple(out_shape) == tuple(image.shape[2:])):
        # the working tensors, changed in place from here on
        image = image.contiguous()
        label = label.contiguous() if labels_change else label
        source = image, label
        work = _Working(image, image, [False] * (image.shape[0] * image.shape[1]))
    else:
        # a new working image: the resampled samples read the inputs (the windows), the others are copied
        # a volume at a time as they are first changed (the centres of windows with context)
        kept = centre(image, out_shape) if out_shape is not None else image
        pending = (~params.spatial)[:, None].expand(-1, image.shape[1]).flatten().tolist()
        work = _Working(torch.empty(kept.shape, dtype=kept.dtype, device=kept.device), kept, pending)
        if out_shape is not None and label is not None:  # a new label map (of the centres)
            label = _copy_samples(centre(label, out_shape), ~params.spatial)
        elif label is not None:  # new even when unchanged, as the docstring promises
            label = _copy_samples(label, ~params.spatial)
    _apply(config, params, work, label, source)
    return work.image, label


def _copy_samples(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A new contiguous tensor like ``x`` holding its samples where ``keep`` (bool (B,), on the host);
    the others are left unset for the spatial transform to write whole."""
    if bool(keep.all()):
        return x.clone(memory_format=torch.contiguous_format)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    for start, stop, _ in AF.sample_runs(keep.nonzero().flatten().tolist()):
        out[start:stop].copy_(x[start:stop])
    return out


def _apply(
    config: AugmentConfig,
    params: BatchParams,
    work: _Working,
    label: torch.Tensor | None,
    source: tuple[torch.Tensor, torch.Tensor | None],
) -> None:
    """:func:`apply_parameters` on working tensors, in place (spatial transforms read ``source``)."""
    image = work.image
    _apply_spatial(config.spatial, params, image, label, source)
    channels = image.shape[1]
    noise_pairs = params.noise[:, None].expand(-1, channels)

    def noise(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        sample = i // channels
        # one key per (sample, channel): channels share the std, not the noise
        return AF.gaussian_noise_(
            x, params.noise_std[sample], params.noise_keys[sample] * channels + i % channels
        )

    steps = {
        "noise": (noise_pairs, noise),
        "blur": (params.blur, lambda x, i: AF.gaussian_blur(x, params.blur_sigma.reshape(-1, 3)[i])),
        "brightness": (
            params.brightness,
            lambda x, i: AF.multiply_(x, params.brightness_factor.flatten()[i]),
        ),
        "contrast": (
            params.contrast,
            lambda x, i: AF.contrast_(x, params.contrast_factor.flatten()[i], config.contrast.preserve_range),
        ),
        "low_resolution": (
            params.low_resolution,
            lambda x, i: AF.low_resolution_(x, params.low_resolution_scale.reshape(-1, 3)[i]),
        ),
        "gamma_inverted": (params.gamma_inverted, _gamma(config.gamma_inverted, params.gamma_inverted_gamma)),
        "gamma": (params.gamma, _gamma(config.gamma, params.gamma_gamma)),
    }
    work.plan([steps[name][0] for name in _INTENSITY_ORDER], params.flips)
    for step, name in enumerate(_INTENSITY_ORDER):
        mask, transform = steps[name]
        _on_pairs(work, mask, transform, step)
    work.mirror()
    if label is not None:
        AF.mirror_(label, params.flips)


class BatchAugment:
    """``augment(image, label, key)``: draw from ``key`` and apply :class:`AugmentConfig` to a batch.

    Args:
        config: the augmentation.
        patch_size: the (X, Y, Z) it outputs when batches are windows with context around the patches
            (:func:`~brainnet.augment.context.context_margin`); ``None``: the batch's own shape.
        mask_background: the batches are standardized inside the brain (``volume-nonzero``: 0 outside it
            in every channel), and stay 0 there through augmentation, as nnU-Net's ``MaskImageTransform``
            keeps them (:mod:`brainnet.augment.brain_mask`; needs the label).

    Call args:
        image: float (B, C, X, Y, Z), label (B, X, Y, Z) or ``None``, on any device.
        key: integers naming the batch, e.g. ``(seed, rank, global_step)``.
        inplace: ``image`` and ``label`` are the caller's to overwrite (:func:`apply_parameters`).
    """

    def __init__(
        self, config: AugmentConfig, patch_size: Sequence[int] | None = None, mask_background: bool = False
    ) -> None:
        self.config = config
        self.mask_background = bool(mask_background)
        self.patch_size = None if patch_size is None else tuple(int(s) for s in patch_size)
        if self.patch_size is not None:
            _warn_unused_rotation(config.spatial, self.patch_size)

    def parameters(self, image: torch.Tensor, key: Sequence[int]) -> BatchParams:
        """The draws of the batch: they depend on B, C and the patch's shape (not on its context's)."""
        batch, channels, *shape = image.shape
        shape = list(self.patch_size or shape)
        return draw_parameters(self.config, batch, channels, shape, generator_for(key))

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None, key: Sequence[int], *, inplace: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.config.active:
            if self.patch_size is None or tuple(image.shape[2:]) == self.patch_size:
                return image, label
            return centre(image, self.patch_size), None if label is None else centre(label, self.patch_size)
        params = self.parameters(image, key)
        masked = self.mask_background and label is not None
        if masked:
            label = mark_outside_brain_(label if inplace else label.clone(), image)
        image, label = apply_parameters(
            self.config, params, image, label, inplace=inplace, out_shape=self.patch_size
        )
        return mask_outside_brain_(image, label) if masked else (image, label)
