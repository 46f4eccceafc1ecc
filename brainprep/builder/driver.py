"""The build driver: plan every case, then write them in parallel with dask, then seal the store.

Order of a build of ``STORE`` (``.zarr`` or ``.h5``):

1. Take ``STORE.lock`` (a second build of the same store is refused) and look at what is there: a
   complete store is refused unless ``overwrite``; an interrupted build (``STORE.build/``) is resumed
   if this brainprep version started it, its parameters and cases equal this build's and the source
   files of its done cases are unchanged (sizes and sha256), and refused naming the first difference.
   A done case that holds no data (bad or skipped) is done again.
2. Plan the cases not done yet (labels only, in parallel). A bad case stops the build here, before
   anything is written, unless ``skip_bad`` (then it is recorded as skipped).
3. Create the build state and, for Zarr, the empty store (``complete: false``).
4. Write the cases in parallel, one case per task (a worker holds one case at a time); each task writes
   its own shards (Zarr) or staged chunks (HDF5), then its done marker.
5. Seal: patch table, case statistics and metadata from the markers, ``complete: true`` last (HDF5: the
   file is assembled and renamed into place); remove the build state; release the lock. Whether the
   build ends sealed or with an error, the lock is released only once no task of it runs any more.

The content of the store depends only on the data, the parameters and the seed (every case draws from
``case_rng(seed, case_id)``), never on the worker count, the scheduler or the completion order.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from brainprep import __version__
from brainprep.builder.case import CaseTask, case_record, release_buffers, write_case
from brainprep.builder.plan import BadCasesError, CasePlan, file_record, plan_case, source_fingerprint
from brainprep.builder.summary import BuildSummary
from brainprep.errors import ConfigError, StoreError, StoreMismatchError, StoreSpaceError
from brainprep.params import BuildParams
from brainprep.read import CaseFiles, discover_cases
from brainprep.spacing import resolve_spacing
from brainprep.spec import spec_from_metadata
from brainprep.split import read_split_file, split_cases
from brainprep.store import schema, volume_schema
from brainprep.store.integrity import seal
from brainprep.store.locations import format_for_new_store
from brainprep.store.lock import BuildLock, BuildState

logger = logging.getLogger(__name__)

LOCAL_SCHEDULERS = ("processes", "threads", "synchronous")
#: tasks in flight per worker thread on a distributed cluster: one running, one queued.
TASKS_PER_THREAD = 2
#: seconds between a local worker's checks that the driver still runs
PARENT_POLL_S = 0.5


# -- running tasks -------------------------------------------------------------------------------------
def _run_local(
    func: Callable, items: list[Any], scheduler: str, workers: int, bar: Any, pool: Any
) -> list[Any]:
    import dask
    from dask.callbacks import Callback

    class _Tick(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if bar is not None:
                bar.update(1)

    if scheduler == "threads":
        from dask.threaded import get
    else:
        from dask.multiprocessing import get
    tasks = [dask.delayed(func, pure=False)(item) for item in items]
    with _Tick():
        # The scheduler's get function, not its name: dask resolves a name by importing distributed to
        # look for a client (0.18 s in this process, every build). chunksize=1: one case per submission,
        # so cases balance over the workers one at a time.
        return list(dask.compute(*tasks, scheduler=get, num_workers=workers, chunksize=1, pool=pool))


def _run_distributed(client: Any, func: Callable, items: list[Any], bar: Any) -> Iterator[Any]:
    """Results of ``func(item)`` on the cluster of ``client``, in completion order, at most
    :data:`TASKS_PER_THREAD` tasks in flight per worker thread.

    When a task fails (or the caller stops early) the tasks still in flight are waited for, not
    cancelled: ``client.cancel`` only makes the scheduler forget a task, whose thread goes on writing
    its case, so this returns (and the build releases the store's lock) once none runs.
    """
    from distributed import as_completed

    window = max(1, TASKS_PER_THREAD * sum(client.nthreads().values()))
    pending = iter(items)
    futures = [client.submit(func, item, pure=False) for item in islice(pending, window)]
    # the client's own loop: with none given, as_completed looks for a default client, and a client
    # made for a scheduler address is not one (set_as_default=False)
    running = as_completed(futures, loop=client.loop)
    try:
        for future in running:
            result = future.result()
            future.release()
            if bar is not None:
                bar.update(1)
            following = next(pending, None)
            if following is not None:
                futures.append(client.submit(func, following, pure=False))
                running.add(futures[-1])
            yield result
    finally:
        _wait_for_tasks(client, [f for f in futures if not f.done()])


def _wait_for_tasks(client: Any, futures: list[Any]) -> None:
    """Return once every one of ``futures`` has ended (finished, failed or lost with its worker).

    Never raises an error of its own: it runs while an error of a case (which must reach the user) or
    none is on its way out.
    """
    if not futures:
        return
    from distributed import as_completed

    logger.info("waiting for the %d case(s) still being written to end", len(futures))
    try:
        for _ in as_completed(futures, loop=client.loop):
            pass
    except Exception as error:  # the scheduler is gone: nothing more can be learnt about those tasks
        logger.warning("could not wait for %d case(s) still in flight: %s", len(futures), error)


def _single_threaded() -> None:
    """Start-up of a local worker process: one core each, so N workers never run more than N threads.

    zarr encodes a shard's chunks on its thread pool (default: CPU count + 4 threads), which would make
    every worker compete for every core; blosc and numpy's BLAS threads are pinned to one as well.
    """
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLOSC_NTHREADS"):
        os.environ[name] = "1"
    import numcodecs.blosc
    import zarr

    zarr.config.set({"threading.max_workers": 1, "async.concurrency": 1})
    numcodecs.blosc.set_nthreads(1)


def _start_worker() -> None:
    """Start-up of a local worker process: one core (:func:`_single_threaded`), and an exit when the
    driver dies.

    A pool worker waits on a pipe whose writing end its sibling workers hold too, so after a ``kill -9``
    of the driver it would wait forever, or finish its case and then wait; a sleeping thread that
    watches the parent's pid ends it within :data:`PARENT_POLL_S`. The half-written case is not marked
    done, so resuming the build writes it again. The parent is whatever process started this one (the
    driver, or a launcher between them), read here rather than passed in, so it never mistakes one for
    the other.

    Ctrl-C is the driver's: a terminal sends SIGINT to the whole process group, and a worker that took it
    would print its own KeyboardInterrupt traceback beside the driver's one-line ``Aborted!``; ignoring
    it, the worker finishes (or is cancelled before) its case while the driver shuts the pool down.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _single_threaded()
    parent_pid = os.getppid()

    def exit_with_parent() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=exit_with_parent, name="brainprep-parent-watch", daemon=True).start()


