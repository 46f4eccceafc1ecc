"""Check stage: read every case of a data folder once and report what each holds and what is wrong.

Three layers: :func:`class_voxel_counts` (pure numpy on a label map), :func:`check_case` (reads one case,
never raises for a problem of the case) and :func:`check_dataset` (loops over the cases, optionally on a
thread pool; the ISA-L inflate of :mod:`brainprep.read.nifti` releases the GIL). :func:`format_table`
renders the result for a terminal. Memory stays bounded: each worker holds one case at a time (~140 MB
float32 for a 240x240x155 case) and keeps only its small :class:`CaseReport`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brainprep.config import Params
from brainprep.errors import CaseError, ConfigError, ShapeMismatchError
from brainprep.params import SamplingParams
from brainprep.read import CHANNEL_NAMES, CaseFiles, discover_cases, read_case
from brainprep.read.case import dtype_name
from brainprep.read.layouts import listing_warnings
from brainprep.read.nifti import ras_spacing, read_nifti_header
from brainprep.sample import patch_misfit, valid_corner_share
from brainprep.spacing import SPACING_RTOL, format_spacing, majority_spacing, off_majority
from brainprep.spec import MSD_SPEC, DatasetSpec
from brainprep.standardize import background_values

logger = logging.getLogger(__name__)

_DEFAULT_SAMPLING = SamplingParams()


@dataclass(frozen=True)
class CheckParams(Params):
    """What ``brainprep check`` measures a case against.

    Attributes:
        patch_size: (X, Y, Z) voxels of the patches the corner share is computed for.
        background_threshold: a corner is valid when its patch's background share is strictly below this
            (0.95: more than 5% tumour), as in :mod:`brainprep.sample`.
        expect_shape: canonical (RAS) spatial shape every case must have, or ``None`` for any shape.
    """

    patch_size: tuple[int, int, int] = _DEFAULT_SAMPLING.patch_size
    background_threshold: float = _DEFAULT_SAMPLING.background_threshold
    expect_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        # The sampling parameters already know what a valid patch size and threshold are.
        sampling = SamplingParams(patch_size=self.patch_size, background_threshold=self.background_threshold)
        object.__setattr__(self, "patch_size", sampling.patch_size)
        if self.expect_shape is not None:
            if len(self.expect_shape) != 3 or any(int(s) < 1 for s in self.expect_shape):
                raise ConfigError(f"expect_shape must be three positive ints, got {self.expect_shape}")
            object.__setattr__(self, "expect_shape", tuple(int(s) for s in self.expect_shape))


@dataclass(frozen=True)
class CaseReport:
    """What :func:`check_case` found in one case.

    Attributes:
        case_id: e.g. ``BRATS_001``.
        layout: ``msd``, ``brats2021`` or ``brats2023``.
        files: paths of the case's files (images in MSD channel order, then the label).
        shape: spatial (X, Y, Z) shape of the source image files, ``None`` when no header could be read.
        spacing: voxel size in mm along R, A, S from the source header's affine
            (:func:`~brainprep.read.nifti.ras_spacing`; its ``pixdim`` when the affine is degenerate),
            ``None`` likewise.
        orientation: axis codes of the source affine, e.g. ``"LPS"``; ``None`` likewise.
        dtype: on-disk dtype of the source image(s), e.g. ``"int16"``; channels of different dtypes are
            listed in MSD channel order joined by ``/`` (``"float64/float64/float32/float64"``).
        has_label: the case has a label file (a case without one is reported unlabelled, not a problem).
        voxel_counts: voxels of each canonical class of the dataset spec (background first) on the label
            map, ``None`` without a readable label.
        valid_corner_share: share of patch corners whose background share is below the threshold,
            ``None`` without a readable label.
        background: each channel's background intensity
            (:func:`~brainprep.standardize.background_values`: 0 for skull-stripped BraTS data, another
            value for already-normalized inputs), ``None`` when the image cannot be read.
        problem: one line naming the case, the file and what is wrong; ``None`` for a good case.
        status: ``"ok"``, ``"ok (no label)"`` or the problem in short (what is wrong, and the file name).
        seconds: time spent checking this case.
    """

    case_id: str
    layout: str
    files: tuple[str, ...]
    shape: tuple[int, int, int] | None
    spacing: tuple[float, float, float] | None
    orientation: str | None
    dtype: str | None
    has_label: bool
    voxel_counts: tuple[int, ...] | None
    valid_corner_share: float | None
    problem: str | None
    status: str
    seconds: float
    background: tuple[float, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def background_warning(self) -> str | None:
        """One line when a channel's background is not 0 (the input was normalized already), else
        ``None``: such a case builds and predicts (the brain is what differs from the background), but
        it is not what a skull-stripped BraTS release holds."""
        if self.background is None or not any(self.background):
            return None
        values = ", ".join(
            f"{name} {value:.4g}" for name, value in zip(CHANNEL_NAMES, self.background, strict=True) if value
        )
        return (
            f"case {self.case_id}: background is not 0 ({values}; the most frequent value on the volume's "
            "border): an already-normalized input; the brain mask is what differs from it"
        )

    @property
    def tumour_voxels(self) -> tuple[int, ...] | None:
        """Voxels of each foreground class (canonical classes 1..n)."""
        return None if self.voxel_counts is None else self.voxel_counts[1:]  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


@dataclass(frozen=True)
class DatasetReport:
    """The reports of every case of a data folder, in case order, and how long the check took.

    Attributes:
        root: the data folder.
        layout: its layout.
        params: what the cases were checked against.
        cases: one report per case, sorted as :func:`brainprep.discover_cases` lists them.
        seconds: wall time of the whole check.
        workers: threads that read cases.
        spec: the dataset's spec (its classes are the table's count columns).
        channel_order: the source channel of each canonical one (a dataset.json in another order).
        listing: what the dataset.json lists that the folder does not hold
            (:func:`brainprep.read.layouts.listing_warnings`); among the :attr:`warnings`.
    """

    root: str
    layout: str
    params: CheckParams
    cases: tuple[CaseReport, ...]
    seconds: float
    workers: int = 1
    spec: DatasetSpec = MSD_SPEC
    channel_order: tuple[int, ...] = (0, 1, 2, 3)
    listing: tuple[str, ...] = ()

    @property
    def channel_note(self) -> str | None:
        """How the channels are reordered into the canonical FLAIR, T1w, T1gd, T2w (``None``: they are
        not), e.g. ``FLAIR <- source channel 1, T1w <- 0, ...``."""
        if tuple(self.channel_order) == tuple(range(len(self.channel_order))):
            return None
        named = zip(CHANNEL_NAMES, self.channel_order, strict=True)
        pairs = ", ".join(f"{name} <- {source}" for name, source in named)
        return f"channels reordered as dataset.json names them (canonical <- source channel): {pairs}"

    @property
    def problems(self) -> tuple[CaseReport, ...]:
        return tuple(case for case in self.cases if not case.ok)

    @property
    def majority_spacing(self) -> tuple[float, float, float] | None:
        """The spacing most cases share (:func:`brainprep.spacing.majority_spacing`)."""
        return majority_spacing([case.spacing for case in self.cases])

    @property
    def warnings(self) -> tuple[str, ...]:
        """One line per case that builds but deserves a look: its spacing differs from the majority (by
        more than :data:`~brainprep.spacing.SPACING_RTOL` relative on an axis: ``build-patches`` refuses
        it without ``--resample`` or ``--allow-mixed-spacing``), or its background is not 0; before them,
        what the dataset.json lists that the folder does not hold."""
        majority = self.majority_spacing
        ids, spacings = [c.case_id for c in self.cases], [c.spacing for c in self.cases]
        lines = list(self.listing)
        lines += [
            f"case {case_id}: spacing {format_spacing(spacing)} differs from the majority "
            f"{format_spacing(majority)} (by more than {SPACING_RTOL:g} relative); build-patches needs "  # type: ignore[arg-type]
            "--resample or --allow-mixed-spacing"
            for case_id, spacing in off_majority(ids, spacings, majority)
        ]
        lines.extend(case.background_warning for case in self.cases if case.background_warning)
        return tuple(lines)

    @property
    def summary(self) -> dict[str, Any]:
        """Counts of cases (all, ok, with problems, ok without label) and timings."""
        n = len(self.cases)
        return {
            "cases": n,
            "ok": sum(case.ok for case in self.cases),
            "problems": len(self.problems),
            "without_label": sum(case.ok and not case.has_label for case in self.cases),
            "warnings": len(self.warnings),
            "seconds": self.seconds,
            "seconds_per_case": self.seconds / n if n else 0.0,
            "workers": self.workers,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "spec": self.spec.to_dict(),
            "channel_order": list(self.channel_order),
            "params": self.params.to_dict(),
            "summary": self.summary,
            "warnings": list(self.warnings),
            "cases": [case.to_dict() for case in self.cases],
        }


def class_voxel_counts(label: np.ndarray, n_classes: int) -> tuple[int, ...]:
    """Voxels of each canonical class.

    Args:
        label: uint8 (X, Y, Z) canonical classes (values 0..n_classes).
        n_classes: foreground classes of the dataset spec.

    Returns:
        n_classes + 1 voxel counts, background first.
    """
    counts = np.bincount(label.ravel(), minlength=n_classes + 1)
    return tuple(int(c) for c in counts[: n_classes + 1])


def _header_info(
    files: CaseFiles,
) -> tuple[tuple[int, int, int] | None, tuple[float, float, float] | None, str | None, str | None]:
    """Shape, spacing, axis codes and dtype(s) from the headers of the image files that can be opened.

    Best effort, so that a broken case still shows what its readable files say; problems themselves
    are reported by :func:`brainprep.read_case`.
    """
    headers = []
    for path in files.image_paths:
        try:
            headers.append(read_nifti_header(path, files.case_id))
        except CaseError:
            continue
    if not headers:
        return None, None, None, None
    first = headers[0]
    shape = tuple(int(s) for s in first.shape[:3])
    try:
        spacing = ras_spacing(first.affine)
    except ValueError:  # a degenerate affine has no RAS axes (LinAlgError is a ValueError)
        spacing = tuple(float(z) for z in first.header.get_zooms()[:3])
    try:
        # A degenerate affine has no axis codes: nibabel gives None for such an axis ...
        orientation = "".join(code or "?" for code in nib.aff2axcodes(first.affine))
    except ValueError:  # ... or, for NaN entries, fails to decompose it (LinAlgError)
        orientation = "???"
    dtypes = [dtype_name(h.get_data_dtype()) for h in headers]
    dtype = dtypes[0] if len(set(dtypes)) == 1 else "/".join(dtypes)
    return shape, spacing, orientation, dtype  # type: ignore[return-value]


def _one_line(text: str) -> str:
    """Collapse any line breaks a decoder put into its message: each problem is one line."""
    return " ".join(text.split())


def _short_problem(err: CaseError) -> str:
    return f"{err.problem} ({err.path.name})" if err.path is not None else err.problem


def check_case(
    files: CaseFiles,
    patch_size: tuple[int, int, int] = _DEFAULT_SAMPLING.patch_size,
    background_threshold: float = _DEFAULT_SAMPLING.background_threshold,
    expect_shape: tuple[int, int, int] | None = None,
) -> CaseReport:
    """Read one case and report its geometry, tumour voxels, valid patch corners and first problem.

    Args:
        files: the case's files, from :func:`brainprep.discover_cases`.
        patch_size: (X, Y, Z) of the patches whose valid corners are counted.
        background_threshold: see :class:`CheckParams`.
        expect_shape: canonical (RAS) spatial shape the case must have, or ``None``.

    Returns:
        The case's report. A problem of the case (missing or unreadable file, wrong shape, NaN, bad label
        values, ...) is recorded in ``problem``, never raised.
    """
    start = time.perf_counter()
    shape, spacing, orientation, dtype = _header_info(files)
    voxel_counts = share = background = None
    problem = None
    try:
        case = read_case(files)  # inflates every file to its end: a cut gzip trailer is a problem too
        background = tuple(float(v) for v in background_values(case.image))
        if expect_shape is not None and case.shape != tuple(expect_shape):
            found = _format_shape(case.shape)
            if case.source_shape != case.shape:
                found += f" (RAS; source {_format_shape(case.source_shape)})"
            raise ShapeMismatchError(
                f"expected shape {_format_shape(expect_shape)}, found {found}",
                case_id=files.case_id,
                path=files.image_paths[0],
            )
        misfit = patch_misfit(case.shape, patch_size)
        if misfit is not None:
            raise ShapeMismatchError(misfit, case_id=files.case_id, path=files.image_paths[0])
        if case.label is not None:
            voxel_counts = class_voxel_counts(case.label, files.spec.n_classes)
            share = valid_corner_share(case.label, patch_size, background_threshold)
        del case  # free the arrays before the next case of this worker
    except CaseError as err:
        problem, status = _one_line(err.message), _one_line(_short_problem(err))
    except Exception as err:  # a decoder failure the reader does not know yet must not end the whole run
        # one line like any problem (the traceback is logged at debug, -vv); which file failed is not
        # known here, so it names the folder of the case's files
        logger.debug("unexpected error while checking case %s", files.case_id, exc_info=True)
        error = CaseError(
            _one_line(f"unexpected {type(err).__name__}: {err}"),
            case_id=files.case_id,
            path=Path(os.path.commonpath(files.all_paths)),
        )
        problem, status = _one_line(error.message), _one_line(_short_problem(error))
    else:
        status = "ok" if files.label_path is not None else "ok (no label)"
    return CaseReport(
        case_id=files.case_id,
        layout=files.layout,
        files=tuple(str(p) for p in files.all_paths),
        shape=shape,
        spacing=spacing,
        orientation=orientation,
        dtype=dtype,
        has_label=files.label_path is not None,
        voxel_counts=voxel_counts,
        valid_corner_share=share,
        problem=problem,
        status=status,
        seconds=time.perf_counter() - start,
        background=background,
    )


def _iter_reports(
    cases: tuple[CaseFiles, ...], params: CheckParams, workers: int
) -> Iterator[tuple[int, CaseReport]]:
    """(index, report) of each case, in completion order."""
    kwargs = {
        "patch_size": params.patch_size,
        "background_threshold": params.background_threshold,
        "expect_shape": params.expect_shape,
    }
    if workers <= 1:
        for index, files in enumerate(cases):
            yield index, check_case(files, **kwargs)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="brainprep-check") as pool:
        futures = {pool.submit(check_case, files, **kwargs): index for index, files in enumerate(cases)}
        for future in as_completed(futures):
            yield futures[future], future.result()


def check_dataset(
    data_dir: Path | str,
    params: CheckParams | None = None,
    *,
    workers: int = 1,
    progress: bool = False,
    labels: str | None = None,
) -> DatasetReport:
    """Check every case of ``data_dir``.

    Args:
        data_dir: a data folder in any layout :func:`brainprep.discover_cases` knows.
        params: what to check against (default :class:`CheckParams`).
        workers: threads reading cases at once; each holds one case in memory at a time.
        progress: show a tqdm bar over cases on stderr.
        labels: the label convention (``--labels``); default: detected (:func:`brainprep.discover_cases`).

    Returns:
        The report of every case, in case order.

    Raises:
        LayoutError: ``data_dir`` does not exist or matches no known layout.
        ConfigError: ``workers`` < 1.
    """
    params = params if params is not None else CheckParams()
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    dataset = discover_cases(data_dir, labels)
    logger.info("checking %d %s cases in %s", len(dataset.cases), dataset.layout, dataset.root)
    reports: list[CaseReport | None] = [None] * len(dataset.cases)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset.cases), desc="check", unit="case")
    try:
        for index, report in _iter_reports(dataset.cases, params, workers):
            reports[index] = report
            if report.problem is not None:
                logger.info("%s", report.problem)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return DatasetReport(
        root=str(dataset.root),
        layout=dataset.layout,
        params=params,
        cases=tuple(r for r in reports if r is not None),
        seconds=time.perf_counter() - start,
        workers=workers,
        spec=dataset.spec,
        channel_order=dataset.channel_order,
        listing=listing_warnings(dataset),
    )


def _format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _format_spacing(spacing: tuple[float, ...]) -> str:
    return "x".join(f"{s:.3g}" for s in spacing)


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    # (header, alignment): counts and shares right-aligned so that digits line up.
    ("case", "<"),
    ("layout", "<"),
    ("shape", "<"),
    ("spacing", "<"),
    ("orient", "<"),
    ("dtype", "<"),
    ("{classes}", ">"),  # one column per foreground class of the spec
    ("valid corners", ">"),
    ("status", "<"),
)


def _columns(spec: DatasetSpec) -> tuple[tuple[str, str], ...]:
    """:data:`TABLE_COLUMNS` with the spec's foreground classes for ``{classes}``."""
    columns: list[tuple[str, str]] = []
    for name, align in TABLE_COLUMNS:
        columns.extend([(c, align) for c in spec.foreground] if name == "{classes}" else [(name, align)])
    return tuple(columns)


