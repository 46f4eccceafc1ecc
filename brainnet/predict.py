"""Segment whole scans: preprocess as the training store was, slide patch-sized windows, write NIfTI.

The sliding window runs over the brain's bounding box, the crop a volume store keeps
(:func:`brainprep.volume.crop_from_hits` of the brain mask, widened to the window where shorter), never
over the empty field of view around the head: a window there would be a few brain voxels among zeros, a
window no training patch resembles (under ``patch-slice`` its few brain voxels would be standardized
against the zeros around them). Outside the box every voxel is background and is labelled 0. A case
scored from a volume store (:func:`brainnet.evaluate.evaluate_store`) is therefore predicted from the
very windows this module predicts it from.

"Preprocessed exactly as the store was" depends on the store's standardization:

- ``patch-slice`` (the course): every stored patch was standardized on its own, each channel of each
  z-slice to mean 0 / std 1 over the *patch's* slice. A whole-scan slice standardized at once would have
  other statistics, so the raw crop (relative to the scan's background, as the volume store keeps it) is
  tiled and each window is standardized inside the predictor, with the same
  :func:`brainprep.standardize.standardize_patch_slices` the builder used. (Windows are the store's patch
  size, so a window sees exactly the context a training patch saw. Where the scan is shorter than the
  window the crop is zero-padded, as the store pads it; those zeros then count in the slice statistics.)
- ``volume-nonzero`` (nnU-Net): statistics over the brain of the whole volume, so the scan is
  standardized once, before tiling, with :func:`~brainprep.standardize.nonzero_statistics` and
  :func:`~brainprep.standardize.standardize_with_statistics` (background kept at 0).

In both cases windows are rounded through the store's dtype (float16 by default) so the network sees the
values it was trained on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from brainnet.infer.sliding_window import sliding_window
from brainnet.metrics import probabilities_to_labels, segmentation_metrics
from brainnet.train.checkpoint import LoadedModel
from brainprep import Case, CaseFiles, write_label_in_source_space
from brainprep.errors import CaseError, one_line
from brainprep.files import replacing
from brainprep.params import BuildParams
from brainprep.spec import DatasetSpec
from brainprep.standardize import (
    background_values,
    brain_mask,
    nonzero_statistics,
    standardize_patch_slices,
    standardize_with_statistics,
)
from brainprep.volume import Crop, axis_hits, crop_from_hits, cut_crop, window_parts

logger = logging.getLogger(__name__)


def model_probabilities(
    model: torch.nn.Module, batch: torch.Tensor, amp: bool = False, amp_dtype: str = "bfloat16"
) -> torch.Tensor:
    """Sigmoid probabilities float32 (B, 3, X, Y, Z) of a float batch (B, 4, X, Y, Z) on the model's device.

    With ``amp`` (CUDA only) the network runs under ``amp_dtype`` (``bfloat16`` or ``float16``) autocast,
    as training validated it; the sigmoid is taken in float32.
    """
    device = next(model.parameters()).device
    enabled = amp and device.type == "cuda"
    dtype = torch.float16 if amp_dtype == "float16" else torch.bfloat16
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=enabled):
        logits = model.forward_logits(batch.to(device, dtype=torch.float32, non_blocking=True))
    return torch.sigmoid(logits.float())


def round_through(array: np.ndarray, dtype: str) -> np.ndarray:
    """float32 ``array`` after a round trip through the store dtype (what training patches went through)."""
    return array.astype(dtype).astype(np.float32, copy=False)


def stores_raw(build_params: BuildParams) -> bool:
    """True for a volume store's model: its store rounded the *raw* intensities (less the background)
    through the store dtype and training standardized them in float32; a patch store rounded the
    standardized values. Prediction rounds where its training data was rounded."""
    return build_params.store.kind == "volumes"


def window_predictor(
    model: torch.nn.Module, build_params: BuildParams, amp: bool = False, amp_dtype: str = "bfloat16"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The predictor of :func:`~brainnet.infer.sliding_window.sliding_window` for this store's preprocessing
    (``amp``, ``amp_dtype``: :func:`model_probabilities`).

    Returns:
        A function mapping raw (``patch-slice``) or standardized (``volume-nonzero``) float windows
        (B, 4, X, Y, Z) to probabilities float32 (B, 3, X, Y, Z) on the windows' device.
    """
    per_window = build_params.standardize.method == "patch-slice"
    dtype = build_params.store.dtype
    # a volume store's windows are rounded raw (the box is, :func:`brain_box`) and standardized in float32
    rounded_after = not stores_raw(build_params)

    def predict(windows: torch.Tensor) -> torch.Tensor:
        if per_window:
            arrays = windows.detach().cpu().numpy()
            standardized = [standardize_patch_slices(w) for w in arrays]
            if rounded_after:
                standardized = [round_through(w, dtype) for w in standardized]
            windows = torch.from_numpy(np.stack(standardized))
        return model_probabilities(model, windows, amp, amp_dtype).to(windows.device)

    return predict