def _start_method() -> str:
    """How local worker processes start: ``fork`` on Linux when this process runs no other thread, else
    ``spawn``.

    A forked worker starts in ~10 ms with every module already imported; a spawned one starts a new
    interpreter and imports numpy, nibabel and zarr again (~0.45 s of CPU per worker, measured: a tenth
    of a 16-case 2-worker build). Forking a process that runs other threads can copy a lock one of them
    holds, so any other thread (a running zarr event loop, a tqdm monitor, a notebook's) means spawn.
    """
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _preload_worker_modules() -> None:
    """Import what a build task needs (and this process needs later anyway) before workers are forked."""
    import dask.callbacks
    import dask.multiprocessing  # noqa: F401
    import numcodecs.blosc  # noqa: F401
    import zarr  # noqa: F401


class Executor:
    """Runs one function over many cases: inline, on a local dask scheduler, or on a dask cluster.

    Args:
        workers: local worker count (default: CPU count); 1 runs inline in this process.
        scheduler: ``None`` / ``"processes"`` (local processes), ``"threads"``, ``"synchronous"``, the
            address of a running dask.distributed scheduler (``tcp://host:8786``), or a ``Client``.
        progress: show a tqdm bar per stage.
    """

    def __init__(self, workers: int | None, scheduler: Any, progress: bool):
        self.workers = int(workers) if workers is not None else (os.cpu_count() or 1)
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        self.scheduler = scheduler
        self.progress = progress
        self._client: Any = None
        self._own_client = False
        self._pool: Any = None
        self._maps: list[Generator[Any, None, None]] = []

    @property
    def distributed(self) -> bool:
        return self.scheduler is not None and not (
            isinstance(self.scheduler, str) and self.scheduler in LOCAL_SCHEDULERS
        )

    def __enter__(self) -> Executor:
        if self.distributed:
            from distributed import Client

            if isinstance(self.scheduler, Client):
                self._client = self.scheduler
            else:
                address = getattr(self.scheduler, "scheduler_address", self.scheduler)
                self._client = Client(address, set_as_default=False)
                self._own_client = True
            self.workers = max(1, sum(self._client.nthreads().values()))
        elif self.workers > 1 and self.scheduler == "threads":
            from concurrent.futures import ThreadPoolExecutor

            # Our own pool, so that __exit__ can wait for its threads: dask's threaded scheduler raises
            # the first error of a case at once and leaves the other cases' threads writing.
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="brainprep-build")
        elif self.workers > 1 and self.scheduler in (None, "processes"):
            # One pool for both stages (plan, write): worker processes start (and import) once.
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            method = _start_method()
            if method == "fork":
                _preload_worker_modules()  # imported once here, instead of once per worker
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context(method),
                initializer=_start_worker,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        """Wait for every task still running (a local pool's queued tasks are cancelled; a cluster's in
        flight are waited for as the maps close), then free what the build held. The store's lock is
        released after this, so no task of the build writes once it is."""
        for results in self._maps:
            results.close()  # runs the finally of a map its caller left unfinished
        self._maps.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        release_buffers()  # what inline and thread tasks kept between cases in this process
        if self._own_client and self._client is not None:
            self._client.close()
        self._client = None

    def map(self, func: Callable, items: list[Any], desc: str) -> Iterator[Any]:
        """Results of ``func(item)`` for every item, in completion order (local: in item order).

        A map left unfinished (its caller raised between two results) is closed by :meth:`__exit__`,
        which is when a cluster's tasks still in flight are waited for.
        """
        results = self._map(func, items, desc)
        self._maps.append(results)
        return results

    def _map(self, func: Callable, items: list[Any], desc: str) -> Generator[Any, None, None]:
        if not items:
            return
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc=desc, unit="case")
        try:
            if self._client is not None:
                yield from _run_distributed(self._client, func, items, bar)
                return
            scheduler = self.scheduler or "processes"
            if self.workers == 1 or scheduler == "synchronous" or len(items) == 1:
                import zarr

                # One worker is one core: zarr would encode a shard's chunks on several threads.
                with zarr.config.set({"async.concurrency": 1}):
                    for item in items:
                        result = func(item)
                        if bar is not None:
                            bar.update(1)
                        yield result
                return
            yield from _run_local(func, items, scheduler, self.workers, bar, self._pool)
        finally:
            if bar is not None:
                bar.close()


