"""Shared pieces of the benchmarks: cached data preparation, timing, the result table and its JSON.

Every benchmark prepares its own data under a cache folder (``--workdir``, default
``$BRAINPREP_BENCH_DIR`` or ``~/.cache/brainprep-bench``) and reuses it across runs: synthetic full-size
240x240x155x4 cases in the MSD layout (``brainprep.synth``) and patch stores built from them
(``brainprep.builder``). A project piece that is not there yet (an import fails) turns into a
:class:`MissingPiece`, reported as one row of the table with its reason instead of a number.

A benchmark is three layers like the rest of the project: a measure function per row (returns a
:class:`Row`), a ``run(args) -> Report`` that calls them, and a ``main`` that parses options, prints the
table and writes the JSON. The table always prints and the process exits 0 whether bars pass or not.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import json
import logging
import math
import operator
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: the BraTS / MSD Task01 grid and the course patch; the benchmarks' claims are about this size.
SCAN_SHAPE: tuple[int, int, int] = (240, 240, 155)
PATCH_SIZE: tuple[int, int, int] = (160, 160, 16)
N_CHANNELS = 4
N_CLASSES = 3  # edema, non-enhancing, enhancing (one-hot without background, as the brainnet loader)

SYNTH_SEED = 0
STORE_SEED = 0


class MissingPiece(RuntimeError):
    """A part of the project (or an optional benchmark dependency) that a row needs is not available."""


# ----------------------------------------------------------------------------------------------- results


@dataclass
class Row:
    """One measured line of a table.

    Attributes:
        name: short label, e.g. ``"(a) brainnet loader, Zarr"``.
        value: the measured number, ``None`` when the row could not run.
        unit: unit of ``value`` (``patches/s``, ``s/case``, ...).
        note: how it was measured, or why it could not run.
        extra: further numbers for the JSON (counts, seconds, diffs).
    """

    name: str
    value: float | None
    unit: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.value is not None and math.isfinite(self.value)


RELATIONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


@dataclass
class Bar:
    """A claim checked against measured numbers: ``numerator / denominator  <relation>  threshold``.

    With ``denominator=None`` the numerator is compared directly (e.g. a peak memory in GB).
    """

    name: str
    numerator: float | None
    denominator: float | None
    relation: str  # a key of RELATIONS
    threshold: float
    unit: str = "x"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.numerator is None or not math.isfinite(self.numerator):
            return None
        if self.denominator is None:
            return self.numerator
        if not math.isfinite(self.denominator) or self.denominator == 0:
            return None
        return self.numerator / self.denominator

    @property
    def status(self) -> str:
        ratio = self.ratio
        if ratio is None:
            return "N/A"
        return "PASS" if RELATIONS[self.relation](ratio, self.threshold) else "MISS"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": self.ratio, "status": self.status}


@dataclass
class Report:
    """What one benchmark run found: its rows, its bars and the conditions it ran under."""

    title: str
    rows: list[Row] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def value(self, name: str) -> float | None:
        row = self.row(name)
        return row.value if row is not None and row.ok else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "machine": machine_info(),
            "settings": self.settings,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "bars": [b.to_dict() for b in self.bars],
            "notes": self.notes,
        }


def measure_row(name: str, unit: str, measure: Callable[[], Row]) -> Row:
    """Run one row's measurement; a missing piece or a failure becomes a row with no value and a reason.

    Failures are reported, not raised: one broken baseline must not hide the other rows.
    """
    started = time.perf_counter()
    try:
        row = measure()
    except MissingPiece as err:
        row = Row(name, None, unit, f"not run: {err}")
    except Exception as err:  # a benchmark reports a broken row and goes on with the others
        logger.debug("row %s failed", name, exc_info=True)
        last = traceback.extract_tb(err.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        row = Row(name, None, unit, f"failed: {type(err).__name__}: {err} ({where})")
    row.extra.setdefault("wall_s", round(time.perf_counter() - started, 2))
    print(f"  {row.name}: {format_value(row.value)} {row.unit}  ({row.extra['wall_s']:.0f} s)", flush=True)
    return row


def measure_rows(names: list[str], unit: str, measure: Callable[[], list[Row]]) -> list[Row]:
    """Like :func:`measure_row` for a measurement that yields several rows together (e.g. A vs B + diff).

    On a missing piece or a failure every named row is returned without a value, with the reason.
    """
    holder: list[list[Row]] = []

    def first() -> Row:
        holder.append(measure())
        return holder[0][0]

    head = measure_row(names[0], unit, first)
    if not holder:
        return [head] + [Row(name, None, "", head.note) for name in names[1:]]
    for row in holder[0][1:]:
        print(f"  {row.name}: {format_value(row.value)} {row.unit}", flush=True)
    return holder[0]


def format_value(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_table(report: Report) -> str:
    """The rows (absolute numbers) and the bars (ratio, threshold, PASS/MISS/N/A) as plain text."""
    lines = [report.title, "=" * len(report.title)]
    if report.settings:
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in report.settings.items()))
    name_width = max([len(r.name) for r in report.rows] + [4])
    lines.append("")
    lines.append(f"{'row':<{name_width}}  {'value':>12}  {'unit':<10}  note")
    lines.append(f"{'-' * name_width}  {'-' * 12}  {'-' * 10}  ----")
    for r in report.rows:
        lines.append(f"{r.name:<{name_width}}  {format_value(r.value):>12}  {r.unit:<10}  {r.note}")
    if report.bars:
        bar_width = max(len(b.name) for b in report.bars)
        lines.append("")
        lines.append(f"{'bar':<{bar_width}}  {'measured':>10}  {'needed':>10}  status")
        lines.append(f"{'-' * bar_width}  {'-' * 10}  {'-' * 10}  ------")
        for b in report.bars:
            measured = "-" if b.ratio is None else f"{format_value(b.ratio)}{b.unit}"
            needed = f"{b.relation} {format_value(b.threshold)}{b.unit}"
            note = f"  ({b.note})" if b.note else ""
            lines.append(f"{b.name:<{bar_width}}  {measured:>10}  {needed:>10}  {b.status}{note}")
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def finish(report: Report, json_path: Path | None) -> int:
    """Print the table, write the JSON when asked; always exit status 0 (a missed bar is a result)."""
    print()
    print(format_table(report), flush=True)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        print(f"\nwrote {json_path}")
    return 0


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with contextlib.suppress(OSError):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    for module in ("numpy", "torch", "zarr", "h5py", "nibabel", "monai", "torchio"):
        mod = sys.modules.get(module)
        if mod is not None:
            info[module] = getattr(mod, "__version__", "?")
    return info


# -------------------------------------------------------------------------------------------- options


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark takes: --quick, --workdir, --json, --fresh, -v."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer cases and patches (a smoke run)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("BRAINPREP_BENCH_DIR", Path.home() / ".cache" / "brainprep-bench")),
        help="cache folder for the synthetic data and stores (default: $BRAINPREP_BENCH_DIR or "
        "~/.cache/brainprep-bench)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached data and stores")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    return parser


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


# ---------------------------------------------------------------------------------------- project pieces


def require(module: str, attribute: str | None = None) -> Any:
    """Import ``module`` (and return ``module.attribute``), or raise :class:`MissingPiece` saying which."""
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise MissingPiece(f"{module} is not importable ({err})") from err
    if attribute is None:
        return mod
    try:
        return getattr(mod, attribute)
    except AttributeError as err:
        raise MissingPiece(f"{module}.{attribute} does not exist yet") from err


# ------------------------------------------------------------------------------------------------- data


def _marker(folder: Path) -> Path:
    return folder / ".bench-complete.json"


def synthetic_dataset(
    workdir: Path,
    n_cases: int,
    *,
    fresh: bool = False,
    shape: tuple[int, int, int] = SCAN_SHAPE,
    seed: int = SYNTH_SEED,
    small_tumour_every: int = 0,
    mimics: int = 0,
) -> Path:
    """An MSD-layout folder of ``n_cases`` synthetic cases of ``shape`` x 4, written once and reused.

    ``small_tumour_every``: ``SynthParams``'s (every k-th case a tumour too small for any course-sized
    patch to hold 5 %); 0 by default, so that every case yields its K patches and per-case timings compare
    like with like. ``mimics``: ``SynthParams``'s tumour mimics per case (0 by default).

    The folder is ``WORKDIR/synth-msd-<n>-seed<seed>`` (``-<X>x<Y>x<Z>`` appended for another shape than
    240x240x155, ``-small<k>`` for small tumours, ``-mimics<m>`` for mimics); a marker file written last
    holds the ``SynthParams`` so an interrupted or differently made folder is rewritten.

    Raises:
        MissingPiece: ``brainprep.synth.write_synthetic_dataset`` is not available.
    """
    write = require("brainprep.synth", "write_synthetic_dataset")
    synth_params_cls = require("brainprep.synth", "SynthParams")
    params = synth_params_cls(
        n_cases=n_cases, shape=shape, seed=seed, small_tumour_every=small_tumour_every, mimics=mimics
    )
    folder = workdir / f"synth-msd-{n_cases}-seed{seed}"
    if tuple(shape) != SCAN_SHAPE:
        folder = folder.with_name(folder.name + "-" + "x".join(map(str, shape)))
    if small_tumour_every:
        folder = folder.with_name(f"{folder.name}-small{small_tumour_every}")
    if mimics:
        folder = folder.with_name(f"{folder.name}-mimics{mimics}")
    wanted = {"synth_params": params.to_dict()}
    if not fresh and _marker(folder).is_file():
        try:
            if json.loads(_marker(folder).read_text()) == wanted:
                return folder
        except json.JSONDecodeError:
            pass
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    print(f"  preparing {n_cases} synthetic cases of {tuple(shape)} in {folder} (once) ...", flush=True)
    started = time.perf_counter()
    write(folder, params)
    _marker(folder).write_text(json.dumps(wanted))
    print(f"  ... done in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def data_fingerprint(data_dir: Path) -> str:
    """A short hash of how a cached data folder was made (changes whenever it is rewritten)."""
    marker = _marker(data_dir)
    source = marker if marker.is_file() else data_dir
    text = (marker.read_text() if marker.is_file() else "") + str(source.stat().st_mtime_ns)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def case_files(data_dir: Path) -> list[tuple[str, Path, Path]]:
    """(case_id, 4D image path, label path) of every labelled case of an MSD folder, in id order."""
    discover_cases = require("brainprep.read", "discover_cases")
    dataset = discover_cases(data_dir)
    out = []
    for case in dataset.cases:
        if case.label_path is None or len(case.image_paths) != 1:
            continue
        out.append((case.case_id, case.image_paths[0], case.label_path))
    if not out:
        raise MissingPiece(f"no labelled 4D-image cases found in {data_dir}")
    return out


def build_params(fmt: str, patches_per_case: int) -> Any:
    """The ``BuildParams`` of a benchmark store: course patch, float16, every case in the train split.

    ``val_fraction=0`` keeps every patch in the train split so the streaming benchmarks read all slots.
    """
    params = require("brainprep.params")
    return params.BuildParams(
        sampling=params.SamplingParams(patch_size=PATCH_SIZE, patches_per_case=patches_per_case),
        store=params.StoreParams(format=fmt, dtype="float16"),
        split=params.SplitParams(val_fraction=0.0),
        seed=STORE_SEED,
    )


def store_suffix(fmt: str) -> str:
    return ".zarr" if fmt == "zarr" else ".h5"


def volume_build_params(fmt: str) -> Any:
    """The ``BuildParams`` of a benchmark volume store: :func:`build_params`' with ``kind="volumes"``."""
    from dataclasses import replace

    params = build_params(fmt, 1)
    return replace(params, store=params.store.with_layout(kind="volumes"))  # the volume kind's own level