def _table_row(case: CaseReport, n_classes: int) -> tuple[str, ...]:
    missing = "-"
    tumour = case.tumour_voxels
    counts = tuple(str(n) for n in tumour) if tumour is not None else (missing,) * n_classes
    share = f"{100 * case.valid_corner_share:.1f}%" if case.valid_corner_share is not None else missing
    return (
        case.case_id,
        case.layout,
        _format_shape(case.shape) if case.shape is not None else missing,
        _format_spacing(case.spacing) if case.spacing is not None else missing,
        case.orientation or missing,
        case.dtype or missing,
        *counts,
        share,
        case.status,
    )


def format_summary(report: DatasetReport) -> str:
    """One line: cases, ok, with problems, without label, total time and seconds per case."""
    s = report.summary
    cases = f"{s['cases']} case{'' if s['cases'] == 1 else 's'}"
    workers = f"{s['workers']} worker{'' if s['workers'] == 1 else 's'}"
    return (
        f"{cases}: {s['ok']} ok ({s['without_label']} without label), {s['problems']} with problems; "
        f"{s['seconds']:.1f} s in all, {s['seconds_per_case']:.2f} s per case ({workers})"
    )


def format_table(report: DatasetReport) -> str:
    """The report as text: one row per case, the summary line, one line per problem, one per warning."""
    p = report.params
    columns = _columns(report.spec)
    header = tuple(name for name, _ in columns)
    rows = [header, *(_table_row(case, report.spec.n_classes) for case in report.cases)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        aligned = zip(row, columns, widths, strict=True)
        cells = [f"{cell:{align}{width}}" for cell, (_, align), width in aligned]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        f"valid corners: share of {_format_shape(p.patch_size)} patch corners with background share "
        f"< {p.background_threshold:g}"
    )
    lines.append(f"labels: {report.spec.describe()}")
    if report.channel_note is not None:
        lines.append(report.channel_note)
    lines.append(format_summary(report))
    problems = report.problems
    if problems:
        lines.append("")
        lines.append(f"problems ({len(problems)}):")
        lines.extend(f"  {case.problem}" for case in problems)
    warnings = report.warnings
    if warnings:
        lines.append("")
        lines.append(f"warnings ({len(warnings)}):")
        lines.extend(f"  {warning}" for warning in warnings)
    return "\n".join(lines)