# -- what is already there ---------------------------------------------------------------------------
def _existing_metadata(store: Path, fmt: str) -> dict[str, Any] | None:
    """The store's ``brainprep`` metadata, ``None`` when there is no readable brainprep store."""
    try:
        from brainprep.store.reader import PatchStore

        with PatchStore(store, require_complete=False) as existing:
            return existing.metadata
    except (StoreError, OSError, ValueError, KeyError):
        return None


def _remove_store(store: Path) -> None:
    if store.is_dir():
        shutil.rmtree(store)
    elif store.exists():
        store.unlink()
    store.with_name(store.name + schema.PARTIAL_SUFFIX).unlink(missing_ok=True)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _case_difference(before: list, after: list) -> str:
    """The first case (id and split) that differs between two case lists, named with both values."""
    for position, (old, new) in enumerate(zip(before, after, strict=False)):
        if list(old) != list(new):
            return (
                f"cases (case {position + 1} of {len(before)}: interrupted build {old[0]} {old[1]}, "
                f"this build {new[0]} {new[1]})"
            )
    return f"cases (interrupted build: {len(before)} cases, this build: {len(after)} cases)"


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    before, after = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            if key == "cases":
                lines.append(_case_difference(before.get(key) or [], after.get(key) or []))
            else:
                lines.append(
                    f"{key} (interrupted build: {before.get(key)!r}, this build: {after.get(key)!r})"
                )
    return lines


def _prepare(store: Path, fmt: str, state: BuildState, info: dict[str, Any], overwrite: bool) -> str:
    """Decide how this build starts: ``"fresh"``, ``"resume"`` or ``"sealed"`` (nothing left to do).

    A store is ours to replace or resume when it has brainprep metadata or a build state claims it.
    """
    previous = state.read() if state.exists else None
    metadata = _existing_metadata(store, fmt) if store.exists() else None
    empty_dir = store.is_dir() and not any(store.iterdir())
    if store.exists() and metadata is None and previous is None and not empty_dir:
        raise StoreError(
            f"{store} exists and is not a brainprep patch store; remove it or choose another path"
        )
    if overwrite:
        _remove_store(store)
        state.remove()
        return "fresh"
    differences = _differences(previous, info) if previous is not None else []
    if metadata is not None and metadata.get("complete"):
        if previous is not None and not differences:
            return "sealed"  # killed after sealing, before removing the build state
        raise StoreError(f"{store} already exists and is complete; pass --overwrite to build it again")
    if previous is not None:
        _refuse_other_version(store, previous, info)
        if differences:
            raise StoreMismatchError(
                f"{store} holds an interrupted build with different parameters: {'; '.join(differences)}; "
                "rerun with the same parameters to resume it, or pass --overwrite to start over"
            )
        if fmt == "hdf5" or metadata is not None:
            return "resume"
    # An incomplete store without its build state (or a state without its store) cannot be trusted.
    _remove_store(store)
    state.remove()
    return "fresh"


