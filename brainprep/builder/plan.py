"""Plan a build, cheaply: per case, the source file hashes and where its patches are cut (labels only).

The plan of every case is made before anything is written, so a bad case (missing or unreadable file,
label/image shape or affine mismatch, label values outside the convention) stops the build before it
writes a byte. Only the label voxels are decoded here (read once: hashed, inflated and checked from the
same bytes); image files are opened for their headers (shape, affine) only. Image files are hashed by
the write stage, from the bytes it reads anyway, so no file is read twice; the label patches travel
with the plan (packed), so the write stage never reads the label file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.errors import BrainprepError, CaseError, ShapeMismatchError
from brainprep.params import BuildParams, SpacingParams
from brainprep.read import CaseFiles
from brainprep.read.case import LabelVoxels, check_image_headers, read_label
from brainprep.read.nifti import read_nifti_header
from brainprep.sample import case_rng, cut_label_patches, patch_fractions, patch_misfit, sample_corners

logger = logging.getLogger(__name__)

HASH_BLOCK = 1 << 20


class BadCasesError(BrainprepError, ValueError):
    """Some cases cannot be read; ``messages`` holds one line per case, naming the file."""

    def __init__(self, messages: list[str], *, resumed: bool = False):
        self.messages = list(messages)
        self.resumed = resumed
        lines = "\n".join(self.messages)
        super().__init__(f"{self.summary} (fix them, or pass --skip-bad to record and skip them):\n{lines}")

    @property
    def summary(self) -> str:
        """One line: how many cases are bad and what this build wrote."""
        if self.resumed:
            return (
                f"{len(self.messages)} bad case(s) among those left to build; nothing more written "
                "(the cases done before the interruption are kept, the store stays incomplete)"
            )
        return f"{len(self.messages)} bad case(s), nothing written"


@dataclass(frozen=True, eq=False)
class CasePlan:
    """What the write stage does with one case.

    Attributes:
        index: position in the store's case table (slots ``index*K .. index*K+K-1``).
        case_id: e.g. ``BRATS_001``.
        split: ``train`` or ``val``.
        files: source files as ``{"path" (relative to the data root), "size", "sha256"}``: the label's
            alone for a readable case (the write stage adds the images'), every file's for a bad case.
        corners: int32 (n, 3), n <= K, patch corners on the case's RAS grid.
        tumour_fraction: float32 (n,) share of label > 0 in each patch.
        class_fractions: float32 (n, n_classes) shares of each foreground class in each patch.
        valid_corner_share: share of the fitting corners that are valid.
        best_tumour_fraction: best tumour fraction over all corners.
        skip_reason: why fewer than K patches (``None`` when K), or the problem of a bad case.
        problem: the one-line error of a bad case, ``None`` for a readable one.
        packed_labels: the n uint8 label patches, cut when the plan read the label file (so the write
            stage does not read it again), packed by :func:`pack_label_patches`: ~1% of their 8 MB for
            20 patches of 160x160x16.
        geometry: the grid the case is stored on (:func:`brainprep.spacing.case_geometry`: spacings,
            RAS affine, resampled or not), recorded in its case entry; ``None`` for a bad case.
    """

    index: int
    case_id: str
    split: str
    files: tuple[dict[str, Any], ...]
    corners: np.ndarray
    tumour_fraction: np.ndarray
    class_fractions: np.ndarray
    valid_corner_share: float
    best_tumour_fraction: float
    skip_reason: str | None
    problem: str | None = None
    packed_labels: bytes = b""
    geometry: dict[str, Any] | None = None

    @property
    def n_patches(self) -> int:
        return len(self.corners)

    def label_patches(self, patch_size: tuple[int, int, int]) -> np.ndarray:
        """uint8 (n, px, py, pz) label patches at :attr:`corners`."""
        return unpack_label_patches(self.packed_labels, self.n_patches, patch_size)


def file_entry(path: Path, root: Path, size: int, sha256: str) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of a hashed file; ``path`` relative to ``root`` when inside it."""
    try:
        relative = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        relative = str(path)
    return {"path": relative, "size": int(size), "sha256": sha256}


def file_record(path: Path, root: Path) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of one existing file; ``path`` relative to ``root`` when inside it."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return file_entry(path, root, path.stat().st_size, digest.hexdigest())


def source_fingerprint(file_records: list[dict[str, Any]]) -> str:
    """sha256 of the sorted per-file sha256 digests, joined by newlines (independent of the data's path)."""
    digests = sorted(record["sha256"] for record in file_records)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def read_plan_label(
    files: CaseFiles, spacing: SpacingParams | None = None
) -> tuple[LabelVoxels, dict[str, Any]]:
    """The case's label on the grid the build stores it on, checked against the image headers only (the
    image voxels are decoded by the write stage), and that grid.

    Args:
        spacing: the build's resolved spacing policy (``None``: ``uniform``); under ``resample`` a case
            off the target spacing gets its label resampled (nearest neighbour).

    Returns:
        (the label: ``.label`` uint8 (X, Y, Z) MSD on the (resampled) RAS grid, with the file's size and
        sha256; the grid, :func:`brainprep.spacing.case_geometry`).

    Raises:
        CaseError: missing/unreadable file, image/label shape or affine mismatch, bad label values.
    """
    from brainprep.spacing import case_geometry, resample_label

    if files.label_path is None:
        raise CaseError("the case has no label file; a patch store needs labels", case_id=files.case_id)
    headers = [read_nifti_header(path, files.case_id) for path in files.image_paths]
    shape, affine = check_image_headers(files, headers)  # read_case's checks and words, on headers only
    labels = read_label(files, shape, affine)
    geometry = case_geometry(shape, affine, spacing or SpacingParams())
    if geometry["resampled"]:
        resampled = resample_label(labels.label, geometry["source_spacing"], geometry["spacing"])
        labels = dataclasses.replace(labels, label=resampled)
    return labels, geometry


def plan_corners(
    label: np.ndarray, params: BuildParams, case_id: str, n_classes: int
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """Pure part of the plan: corners of one case, its label patches and the fractions of each patch.

    Args:
        label: uint8 (X, Y, Z), canonical classes, RAS.
        n_classes: foreground classes of the dataset spec.

    Returns:
        (CaseSampling, uint8 (n, px, py, pz) label patches, float32 (n,) tumour fractions, float32
        (n, n_classes) class fractions).
    """
    sampling = sample_corners(label, params.sampling, case_rng(params.seed, case_id))
    patches = cut_label_patches(label, sampling.corners, params.sampling.patch_size)
    n = len(patches)
    tumour = np.zeros(n, dtype=np.float32)
    classes = np.zeros((n, n_classes), dtype=np.float32)
    for i, patch in enumerate(patches):
        tumour[i], classes[i] = patch_fractions(patch, n_classes)
    return sampling, patches, tumour, classes


def pack_label_patches(patches: np.ndarray) -> bytes:
    """uint8 label patches as a few bytes (Blosc LZ4: labels are long runs) to travel with a plan."""
    from numcodecs import Blosc

    return bytes(Blosc(cname="lz4", clevel=1, shuffle=Blosc.NOSHUFFLE).encode(np.ascontiguousarray(patches)))


def unpack_label_patches(data: bytes, n: int, patch_size: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`pack_label_patches`: uint8 (n, px, py, pz)."""
    if n == 0:
        return np.zeros((0, *patch_size), dtype=np.uint8)
    from numcodecs import Blosc

    flat = np.frombuffer(Blosc().decode(data), dtype=np.uint8)
    return flat.reshape(n, *patch_size)


def plan_case(files: CaseFiles, index: int, split: str, params: BuildParams, root: Path) -> CasePlan:
    """Hash the case's files, read its label and draw its corners (never raises for a bad case).

    Args:
        files: the case's files.
        index: the case's index in the store.
        split: ``train`` / ``val``.
        params: the build parameters (sampling, seed).
        root: the data folder (file paths are recorded relative to it).

    Returns:
        The case's :class:`CasePlan`; a bad case has ``problem`` set and no corners. ``files`` holds the
        label's record only (the write stage hashes the images as it reads them), every file's for a bad
        case.
    """
    try:
        labels, geometry = read_plan_label(files, params.spacing)
        misfit = patch_misfit(labels.label.shape, params.sampling.patch_size)
        if misfit is not None:
            raise ShapeMismatchError(misfit, case_id=files.case_id, path=files.label_path)
        n_classes = files.spec.n_classes
        sampling, patches, tumour, classes = plan_corners(labels.label, params, files.case_id, n_classes)
    except CaseError as err:
        problem = " ".join(err.message.split())
        logger.info("bad case: %s", problem)
        return CasePlan(
            index,
            files.case_id,
            split,
            tuple(file_record(p, root) for p in files.all_paths if p.is_file()),
            np.zeros((0, 3), dtype=np.int32),
            np.zeros(0, dtype=np.float32),
            np.zeros((0, 3), dtype=np.float32),
            0.0,
            0.0,
            f"bad case: {problem}",
            problem,
        )
    assert files.label_path is not None  # read_plan_label checked it; not an input check
    return CasePlan(
        index,
        files.case_id,
        split,
        (file_entry(files.label_path, root, labels.size, labels.sha256),),
        sampling.corners,
        tumour,
        classes,
        float(sampling.valid_corner_share),
        float(sampling.best_tumour_fraction),
        sampling.skip_reason,
        packed_labels=pack_label_patches(patches),
        geometry=geometry,
    )