def prepare_volume(
    image: np.ndarray, build_params: BuildParams, background: np.ndarray | None = None
) -> np.ndarray:
    """The scan as the sliding window should see it.

    Args:
        image: float32 (4, X, Y, Z) RAS scan (raw intensities).
        background: (4,) its background (:func:`~brainprep.standardize.background_values`, computed when
            ``None``): the brain is what differs from it, as in the store.

    Returns:
        float32 (4, X, Y, Z): raw for ``patch-slice`` (standardized per window later), standardized over
        the brain for ``volume-nonzero``.
    """
    if build_params.standardize.method == "patch-slice":
        return np.asarray(image, dtype=np.float32)
    if background is None:
        background = background_values(image)
    mask = brain_mask(image, background)
    if stores_raw(build_params):  # as the volume store: statistics of the rounded raw values, none after
        offset = np.asarray(background, dtype=np.float32)[:, None, None, None]
        shifted = np.asarray(image, dtype=np.float32) - offset
        rounded = round_through(shifted, build_params.store.dtype)
        mean, std = nonzero_statistics(rounded, 0.0)
        return standardize_with_statistics(rounded, mean, std, mask=mask)
    mean, std = nonzero_statistics(image, background)
    standardized = standardize_with_statistics(image, mean, std, mask=mask)
    return round_through(standardized, build_params.store.dtype)