def _refuse_other_version(store: Path, previous: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """Refuse to resume a build another brainprep version started: its done markers may lack what this
    version seals (or mean something else by a key), and its cases were written by other code."""
    started, this = previous.get("tool_version"), info["tool_version"]
    if started == this:
        return
    named = f"brainprep {started}" if started else "a brainprep version that does not record its version"
    raise StoreMismatchError(
        f"{store} holds an interrupted build started by {named}, and this is brainprep {this}; "
        "resume it with the version that started it, or pass --overwrite to build it again with this one"
    )


def _sealed_summary(store: Path, fmt: str, state: BuildState) -> BuildSummary:
    """The summary recorded in an already sealed store (whose leftover build state is removed)."""
    state.remove()
    recorded = (_existing_metadata(store, fmt) or {}).get("summary") or {}
    fields = ("store", "cases", "patches", "skipped", "bytes", "seconds", "workers", "resumed_cases")
    return BuildSummary(**{key: recorded[key] for key in fields})


def holds_data(params: BuildParams, record: Mapping[str, Any]) -> bool:
    """Whether the case recorded done (``record``) wrote data: a skipped or bad case wrote none."""
    return record.get("crop_shape" if params.store.kind == "volumes" else "n_patches") not in (None, 0)


def lost_file(
    store: Path, params: BuildParams, state: BuildState, index: int, record: dict[str, Any]
) -> Path | None:
    """A file that case ``index``, recorded done (``record``), wrote and that is gone (deleted, or a disk
    that lost it), ``None`` when none is: the staged part of an HDF5 build, the arrays of a Zarr volume
    case. A case that holds no data (skipped) needs none; a Zarr patch store's cases share its shards,
    which ``verify`` checks once sealed."""
    if not holds_data(params, record):
        return None
    volumes = params.store.kind == "volumes"
    if params.store.format == "hdf5":
        part = state.part_path(index)
        return None if part.is_file() else part
    if not volumes:
        return None
    from brainprep.store.volume_zarr import case_files

    return next((store / name for name in case_files(index) if not (store / name).is_file()), None)


def _forget_lost(store: Path, params: BuildParams, state: BuildState, done: dict[int, Any]) -> dict[int, Any]:
    """``done`` less the cases whose written data is gone (:func:`lost_file`): their markers are dropped,
    so the resume rebuilds them instead of sealing a store that cannot read them."""
    kept = {}
    for index, record in done.items():
        lost = lost_file(store, params, state, index, record)
        if lost is None:
            kept[index] = record
            continue
        logger.warning(
            "rebuilding case %s of %s: it was done but %s is missing", record["case_id"], store, lost
        )
        state.forget(index)
    return kept


def _forget_empty(params: BuildParams, state: BuildState, done: dict[int, Any]) -> dict[int, Any]:
    """``done`` less the cases that hold no data (bad or skipped), whose markers are dropped so the
    resume does them again.

    Doing one again costs about what checking its files would (a label read, the images hashed or read),
    and the marker of a bad case cannot be checked: it records only the files that could be read (not a
    file that was missing, nor an image the write stage refused), so a fixed file would stay skipped.
    """
    kept = {}
    for index, record in done.items():
        if holds_data(params, record):
            kept[index] = record
        else:
            state.forget(index)
    return kept


def source_change(files: list[Mapping[str, Any]], root: Path) -> str | None:
    """How the first of ``files`` (a done marker's ``{"path", "size", "sha256"}``, paths relative to
    ``root``) differs from that file now, ``None`` when none does.

    Sizes first (a stat each), then the sha256 of each whole file: a byte changed in place keeps the size,
    and a copy or an archive can restore the modification time.
    """
    paths = [(root / entry["path"], entry) for entry in files]
    for path, entry in paths:
        try:
            size = path.stat().st_size
        except OSError as error:
            return f"{path} cannot be read ({error.strerror or error})"
        if size != entry["size"]:
            return f"{path} has {size} bytes, it had {entry['size']}"
    for path, entry in paths:
        try:
            digest = file_record(path, root)["sha256"]
        except OSError as error:
            return f"{path} cannot be read ({error.strerror or error})"
        if digest != entry["sha256"]:
            return f"{path} has other bytes (sha256 {digest[:12]}..., it had {entry['sha256'][:12]}...)"
    return None


def _source_change_task(item: tuple[int, list[Mapping[str, Any]], Path]) -> tuple[int, str | None]:
    index, files, root = item
    return index, source_change(files, root)


def _refuse_changed_sources(job: _BuildJob, executor: Executor, done: Mapping[int, Any]) -> None:
    """Refuse a resume when a source file of a case done before the interruption changed since: the
    store would hold that case's old data beside the other cases' new data, sealed as one build.

    Every file of every done case is hashed again (in parallel, by the executor): the price of a resume
    is reading the done cases' files once more, as the cases left to do read theirs.
    """
    items = [(index, record["files"], job.root) for index, record in sorted(done.items())]
    for index, change in sorted(executor.map(_source_change_task, items, "check"), key=lambda r: r[0]):
        if change is not None:
            raise StoreMismatchError(
                f"{job.store} holds an interrupted build whose case {done[index]['case_id']} was built "
                f"from other source data: {change}; put the file back to resume, or pass --overwrite "
                "to build again from the files as they are"
            )


# -- sealing -------------------------------------------------------------------------------------------
def table_arrays(
    records: Mapping[int, dict[str, Any]], layout: schema.StoreLayout, n_classes: int
) -> dict[str, np.ndarray]:
    """The patch table and case statistics arrays (see :mod:`.schema`) from the done markers.

    Args:
        n_classes: foreground classes of the dataset spec (columns of the class fractions).
    """
    k = layout.patches_per_case
    shapes = schema.table_shapes(layout.n_slots, layout.n_cases, n_classes)
    valid = np.zeros(shapes[schema.PATCH_VALID], dtype=bool)
    case = np.full(shapes[schema.PATCH_CASE], schema.EMPTY_SLOT, dtype=np.int32)
    corner = np.zeros(shapes[schema.PATCH_CORNER], dtype=np.int32)
    tumour = np.zeros(shapes[schema.PATCH_TUMOUR_FRACTION], dtype=np.float32)
    classes = np.zeros(shapes[schema.PATCH_CLASS_FRACTIONS], dtype=np.float32)
    split = np.full(shapes[schema.PATCH_SPLIT], schema.EMPTY_SLOT, dtype=np.int8)
    mean = np.full(shapes[schema.CASE_MEAN], np.nan, dtype=np.float32)
    std = np.full(shapes[schema.CASE_STD], np.nan, dtype=np.float32)
    for index, record in records.items():
        m = record["n_patches"]
        slots = slice(index * k, index * k + m)
        valid[slots] = True
        case[slots] = index
        corner[slots] = np.asarray(record["corners"], dtype=np.int32).reshape(m, 3)
        tumour[slots] = np.asarray(record["tumour_fraction"], dtype=np.float32)
        classes[slots] = np.asarray(record["class_fractions"], dtype=np.float32).reshape(m, n_classes)
        split[slots] = schema.SPLIT_CODES[record["split"]]
        if record.get("mean") is not None:
            mean[index] = record["mean"]
            std[index] = record["std"]
    return {
        schema.PATCH_VALID: valid,
        schema.PATCH_CASE: case,
        schema.PATCH_CORNER: corner,
        schema.PATCH_TUMOUR_FRACTION: tumour,
        schema.PATCH_CLASS_FRACTIONS: classes,
        schema.PATCH_SPLIT: split,
        schema.CASE_MEAN: mean,
        schema.CASE_STD: std,
    }


CASE_TABLE_KEYS = (
    "index",
    "case_id",
    "split",
    "files",
    "n_slots",
    "n_patches",
    "valid_corner_share",
    "best_tumour_fraction",
    "skip_reason",
    "data_digest",
    *schema.GEOMETRY_KEYS,
)


def store_metadata(
    params: BuildParams,
    info: dict[str, Any],
    records: Mapping[int, dict[str, Any]] | None,
    summary: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ``brainprep`` attribute; ``complete`` only when the records of every case are given."""
    spec = spec_from_metadata(info)
    if records is None:
        cases = [{"index": i, "case_id": cid, "split": split} for i, (cid, split) in enumerate(info["cases"])]
        fingerprint = None
    else:
        cases = []
        volumes = params.store.kind == "volumes"
        keys = volume_schema.CASE_KEYS if volumes else CASE_TABLE_KEYS
        for index in sorted(records):
            entry = {key: records[index].get(key) for key in keys}
            if params.standardize.method == "volume-nonzero" and not volumes:
                entry["mean"], entry["std"] = records[index]["mean"], records[index]["std"]
            cases.append(entry)
        fingerprint = source_fingerprint([f for record in records.values() for f in record["files"]])
    kind_keys = {"corner_table": volume_schema.CORNER_TABLE} if params.store.kind == "volumes" else {}
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "tool_version": __version__,
        **kind_keys,
        "params": params.to_dict(),
        "source": {"root": info["root"], "layout": info["layout"], "fingerprint": fingerprint},
        "spec": info["spec"],
        "channel_names": list(spec.channels),
        "class_names": list(spec.classes),
        "split_names": list(schema.SPLIT_NAMES),
        "cases": cases,
        "complete": records is not None,
        "summary": summary,
    }


def _seal(
    store: Path,
    params: BuildParams,
    layout: schema.StoreLayout,
    state: BuildState,
    info: dict[str, Any],
    started: float,
    workers: int,
    resumed: int,
) -> BuildSummary:
    records = state.done()
    missing = sorted(set(range(layout.n_cases)) - set(records))
    if missing:
        raise StoreError(
            f"cannot seal {store}: {len(missing)} case(s) have no done marker (first: {missing[0]})"
        )
    for index, record in sorted(records.items()):
        lost = lost_file(store, params, state, index, record)
        if lost is not None:
            raise StoreError(
                f"cannot seal {store}: case {record['case_id']} is marked done but {lost} is missing; "
                "rerun the same command to rebuild it"
            )
    volumes = params.store.kind == "volumes"
    if volumes:
        from brainprep.builder.volume_case import volume_table_arrays

        arrays = volume_table_arrays(records, layout.n_cases)
        patches = 0
        skipped = sum(1 for r in records.values() if r["crop_shape"] is None)
    else:
        arrays = table_arrays(records, layout, spec_from_metadata(info).n_classes)
        patches = int(sum(r["n_patches"] for r in records.values()))
        skipped = sum(1 for r in records.values() if r["n_patches"] == 0)
    if params.store.format == "zarr":
        from brainprep.store.zarr_store import set_metadata_zarr, store_bytes, write_table_zarr

        write_table_zarr(store, arrays)
        payload = store_bytes(store / schema.IMAGES) + store_bytes(store / schema.LABELS)
    else:
        # the cases that hold data only: a case now skipped may have left the part of an earlier try
        parts = {i: state.part_path(i) for i, record in records.items() if holds_data(params, record)}
        payload = int(sum(_part_payload(p) for p in parts.values()))
    summary = BuildSummary(
        str(store), layout.n_cases, patches, skipped, payload, time.perf_counter() - started, workers, resumed
    )
    metadata = seal(store_metadata(params, info, records, summary.to_dict()), arrays)
    if params.store.format == "zarr":
        set_metadata_zarr(store, metadata)  # complete: true, the very last write
    elif volumes:
        from brainprep.store.volume_hdf5 import assemble_volume_hdf5

        assemble_volume_hdf5(store, parts, arrays, metadata, params.store.compression_level)
    else:
        from brainprep.store.hdf5_store import assemble_hdf5

        assemble_hdf5(store, layout, parts, arrays, metadata)
    state.remove()
    return summary


def _part_payload(path: Path) -> int:
    with np.load(path) as part:
        return int(part["image_data"].size + part["label_data"].size)


# -- the build -----------------------------------------------------------------------------------------
def _select_cases(
    data_dir: Path, params: BuildParams, splits: Mapping[str, str] | None, labels: str | None
) -> tuple[Any, list[CaseFiles], dict[str, str]]:
    dataset = discover_cases(data_dir, labels)
    labelled = [c for c in dataset.cases if c.label_path is not None]
    unlabelled = [c.case_id for c in dataset.cases if c.label_path is None]
    if unlabelled:
        shown = ", ".join(unlabelled[:5]) + (", ..." if len(unlabelled) > 5 else "")
        logger.warning(
            "leaving out %d case(s) without a label (%s): a patch store needs labels", len(unlabelled), shown
        )
    if splits is not None:
        known = {c.case_id for c in labelled}
        unknown = sorted(set(splits) - known)
        if unknown:
            raise ConfigError(
                f"{len(unknown)} case(s) of the recipe are not labelled cases of {data_dir}: {unknown[:5]}"
            )
        bad = sorted({s for s in splits.values() if s not in schema.SPLIT_CODES})
        if bad:
            raise ConfigError(f"splits must be train or val, found {bad}")
        labelled = [c for c in labelled if c.case_id in splits]
        assigned = {c.case_id: splits[c.case_id] for c in labelled}
    elif params.split.split_file is not None:
        assigned = read_split_file(Path(params.split.split_file), [c.case_id for c in labelled])
    else:
        assigned = split_cases([c.case_id for c in labelled], params.split.val_fraction, params.seed)
    if not labelled:
        raise ConfigError(f"no labelled case to build in {data_dir}")
    return dataset, labelled, assigned


def _plan_task(args: tuple[CaseFiles, int, str, BuildParams, Path]) -> CasePlan:
    if args[3].store.kind == "volumes":
        from brainprep.builder.volume_case import plan_volume_case

        return plan_volume_case(*args)
    return plan_case(*args)


def build_patches(
    data_dir: str | os.PathLike,
    store: str | os.PathLike,
    params: BuildParams | None = None,
    *,
    workers: int | None = None,
    scheduler: Any = None,
    skip_bad: bool = False,
    progress: bool = False,
    overwrite: bool = False,
    splits: Mapping[str, str] | None = None,
    labels: str | None = None,
) -> BuildSummary:
    """Build (or resume building) a patch store from a BraTS data folder.

    Args:
        data_dir: data folder in any known layout (cases without label are ignored).
        store: ``*.zarr`` (Zarr v3) or ``*.h5`` (HDF5); the suffix sets ``params.store.format``.
        params: sampling, standardization, store dtype/compression, split and seed
            (default ``BuildParams()``).
        workers: local workers (default: CPU count); 1 runs in this process.
        scheduler: ``None``/``"processes"`` (local processes), ``"threads"``, ``"synchronous"``, a
            dask.distributed scheduler address (``tcp://...``) or ``Client``.
        skip_bad: record unreadable cases as skipped instead of stopping before writing.
        progress: tqdm bars (one tick per case).
        overwrite: replace an existing store (complete or not).
        splits: ``{case_id: "train" | "val"}`` fixing the cases and their split (a recipe's); default:
            every labelled case, split by ``params.split``.
        labels: the label convention (``--labels``); default: detected (:func:`brainprep.discover_cases`).

    Returns:
        The :class:`BuildSummary` of this run.

    Raises:
        BadCasesError: bad cases without ``skip_bad`` (nothing written).
        StoreLockedError: another build holds the store.
        StoreMismatchError: an interrupted build of this store differs: parameters, version or source.
        StoreError: the store exists and is complete (without ``overwrite``), or is not a brainprep store.
        StoreSpaceError: the disk filled up (the store stays incomplete; rerun to resume once freed).
        ConfigError: no case can be built (e.g. a patch larger than every volume), or cases of mixed
            voxel spacing under ``params.spacing.policy == "uniform"``; nothing is written.
    """
    started = time.perf_counter()
    # Absolute paths: tasks may run on dask workers whose working directory is not ours.
    store = Path(store).resolve()
    params = params if params is not None else BuildParams()
    fmt = format_for_new_store(store)
    params = params.replace(store=params.store.with_layout(fmt=fmt))
    if params.split.split_file is not None:
        # recorded resolved, so a resume from another working directory names the same file
        params = params.replace(
            split=params.split.replace(split_file=str(Path(params.split.split_file).resolve()))
        )
    dataset, cases, assigned = _select_cases(Path(data_dir).resolve(), params, splits, labels)
    # mixed voxel spacing is refused here, before the lock and before anything is written
    params = params.replace(spacing=resolve_spacing(cases, params.spacing))
    root = Path(dataset.root).resolve()
    info = {
        "tool_version": __version__,  # a build is resumed only by the version that started it
        "params": params.to_dict(),
        "root": str(root),
        "layout": dataset.layout,
        "spec": dataset.spec.to_dict(),
        "cases": [[c.case_id, assigned[c.case_id]] for c in cases],
    }
    sampling = params.sampling
    layout = schema.StoreLayout(
        len(cases),
        sampling.patches_per_case,
        sampling.patch_size,
        params.store.dtype,
        params.store.compression_level,
    )
    job = _BuildJob(store, fmt, params, info, cases, assigned, layout, root, skip_bad, overwrite, started)
    with (
        _full_disk_as_store_error(store, layout),
        BuildLock(store),
        Executor(workers, scheduler, progress) as executor,
    ):
        return _locked_build(job, executor)


@contextmanager
def _full_disk_as_store_error(store: Path, layout: schema.StoreLayout) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT), met anywhere in the build, into one :class:`StoreSpaceError`."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _space_error(store, layout, error) from error


def _space_error(store: Path, layout: schema.StoreLayout, error: OSError) -> StoreSpaceError:
    """One line for a full disk: where, how much more a build of this size needs, and that it resumes."""
    state = BuildState(store)
    done = len(state.done()) if state.exists else 0
    written = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) if store.is_dir() else 0
    # raw bytes of a case's patches, and the compressed share measured so far (about 0.4 when unknown)
    raw = (
        layout.patches_per_case * int(np.prod(layout.patch_size)) * (4 * np.dtype(layout.dtype).itemsize + 1)
    )
    per_case = written / done if done and written else 0.4 * raw
    need = per_case * (layout.n_cases - done)
    free = shutil.disk_usage(store.parent).free
    return StoreSpaceError(
        f"no space left on the device holding {store} ({error.filename or store}): {done} of "
        f"{layout.n_cases} cases are written; about {need / 1e6:,.0f} MB more are needed "
        f"({free / 1e6:,.0f} MB free); free space and rerun the same command to resume"
    )


@dataclass(frozen=True)
class _BuildJob:
    """What one call of :func:`build_patches` builds (resolved paths, parameters and cases)."""

    store: Path
    fmt: str
    params: BuildParams
    info: dict[str, Any]
    cases: list[CaseFiles]
    assigned: Mapping[str, str]
    layout: schema.StoreLayout
    root: Path
    skip_bad: bool
    overwrite: bool
    started: float


def _plan(job: _BuildJob, executor: Executor, done: Mapping[int, Any], resumed: bool) -> list[CasePlan]:
    """Plan the cases not done yet; refuse bad cases (unless ``skip_bad``) and a build with no good case,
    before anything is written."""
    todo = [
        (files, i, job.assigned[files.case_id], job.params, job.root)
        for i, files in enumerate(job.cases)
        if i not in done
    ]
    plans = sorted(executor.map(_plan_task, todo, "plan"), key=lambda p: p.index)
    bad = [p for p in plans if p.problem is not None]
    if bad and not job.skip_bad:
        raise BadCasesError([p.problem for p in bad if p.problem is not None], resumed=resumed)
    if bad and len(bad) == len(plans) and not done:
        raise ConfigError(
            f"no case of {job.root} can be built, so no store was written: {bad[0].problem}"
            + (f" (and {len(bad) - 1} more bad case(s))" if len(bad) > 1 else "")
        )
    return plans


def _locked_build(job: _BuildJob, executor: Executor) -> BuildSummary:
    """The part of :func:`build_patches` under the store's lock: prepare, plan, write and seal."""
    store, layout = job.store, job.layout
    state = BuildState(store)
    mode = _prepare(store, job.fmt, state, job.info, job.overwrite)
    if mode == "sealed":
        return _sealed_summary(store, job.fmt, state)
    resumed = mode == "resume"
    done = {}
    if resumed:
        done = _forget_empty(job.params, state, _forget_lost(store, job.params, state, state.done()))
        _refuse_changed_sources(job, executor, done)
    if done:
        logger.info("resuming %s: %d of %d cases already done", store, len(done), len(job.cases))
    plans = _plan(job, executor, done, resumed)
    volumes = job.params.store.kind == "volumes"
    if not resumed:
        state.create(job.info)
        if job.fmt == "zarr":
            from brainprep.store.volume_zarr import create_volume_zarr
            from brainprep.store.zarr_store import create_zarr_store

            metadata = store_metadata(job.params, job.info, None, None)
            if volumes:
                create_volume_zarr(store, metadata)
            else:
                create_zarr_store(store, layout, metadata)
    from brainprep.builder.volume_case import bad_volume_record, write_volume_case

    for plan in plans:
        if plan.problem is not None:
            record = (
                bad_volume_record(plan, plan.problem)
                if volumes
                else case_record(plan, layout.patches_per_case, problem=plan.problem)
            )
            state.mark_done(plan.index, record)
    tasks = [
        CaseTask(job.cases[p.index], p, job.params, layout, store, job.skip_bad, job.root)
        for p in plans
        if p.problem is None
    ]
    for record in executor.map(write_volume_case if volumes else write_case, tasks, "write"):
        logger.debug("case %s done", record["case_id"])
    return _seal(store, job.params, layout, state, job.info, job.started, executor.workers, len(done))