def patch_store(
    workdir: Path,
    data_dir: Path,
    fmt: str,
    patches_per_case: int,
    *,
    workers: int = 2,
    fresh: bool = False,
    kind: str = "patches",
) -> Path:
    """A patch store (or with ``kind="volumes"`` a volume store) of ``data_dir`` in ``fmt``
    (``zarr``/``hdf5``), built once and reused.

    Raises:
        MissingPiece: ``brainprep.builder.build_patches`` or ``brainprep.store.reader.open_store`` is missing.
    """
    params = volume_build_params(fmt) if kind == "volumes" else build_params(fmt, patches_per_case)
    label = "volumes" if kind == "volumes" else f"k{patches_per_case}"
    name = f"{data_dir.name}-{label}{store_suffix(fmt)}"
    return cached_store(workdir, data_dir, params, name, workers=workers, fresh=fresh)


def cached_store(
    workdir: Path, data_dir: Path, params: Any, name: str, *, workers: int = 2, fresh: bool = False
) -> Path:
    """The store ``WORKDIR/stores/<name>`` built from ``data_dir`` with ``params`` (a ``BuildParams``, any
    kind), built once and reused while the parameters and the data folder's marker are unchanged.

    Raises:
        MissingPiece: ``brainprep.builder.build_patches`` or ``brainprep.store.reader.open_store`` is missing.
    """
    build_patches = require("brainprep.builder", "build_patches")
    open_store = require("brainprep.store.reader", "open_store")
    store = workdir / "stores" / name
    data_marker = _marker(data_dir).read_text() if _marker(data_dir).is_file() else None
    wanted = {"build_params": params.to_dict(), "data_dir": str(data_dir), "data": data_marker}
    if params.store.kind == "volumes":  # the chunk layout and codec are the schema's, not build parameters
        schema = require("brainprep.store.volume_schema")
        names = ("CHUNK_XY", "CHUNK_Z", "BLOSC_CNAME", "BLOSC_SHUFFLE", "LABEL_SHUFFLE", "CORNER_TABLE")
        wanted["layout"] = [list(schema.stored_axis_order(4)), *(getattr(schema, n, None) for n in names)]
    marker = store.with_name(store.name + ".bench.json")
    if not fresh and store.exists() and marker.is_file():
        try:
            if json.loads(marker.read_text()) == wanted:
                open_store(store).close()  # refuses an incomplete store
                return store
        except Exception:  # any doubt about the cached store: rebuild it
            logger.debug("cached store %s unusable, rebuilding", store, exc_info=True)
    remove_path(store)
    marker.unlink(missing_ok=True)
    store.parent.mkdir(parents=True, exist_ok=True)
    print(f"  building the {params.store.format} {params.store.kind} store {store} (once) ...", flush=True)
    started = time.perf_counter()
    build_patches(data_dir, store, params, workers=workers, progress=False)
    marker.write_text(json.dumps(wanted))
    print(f"  ... done in {time.perf_counter() - started:.0f} s", flush=True)
    return store


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree if it exists."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def path_bytes(path: Path) -> int:
    """Bytes on disk of a file, or of all files under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------- timing


@dataclass
class StreamResult:
    """Patches delivered by a stream in a timed window after warm-up."""

    patches: int
    seconds: float
    warmup_seconds: float

    @property
    def rate(self) -> float:
        return self.patches / self.seconds if self.seconds > 0 else float("nan")


def touch(batch: Any) -> int:
    """Touch every tensor/array of a batch (sum 256 spread-out values) and count its patches.

    Returns the number of patches in the batch: the leading size of its first 5D image-like tensor
    (N, C, X, Y, Z), or 1 per 4D array.
    """
    leaves = list(_leaves(batch))
    if not leaves:
        raise ValueError(f"batch of type {type(batch).__name__} holds no array")
    for leaf in leaves:
        if type(leaf).__name__ != "Tensor" and hasattr(leaf, "as_subclass"):
            # a torch.Tensor subclass (MONAI's MetaTensor): its metadata tracking would decollate the batch
            import torch

            leaf = leaf.as_subclass(torch.Tensor)
        flat = _memory_order(leaf).reshape(-1)  # a view, even of a permuted (slice-major) batch
        step = max(1, flat.shape[0] // 256)
        float(flat[::step].sum())  # forces materialization without costing a full pass
    images = [leaf for leaf in leaves if leaf.ndim == 5]
    if images:
        return int(images[0].shape[0])
    return 1


def alternating_rows(
    first: Callable[[], Row], second: Callable[[], Row], rounds: int, note: str, ratio_key: str
) -> list[Row]:
    """Two rows measured in ``rounds`` alternating rounds, each reported as its median round.

    The machine's speed drifts by 10-20% over a benchmark run (a shared 2-core VM); alternating the two
    sides of a bar makes that drift fall on both alike instead of on whichever ran in a slow minute. Which
    side goes first alternates too, so neither always runs right after the other's processes.

    Returns:
        ``[first's median, second's median]``; each keeps every round's value in ``extra["rounds"]`` and
        ``note`` in its note; the first also keeps ``extra[ratio_key]``, first / second round by round.
    """
    sides: tuple[list[Row], list[Row]] = ([], [])
    for i in range(rounds):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            sides[side].append((first, second)[side]())
    medians = []
    for rows in sides:
        middle = sorted(rows, key=lambda row: row.value)[len(rows) // 2]
        middle.note += f"; {note}"
        middle.extra["rounds"] = [round(row.value, 1) for row in rows]
        medians.append(middle)
    ratios = [a.value / b.value for a, b in zip(*sides, strict=True)]
    medians[0].extra[ratio_key] = [round(r, 3) for r in ratios]
    return medians


def _memory_order(leaf: Any) -> Any:
    """``leaf`` with its axes in memory order (largest stride first), so that flattening a dense but
    permuted tensor or array is a view, not a copy the loop would otherwise pay."""
    strides = leaf.stride() if callable(getattr(leaf, "stride", None)) else leaf.strides
    order = sorted(range(leaf.ndim), key=lambda axis: -strides[axis])
    return leaf.permute(*order) if hasattr(leaf, "permute") else leaf.transpose(order)


def _leaves(batch: Any) -> Iterator[Any]:
    if isinstance(batch, dict):  # also TorchIO's Subject and Image, which are dicts with a .shape
        for value in batch.values():
            yield from _leaves(value)
    elif isinstance(batch, list | tuple):
        for value in batch:
            yield from _leaves(value)
    elif hasattr(batch, "shape") and hasattr(batch, "reshape"):
        yield batch


def cycle(make_iterable: Callable[[], Any]) -> Iterator[Any]:
    """Endless batches: iterate ``make_iterable()`` again whenever it is exhausted (next epoch)."""
    while True:
        empty = True
        for item in make_iterable():
            empty = False
            yield item
        if empty:
            raise RuntimeError("the loader yields no batch")


def time_stream(
    batches: Iterator[Any],
    n_patches: int,
    warmup_batches: int,
    count: Callable[[Any], int] = touch,
) -> StreamResult:
    """Time how long ``batches`` takes to deliver ``n_patches`` after ``warmup_batches`` (not timed).

    Args:
        batches: an endless iterator of batches (see :func:`cycle`).
        n_patches: patches to deliver in the timed window (the last batch may overshoot; it is counted).
        warmup_batches: batches drawn first and excluded (worker start-up, caches, first-epoch costs).
        count: touches a batch and returns its patch count.
    """
    started = time.perf_counter()
    for _ in range(warmup_batches):
        count(next(batches))
    t0 = time.perf_counter()
    delivered = 0
    while delivered < n_patches:
        delivered += count(next(batches))
    t1 = time.perf_counter()
    return StreamResult(delivered, t1 - t0, t0 - started)


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's reaped children (and theirs), so far.

    The difference around a child process is the CPU its whole tree spent (workers it waited for
    included): on a shared machine a steadier measure of work than wall seconds.
    """
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