def predict_case(
    model: torch.nn.Module,
    case: Case,
    build_params: BuildParams,
    window: tuple[int, int, int] | None = None,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    *,
    threshold: float = 0.5,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    brain_only: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment one whole scan.

    Args:
        model: a :class:`~brainnet.model.UNet3D` (put in eval mode here).
        case: the scan, from :func:`brainprep.read_case`.
        build_params: the preprocessing of the training store (from the checkpoint).
        window: window size; default the store's patch size.
        overlap: fraction shared by neighbouring windows.
        batch_size: windows per forward pass.
        device: where the network runs (default: where the model is).
        threshold: a class is present where its probability is above this.
        amp, amp_dtype: autocast on CUDA (:func:`model_probabilities`): a checkpoint's own
            ``TrainConfig.amp_dtype`` scores it as its validation did.
        brain_only: slide the window over the brain's bounding box only (the module docstring says why)
            and zero the probabilities (hence labels) outside the brain (voxels that equal the background
            in every channel: 0 in a skull-stripped scan, the constant of an already-normalized one, see
            :func:`~brainprep.standardize.brain_mask`): no training patch taught the network anything
            there. Windows holding no brain voxel are then not predicted. ``False`` slides over the whole
            scan and predicts every voxel.

    Returns:
        (labels uint8 (X, Y, Z) MSD convention on the case's RAS grid, probabilities float32 (3, X, Y, Z)).
    """
    window = tuple(window) if window is not None else build_params.sampling.patch_size
    box = brain_box(case.image, build_params, window, brain_only)  # type: ignore[arg-type]
    crop_labels, crop_probabilities = predict_volume(
        model,
        box.volume,
        build_params,
        box.mask,
        window,
        overlap,
        batch_size,
        device,
        threshold=threshold,
        amp=amp,
        amp_dtype=amp_dtype,
        progress=progress,
    )
    return box.paste(crop_labels), box.paste(crop_probabilities)


@dataclass(frozen=True)
class BrainBox:
    """What the sliding window of a scan covers (see the module docstring).

    Attributes:
        crop: the brain's bounding box on the scan's grid, at least the window along every axis.
        volume: float32 (4, *crop.shape): the scan prepared for the window (:func:`prepare_volume`;
            under ``patch-slice`` relative to the scan's background), cut to the box.
        mask: bool (*crop.shape), the brain in the box; ``None`` when every voxel is predicted.
        shape: the scan's (X, Y, Z).
    """

    crop: Crop
    volume: np.ndarray
    mask: np.ndarray | None
    shape: tuple[int, int, int]

    def paste(self, values: np.ndarray) -> np.ndarray:
        """(..., *crop.shape) values of the box on the whole scan (..., X, Y, Z), zeros outside the box."""
        out = np.zeros((*values.shape[:-3], *self.shape), dtype=values.dtype)
        source, target = window_parts(self.shape, self.crop.offset, self.crop.shape)  # type: ignore[misc]
        out[(Ellipsis, *source)] = values[(Ellipsis, *target)]
        return out


def brain_box(
    image: np.ndarray, build_params: BuildParams, window: tuple[int, int, int], brain_only: bool = True
) -> BrainBox:
    """The :class:`BrainBox` of a float32 (4, X, Y, Z) RAS scan: the volume store's crop of its brain
    (:func:`brainprep.volume.crop_from_hits`), or with ``brain_only=False`` the whole scan."""
    shape = tuple(image.shape[1:])
    background = background_values(image)
    mask = brain_mask(image, background) if brain_only else np.ones(shape, dtype=bool)
    crop = crop_from_hits(axis_hits(mask), shape, window)
    if crop is None:  # no brain voxel: the whole scan, whose every window the mask skips
        crop = Crop((0, 0, 0), shape, ((0, 0),) * 3)  # type: ignore[arg-type]
    if build_params.standardize.method == "patch-slice":
        # cut first (a copy of the box, not of the field of view), then made relative to the background
        # inside the scan, as the store's crop: its padding stays 0
        volume = cut_crop(image, crop, np.float32)
        parts = window_parts(shape, crop.offset, crop.shape)
        if parts is not None:
            volume[(Ellipsis, *parts[1])] -= background.astype(np.float32)[:, None, None, None]
        if stores_raw(build_params):
            volume = round_through(volume, build_params.store.dtype)
    else:  # standardized over the whole brain, which the box holds
        volume = cut_crop(prepare_volume(image, build_params, background), crop)
    mask_crop = cut_crop(mask, crop) if brain_only else None
    return BrainBox(crop, volume, mask_crop, shape)  # type: ignore[arg-type]


def predict_volume(
    model: torch.nn.Module,
    volume: np.ndarray,
    build_params: BuildParams,
    mask: np.ndarray | None = None,
    window: tuple[int, int, int] | None = None,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    *,
    threshold: float = 0.5,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment a volume already prepared as the sliding window should see it (:func:`prepare_volume`, or
    a volume store's crop: :func:`brainnet.evaluate.evaluate_store`).

    Args:
        volume: float32 (4, X, Y, Z): raw for ``patch-slice`` (each window is standardized in the
            predictor), standardized for ``volume-nonzero``.
        mask: bool (X, Y, Z), the brain: probabilities are zeroed outside it and windows without a brain
            voxel are not run through the network; ``None`` predicts everywhere.
        Others: as :func:`predict_case`.

    Returns:
        (labels uint8 (X, Y, Z) of the spec's classes, probabilities float32 (3, X, Y, Z)).
    """
    window = tuple(window) if window is not None else build_params.sampling.patch_size
    if device is not None:
        model.to(device)
    model.eval()
    probabilities = sliding_window(
        torch.from_numpy(np.asarray(volume, dtype=np.float32)),
        window_predictor(model, build_params, amp, amp_dtype),
        window=window,
        overlap=overlap,
        blend="gaussian",
        batch_size=batch_size,
        device="cpu",  # windows are standardized on the CPU; the predictor moves them to the model
        progress=progress,
        mask=torch.from_numpy(mask) if mask is not None else None,
    ).numpy()
    labels = probabilities_to_labels(probabilities, threshold=threshold)
    return labels, probabilities


@dataclass(frozen=True)
class CasePrediction:
    """The outcome of :func:`segment_case`.

    Attributes:
        case_id: the case.
        labels: uint8 (X, Y, Z) MSD labels on the RAS grid.
        output: the written NIfTI (source orientation, affine and shape).
        metrics: :func:`~brainnet.metrics.segmentation_metrics` against the case's label (the label-map
            Dice ``evaluate`` reports, over the whole scan), or ``None``.
        png: the overlay picture, when asked for.
        warning: why a label file that exists or should exist gave no metrics, else ``None``.
        written_values: the value ``output`` holds for each class of ``labels`` (its index): the
            canonical 0, 1, 2, ..., or the source convention's (``source_labels``).
    """

    case_id: str
    labels: np.ndarray
    output: Path
    metrics: dict[str, dict[str, float]] | None
    png: Path | None
    warning: str | None = None
    written_values: tuple[int, ...] = ()


def read_truth(case: Case) -> tuple[np.ndarray | None, str | None]:
    """The case's label, only to score a prediction: never an error, since predicting needs no label.

    Args:
        case: read without its label (``read_case(files, with_label=False)``).

    Returns:
        (uint8 (X, Y, Z) canonical labels on the case's RAS grid or ``None``, the warning when a label file is
        missing, unreadable (truncated...), of another grid, or holds values outside its convention).
        A case without a label by design (an image alone, a validation release) gives ``(None, None)``.
    """
    path = case.files.label_path
    if path is None:
        return None, None
    if not path.is_file():
        return None, f"no label file {path} for case {case.case_id}: no metrics"
    from brainprep.read.case import read_label

    try:
        label = read_label(case.files, case.source_shape, case.source_affine).label
    except CaseError as err:
        return None, f"label not used, no metrics: {one_line(err)}"
    return np.array(label, order="C"), None


def _draw_prediction(
    case: Case, labels: np.ndarray, truth: np.ndarray | None, spec: DatasetSpec, path: Path
) -> None:
    """Draw the axial slice with the most tumour (true tumour when the case has a label, else predicted)."""
    from brainnet.evaluate import OverlayRow, draw_overlays

    shown = truth if truth is not None and truth.any() else labels
    z = int(np.argmax((shown > 0).sum(axis=(0, 1)))) if shown.any() else labels.shape[2] // 2
    row = OverlayRow(
        title=f"{case.case_id} z={z}",
        image=case.image[0, :, :, z],
        truth=truth[:, :, z] if truth is not None else None,
        prediction=labels[:, :, z],
    )
    draw_overlays([row], path, spec)


def segment_case(
    loaded: LoadedModel,
    files: CaseFiles,
    out_path: Path,
    *,
    overlap: float = 0.5,
    batch_size: int = 4,
    source_labels: bool = False,
    png: Path | None = None,
    amp: bool = False,
    progress: bool = False,
) -> CasePrediction:
    """Read a case, segment it and write the label map in the case's source space.

    The label, when there is one, only adds metrics: a missing, truncated or out-of-convention label is a
    warning (logged, and in :attr:`CasePrediction.warning`), never a refusal.

    Args:
        loaded: the network and its store parameters (:func:`brainnet.train.load_model`).
        files: the case, from :func:`brainprep.discover_cases`.
        out_path: the ``.nii.gz`` to write.
        source_labels: write the source's label values (e.g. BraTS 2023's) instead of the canonical
            classes (for gliomas MSD's values). The classes are the checkpoint's spec's; a case read
            with a spec of other classes gets no metrics (and its values are the checkpoint's).
        png: also draw the axial slice with the most predicted tumour.
    """
    from brainprep import read_case
    from brainprep.spacing import spacing_mismatch

    case = read_case(files, with_label=False)
    mismatch = spacing_mismatch(case.spacing, loaded.build_params.spacing)
    if mismatch is not None:
        logger.warning("case %s: %s", case.case_id, mismatch)
    truth, warning = read_truth(case)
    if warning is not None:
        logger.warning("%s", warning)
    trained = loaded.train_config
    threshold = trained.threshold if trained is not None else 0.5
    labels, _ = predict_case(
        loaded.model,
        case,
        loaded.build_params,
        overlap=overlap,
        batch_size=batch_size,
        threshold=threshold,
        amp=amp,
        amp_dtype=trained.amp_dtype if trained is not None else "bfloat16",
        progress=progress,
    )
    spec = loaded.spec
    same_classes = files.spec.classes == spec.classes
    if truth is not None and not same_classes:
        warning = (
            f"the case's labels ({files.spec.describe()}) are not the model's classes "
            f"({', '.join(spec.foreground)}): no metrics"
        )
        logger.warning("%s", warning)
        truth = None
    written = (files.spec if same_classes else spec) if source_labels else None
    metrics = segmentation_metrics(labels, truth, spec) if truth is not None else None
    with contextlib.ExitStack() as outputs:
        # both or neither: the picture is drawn under a temporary name first and renamed after the NIfTI
        if png is not None:
            _draw_prediction(case, labels, truth, spec, outputs.enter_context(replacing(png)))
        output = write_label_in_source_space(labels, case, Path(out_path), written)
    picture = None if png is None else Path(png)
    values = (
        tuple(int(v) for v in written.source_values)
        if written is not None
        else tuple(range(len(spec.classes)))
    )
    return CasePrediction(case.case_id, labels, output, metrics, picture, warning, values)
