"""Streaming benchmark: patches/s delivered to a training loop, preprocessing-first vs on-the-fly.

    python benchmarks/bench_streaming.py [--quick] [--remote-only] [--readers-only] [--json FILE]
        [--workdir DIR]

Every row delivers 160x160x16 patches of the same synthetic 240x240x155x4 cases to a loop that touches
each batch (no model), with 2 worker processes and batches of 2 dataset items; worker start-up and the
first batches are excluded (warm-up), then a fixed number of patches is timed. Every loader runs one long
epoch drawn with replacement (as a store or dataset of hundreds of cases would), so the few benchmark
cases do not make it pay a worker restart every few batches.

Rows:
  (a) brainnet loader (PatchDataset + ShardShuffleSampler + make_loader) over a Zarr v3 store
  (b) the same over an HDF5 store
  (c) MONAI on the fly: LoadImaged + EnsureChannelFirstd + RandCropByPosNegLabeld(num_samples=4)
      + NormalizeIntensityd(channel_wise) in a DataLoader of 2 workers
  (d) MONAI CacheDataset: loading cached in memory, FgBgToIndicesd cached too (MONAI's advice), the
      crop + normalization random per draw
  (d2) MONAI PersistentDataset: the same with the cache on disk (skipped with --quick)
  (e) TorchIO Queue + LabelSampler (2 workers, samples_per_volume 4, ZNormalization on load)
  (f) the limit: bare reads of random patches from the Zarr store in 2 processes, no loader: through
      zarr's API (per slot and per batch of 2, the better counts) and of the chunks' bytes directly
      (os.pread + Blosc decode); raw memcpy of the decoded bytes in 2 processes
  (g) one pass over every slot of the Zarr store with the threads loader: local, from S3 (moto's server
      in a child process on 127.0.0.1) without cache, and from S3 and HTTP through the disk chunk cache,
      cold then warm (:mod:`remote_rows`; ``--remote-only`` runs these rows alone; needs s3fs and moto)
  (h) readers side by side, 2 threads in one process, batches of 2 random valid slots (images + labels):
      brainprep's direct reader (``ShardReader.read_into``), tensorstore (its concurrency tuned),
      zarr-python, zarr-python with the zarrs codec pipeline; 3 alternating rounds, medians
      (``--readers-only`` runs only these)

  (v) fresh windows from a volume store (the mixed sampler, standardized at read time), beside (a2) in
      alternating rounds, and (n) nnU-Net v2's ``nnUNetDataLoader`` over its own preprocessed data
      (:mod:`volume_rows`; ``--volumes-only`` runs these with (c))

(a2) and the chunk decode, the two sides of the 85% bar, run in 5 alternating rounds and report their
medians, so the machine's drift during the run falls on both alike.

Bars: (a) >= 40x (c); (a) >= 3x the best of (d), (d2), (e); (a) >= 85% of the faster bare decode limit;
the best library reader of (g) < 0.9x the direct reader (at >= 0.9x that library becomes the one reader);
(v) >= 0.7x the (a2) measured beside it, >= 5x (n), >= 50x (c).
(a) is the faster of the two loader backends; both deliver the compact batch (float16 image, uint8 labels)
that brainnet's training loop moves to the GPU and expands there; (a3) adds the float32 + one-hot
expansion on the CPU (information). The baselines deliver a float32 image and a label map.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    N_CHANNELS,
    PATCH_SIZE,
    Bar,
    MissingPiece,
    Report,
    Row,
    alternating_rows,
    base_parser,
    case_files,
    cycle,
    data_fingerprint,
    finish,
    measure_row,
    measure_rows,
    patch_store,
    require,
    setup_logging,
    synthetic_dataset,
    time_stream,
    touch,
)
from remote_rows import ROWS as REMOTE_ROWS
from remote_rows import remote_rows
from volume_rows import ROW_NNUNET, ROW_VOLUME, ROW_VOLUME_EXPANDED, nnunet_row, paired_volume_rows

WORKERS = 2
BATCH_SIZE = 2
SAMPLES_PER_VOLUME = 4  # MONAI num_samples and TorchIO samples_per_volume
SEED = 0
UNIT = "patches/s"
FG_KEY, BG_KEY = "label_fg_indices", "label_bg_indices"
ROUNDS = 5  # alternating rounds of (a2) and the chunk decode (see paired_rows)
MEMCPY_RING = 32  # decoded patches cycled by the memcpy row: 118 MB, beyond any CPU cache

FULL = {"cases": 8, "patches_per_case": 20, "fast_patches": 2000, "slow_patches": 96}
QUICK = {"cases": 3, "patches_per_case": 8, "fast_patches": 96, "slow_patches": 24}

ROW_ZARR = "(a) brainnet loader, Zarr"
ROW_ZARR_THREADS = "(a2) brainnet loader, Zarr, threads"
ROW_ZARR_EXPANDED = "(a3) (a2) + float32/one-hot on CPU"
ROW_ZARR_THREADS_VOLUME_PAIR = "(a2) again, alternating with (v)"
ROW_ZARR_EXPANDED_VOLUME_PAIR = "(a3) again, alternating with (v3)"
ROW_HDF5 = "(b) brainnet loader, HDF5"
ROW_MONAI = "(c) MONAI on the fly"
ROW_CACHE = "(d) MONAI CacheDataset"
ROW_PERSISTENT = "(d2) MONAI PersistentDataset"
ROW_TORCHIO = "(e) TorchIO Queue+LabelSampler"
ROW_DECODE = "(f) bare Zarr decode, 2 procs"
ROW_DECODE_CHUNK = "(f) bare chunk decode, 2 procs"
ROW_DECODE_H5 = "(f) bare HDF5 decode, 2 procs"
ROW_MEMCPY = "(f) memcpy of decoded bytes, 2 procs"
ROW_CHECKSUM = "(f) crc32c check of a patch's chunks"
ROW_READ_DIRECT = "(h) readers, 2 threads: direct"
ROW_READ_TS = "(h) readers, 2 threads: tensorstore"
ROW_READ_ZARR = "(h) readers, 2 threads: zarr-python"
ROW_READ_ZARRS = "(h) readers, 2 threads: zarr-python+zarrs"
READER_THREADS = 2
READER_ROUNDS = 3
READER_BAR = 0.9  # a library at >= 0.9x the direct reader replaces it (issue 11)
TS_LIMITS = (None, 1, 2, 4)  # tensorstore data_copy / file_io concurrency limits tried (None: its default)


def _rate_row(name: str, result: Any, note: str) -> Row:
    return Row(
        name,
        result.rate,
        UNIT,
        note,
        {
            "patches": result.patches,
            "seconds": round(result.seconds, 3),
            "warmup_s": round(result.warmup_seconds, 2),
        },
    )


# ------------------------------------------------------------------------------------------ brainnet


def brainnet_row(
    name: str, store: Path, n_patches: int, backend: str = "processes", expand_on_cpu: bool = False
) -> Row:
    """(a)/(a2)/(a3)/(b): the brainnet loader over ``store`` (worker processes or threads), one long
    shard-aware epoch drawn with replacement.

    One long epoch (``weights`` + ``num_samples``) keeps the small benchmark store from paying a worker
    restart every few batches, which a real store of hundreds of cases amortizes. The loop receives the
    compact batch the training loop receives (brainnet expands it on the GPU); ``expand_on_cpu`` also
    makes the float32 image and one-hot target here, as CPU training does.
    """
    data = require("brainnet.data")
    open_store = require("brainprep.store.reader", "open_store")
    patch_store_ = open_store(store)
    dataset = data.PatchDataset(patch_store_, data.split_slots(patch_store_, None))
    warmup = 2 * WORKERS
    draws = items_needed(n_patches, 1)
    sampler = data.ShardShuffleSampler(
        dataset.shards, seed=SEED, weights=np.ones(len(dataset)), num_samples=draws
    )
    loader = data.make_loader(dataset, sampler, batch_size=BATCH_SIZE, workers=WORKERS, backend=backend)
    result = time_stream(
        cycle(lambda: loader),
        n_patches,
        warmup_batches=warmup,
        count=(lambda batch: touch(data.to_training_batch(batch))) if expand_on_cpu else touch,
    )
    what = "float32 + one-hot made on the CPU" if expand_on_cpu else "compact float16 + uint8 batches"
    return _rate_row(
        name, result, f"{len(dataset)} slots, batch {BATCH_SIZE}, {WORKERS} worker {backend}, {what}"
    )


# --------------------------------------------------------------------------------------------- MONAI


def _monai_items(data_dir: Path) -> list[dict[str, str]]:
    return [{"image": str(image), "label": str(label)} for _, image, label in case_files(data_dir)]


def _monai_crop(cached_indices: bool) -> Any:
    transforms = require("monai.transforms")
    extra = {"fg_indices_key": FG_KEY, "bg_indices_key": BG_KEY} if cached_indices else {}
    return transforms.RandCropByPosNegLabeld(
        keys=["image", "label"],
        label_key="label",
        spatial_size=PATCH_SIZE,
        pos=1,
        neg=1,
        num_samples=SAMPLES_PER_VOLUME,
        image_key="image",
        image_threshold=0,
        **extra,
    )


def _monai_transform(cached_indices: bool) -> Any:
    """Load -> channel first -> [FgBgToIndicesd] -> random crop x4 -> per-channel z-score of each patch."""
    transforms = require("monai.transforms")
    steps = [
        transforms.LoadImaged(keys=["image", "label"], image_only=True),
        transforms.EnsureChannelFirstd(keys=["image", "label"]),
    ]
    if cached_indices:
        # FgBgToIndicesd's default postfixes name the keys label_fg_indices / label_bg_indices
        steps.append(transforms.FgBgToIndicesd(keys="label", image_key="image", image_threshold=0))
    steps += [
        _monai_crop(cached_indices),
        transforms.NormalizeIntensityd(keys="image", channel_wise=True),
    ]
    compose = transforms.Compose(steps)
    compose.set_random_state(seed=SEED)
    return compose


def items_needed(n_patches: int, patches_per_item: int) -> int:
    """Dataset items one long epoch must hold: the timed patches, the warm-up and the prefetched batches."""
    slack_batches = 2 * WORKERS + 2 * WORKERS + 2  # warm-up + prefetch_factor 2 per worker + margin
    return -(-n_patches // patches_per_item) + slack_batches * BATCH_SIZE


def _long_sampler(n_items: int, draws: int) -> Any:
    """Uniform draws with replacement: one epoch covers the whole measurement, as a large dataset would."""
    torch = require("torch")
    generator = torch.Generator().manual_seed(SEED)
    return torch.utils.data.RandomSampler(
        range(n_items), replacement=True, num_samples=draws, generator=generator
    )


def _monai_loader(dataset: Any, n_patches: int) -> Any:
    monai_data = require("monai.data")
    draws = items_needed(n_patches, SAMPLES_PER_VOLUME)
    return monai_data.DataLoader(
        dataset, batch_size=BATCH_SIZE, sampler=_long_sampler(len(dataset), draws), num_workers=WORKERS
    )


def monai_on_the_fly_row(data_dir: Path, n_patches: int) -> Row:
    monai_data = require("monai.data")
    dataset = monai_data.Dataset(_monai_items(data_dir), transform=_monai_transform(cached_indices=False))
    loader = _monai_loader(dataset, n_patches)
    result = time_stream(cycle(lambda: loader), n_patches, warmup_batches=WORKERS)
    return _rate_row(
        ROW_MONAI, result, f"{len(dataset)} cases, {SAMPLES_PER_VOLUME} crops/load, batch {BATCH_SIZE} items"
    )


def monai_cache_row(data_dir: Path, n_patches: int) -> Row:
    monai_data = require("monai.data")
    items = _monai_items(data_dir)
    started = time.perf_counter()
    dataset = monai_data.CacheDataset(
        items,
        transform=_monai_transform(cached_indices=True),
        cache_rate=1.0,
        num_workers=WORKERS,
        progress=False,
    )
    cache_s = time.perf_counter() - started
    loader = _monai_loader(dataset, n_patches)
    result = time_stream(cycle(lambda: loader), n_patches, warmup_batches=WORKERS)
    row = _rate_row(
        ROW_CACHE, result, f"{len(items)} cases cached in RAM (cache build {cache_s:.0f} s, excluded)"
    )
    row.extra["cache_build_s"] = round(cache_s, 2)
    return row


def monai_persistent_row(data_dir: Path, cache_dir: Path, n_patches: int) -> Row:
    monai_data = require("monai.data")
    items = _monai_items(data_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    dataset = monai_data.PersistentDataset(
        items, transform=_monai_transform(cached_indices=True), cache_dir=cache_dir
    )
    started = time.perf_counter()
    for i in range(len(dataset)):  # fill the disk cache (or find it filled by an earlier run)
        dataset[i]
    fill_s = time.perf_counter() - started
    loader = _monai_loader(dataset, n_patches)
    result = time_stream(cycle(lambda: loader), n_patches, warmup_batches=WORKERS)
    row = _rate_row(
        ROW_PERSISTENT, result, f"{len(items)} cases cached on disk (fill {fill_s:.0f} s, excluded)"
    )
    row.extra["cache_fill_s"] = round(fill_s, 2)
    return row


# ------------------------------------------------------------------------------------------- TorchIO


def torchio_row(data_dir: Path, n_patches: int) -> Row:
    tio = require("torchio")
    torch = require("torch")
    cases = case_files(data_dir)
    # The case list repeated: one Queue epoch covers the measurement (no worker restart per 3-case epoch).
    repeats = -(-items_needed(n_patches, SAMPLES_PER_VOLUME) // len(cases))
    subjects = [
        tio.Subject(image=tio.ScalarImage(image), label=tio.LabelMap(label))
        for _, image, label in cases * repeats
    ]
    dataset = tio.SubjectsDataset(subjects, transform=tio.ZNormalization())
    queue = tio.Queue(
        dataset,
        max_length=4 * SAMPLES_PER_VOLUME,
        samples_per_volume=SAMPLES_PER_VOLUME,
        sampler=tio.LabelSampler(patch_size=PATCH_SIZE, label_name="label"),
        num_workers=WORKERS,
        shuffle_subjects=True,
        shuffle_patches=True,
    )
    loader = torch.utils.data.DataLoader(queue, batch_size=BATCH_SIZE, num_workers=0)  # the Queue's rule
    torch.manual_seed(SEED)
    result = time_stream(cycle(lambda: loader), n_patches, warmup_batches=WORKERS)
    return _rate_row(
        ROW_TORCHIO,
        result,
        f"{len(cases)} cases, queue {4 * SAMPLES_PER_VOLUME}, {SAMPLES_PER_VOLUME} patches/volume",
    )


# ----------------------------------------------------------------------------------------- the limit


def _open_arrays(store: str, fmt: str) -> tuple[Any, Any, np.ndarray]:
    """(images, labels, valid slots) of a store, opened with zarr / h5py directly (no brainprep)."""
    if fmt == "zarr":
        import zarr

        group = zarr.open_group(store, mode="r")
    else:
        import h5py

        group = h5py.File(store, "r")
    valid = np.flatnonzero(np.asarray(group["patch_valid"][...]).astype(bool))
    return group["images"], group["labels"], valid


def _shard_readers(store: Path, images: Any, labels: Any) -> list[Any]:
    """brainprep's direct readers (``ShardReader`` over local files) of the images and labels of a store."""
    shards = require("brainprep.store.shards")
    return [
        shards.ShardReader(shards.shard_layout(name, array), shards.LocalFiles(store / name))
        for name, array in (("images", images), ("labels", labels))
    ]


def _bare_worker(
    mode: str, store: str, fmt: str, n_reads: int, warmup: int, seed: int, barrier: Any, results: Any
) -> None:
    """One process of the limit: ``mode`` is ``slot`` (one patch per read), ``batch`` (BATCH_SIZE sorted
    random slots per orthogonal read, Zarr only) or ``memcpy`` (copy a decoded patch's bytes, no store)."""
    rng = np.random.default_rng(seed)
    images, labels, valid = _open_arrays(store, fmt)
    per_read = BATCH_SIZE if mode == "batch" else 1
    if mode == "chunk":
        # the chunk's bytes (one pread, shard index read once), its crc32c checked, decoded by Blosc into a
        # buffer: no zarr; the same checks as the loader's reads
        readers = _shard_readers(Path(store), images, labels)
        buffers = [np.empty(r.patch_shape, dtype=r.dtype) for r in readers]
    if mode == "memcpy":
        # a ring of decoded patches larger than the CPU caches, so the copy runs at memory speed
        first = (np.asarray(images[int(valid[0])]), np.asarray(labels[int(valid[0])]))
        ring = [(first[0].copy(), first[1].copy()) for _ in range(MEMCPY_RING)]
        dst = (np.empty_like(first[0]), np.empty_like(first[1]))
        position = [0]

    def read_once() -> None:
        if mode == "memcpy":
            image, label = ring[position[0] % MEMCPY_RING]
            position[0] += 1
            np.copyto(dst[0], image)
            np.copyto(dst[1], label)
        elif mode == "chunk":
            slot = int(rng.choice(valid))
            for reader, buffer in zip(readers, buffers, strict=True):
                reader.read_into(slot, buffer)
        elif mode == "slot":
            slot = int(rng.choice(valid))
            np.asarray(images[slot])
            np.asarray(labels[slot])
        else:
            slots = np.sort(rng.choice(valid, size=per_read))
            np.asarray(images.get_orthogonal_selection((slots,)))
            np.asarray(labels.get_orthogonal_selection((slots,)))

    for _ in range(warmup):
        read_once()
    barrier.wait()
    t0 = time.monotonic()
    for _ in range(n_reads):
        read_once()
    results.put((t0, time.monotonic(), n_reads * per_read))


def bare_rate(
    mode: str, store: Path, fmt: str, n_patches: int, processes: int = WORKERS
) -> tuple[float, int]:
    """Patches/s of ``processes`` bare reader processes started together; returns (rate, patches)."""
    context = mp.get_context("spawn")  # a clean process: no zarr/asyncio state inherited by fork
    barrier = context.Barrier(processes)
    results = context.Queue()
    per_read = BATCH_SIZE if mode == "batch" else 1
    reads = max(1, n_patches // (processes * per_read))
    if mode == "memcpy":
        reads *= 20  # far faster than decoding; more repeats for a measurable time
    procs = [
        context.Process(
            target=_bare_worker, args=(mode, str(store), fmt, reads, 4, SEED + i, barrier, results)
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    spans = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"a bare {mode} reader process failed (exit codes {[p.exitcode for p in procs]})")
    start = min(s[0] for s in spans)
    end = max(s[1] for s in spans)
    total = sum(s[2] for s in spans)
    return total / (end - start), total


def bare_decode_row(name: str, store: Path, fmt: str, n_patches: int) -> Row:
    """The limit: per-slot reads, and for Zarr also one orthogonal read per batch (what
    ``PatchStore.read_patches`` does); the better of the two counts."""
    slot_rate, slot_n = bare_rate("slot", store, fmt, n_patches)
    if fmt != "zarr":
        return Row(name, slot_rate, UNIT, "per-slot reads of random valid slots, images+labels")
    # fewer patches: with zarr 3.1 an orthogonal read of 2 slots is far slower than 2 slot reads
    batch_rate, batch_n = bare_rate("batch", store, fmt, max(n_patches // 4, 8 * WORKERS * BATCH_SIZE))
    return Row(
        name,
        max(slot_rate, batch_rate),
        UNIT,
        f"best of per-slot reads ({slot_rate:.0f}/s) and orthogonal reads of {BATCH_SIZE} sorted slots "
        f"({batch_rate:.0f}/s), random valid slots, images+labels",
        {"per_slot": slot_rate, "per_batch": batch_rate, "patches": slot_n + batch_n},
    )


def chunk_decode_row(store: Path, n_patches: int) -> Row:
    rate, total = bare_rate("chunk", store, "zarr", n_patches)
    return Row(
        ROW_DECODE_CHUNK,
        rate,
        UNIT,
        "random valid slots, images+labels: os.pread of each chunk (shard index read once) + Blosc decode",
        {"patches": total},
    )


def paired_rows(store: Path, n_patches: int, rounds: int) -> list[Row]:
    """(a2) and the chunk-decode limit, the two sides of the 85% bar, in alternating rounds
    (:func:`common.alternating_rows`), each reported as its median."""
    return alternating_rows(
        lambda: brainnet_row(ROW_ZARR_THREADS, store, n_patches, backend="threads"),
        lambda: chunk_decode_row(store, n_patches),
        rounds,
        f"median of {rounds} rounds alternating (a2) and the chunk decode",
        "round_ratios",
    )


def checksum_row(store: Path, n_patches: int) -> Row:
    """What the crc32c check of a patch's chunks (image + label) costs, on one core."""
    shards = require("brainprep.store.shards")
    images, labels, valid = _open_arrays(str(store), "zarr")
    readers = _shard_readers(store, images, labels)
    rng = np.random.default_rng(SEED)
    slots = rng.choice(valid, size=min(n_patches, 400))
    chunks = [[np.frombuffer(r.chunk(int(s)), dtype=np.uint8) for r in readers] for s in slots]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for pair in chunks:
            for chunk in pair:
                shards.crc32c(chunk[:-4])
        best = min(best, (time.perf_counter() - start) / len(chunks))
    nbytes = np.mean([sum(c.size for c in pair) for pair in chunks])
    return Row(
        ROW_CHECKSUM,
        best * 1e6,
        "us/patch",
        f"crc32c of a patch's stored image + label chunks ({nbytes / 1e6:.2f} MB), one core, fastest of 5; "
        "the chunk-decode row and the loaders check it on every read",
        {"bytes_per_patch": float(nbytes)},
    )


def memcpy_row(store: Path, n_patches: int) -> Row:
    rate, total = bare_rate("memcpy", store, "zarr", n_patches)
    patch_bytes = N_CHANNELS * int(np.prod(PATCH_SIZE)) * 2 + int(np.prod(PATCH_SIZE))
    return Row(
        ROW_MEMCPY,
        rate,
        UNIT,
        f"np.copyto of decoded float16 image + uint8 label patches ({patch_bytes / 1e6:.1f} MB each, "
        f"a ring of {MEMCPY_RING}), "
        f"{rate * patch_bytes / 1e9:.1f} GB/s",
        {"patches": total, "patch_bytes": patch_bytes},
    )


# --------------------------------------------------------------------------------- readers side by side

#: a reader of the benchmark: ``per_thread()`` gives one thread's ``read(slots)``, which reads the images
#: and labels of those slots (int64 (BATCH_SIZE,)) into arrays
ReaderFactory = Callable[[], Callable[[np.ndarray], None]]


def direct_reader(store: Path) -> ReaderFactory:
    """brainprep's :class:`~brainprep.store.shards.ShardReader`: each chunk checked and decoded straight
    into a buffer preallocated per thread (what the loader does)."""
    images, labels, _ = _open_arrays(str(store), "zarr")
    readers = _shard_readers(store, images, labels)

    def per_thread() -> Callable[[np.ndarray], None]:
        buffers = [np.empty((BATCH_SIZE, *r.patch_shape), dtype=r.dtype) for r in readers]

        def read(slots: np.ndarray) -> None:
            for reader, buffer in zip(readers, buffers, strict=True):
                for out, slot in zip(buffer, slots, strict=True):
                    reader.read_into(int(slot), out)

        return read

    return per_thread


def tensorstore_reader(store: Path, limit: int | None) -> ReaderFactory:
    """tensorstore's zarr3 driver over the file kvstore, one batched read per array (both in flight at
    once); ``limit`` caps its ``data_copy_concurrency`` and ``file_io_concurrency`` (None: its defaults).

    No cache pool (tensorstore's default): a decoded-chunk cache would serve the few benchmark slots from
    memory, which a store of hundreds of cases read at random does not.
    """
    ts = require("tensorstore")
    spec = (
        {}
        if limit is None
        else {key: {"limit": limit} for key in ("data_copy_concurrency", "file_io_concurrency")}
    )
    context = ts.Context(spec)
    arrays = [
        ts.open(
            {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / name)}},
            read=True,
            context=context,
        ).result()
        for name in ("images", "labels")
    ]

    def read(slots: np.ndarray) -> None:
        futures = [array[np.sort(slots)].read() for array in arrays]
        for future in futures:
            future.result()

    return lambda: read


def zarr_reader(store: Path, pipeline: str | None = None) -> ReaderFactory:
    """zarr-python, ``group["images"][slot]`` per slot; ``pipeline`` is a ``codec_pipeline.path``
    (``zarrs.ZarrsCodecPipeline``), in force while the arrays are opened (zarr binds it then)."""
    zarr = require("zarr")
    config = {} if pipeline is None else {"codec_pipeline.path": pipeline}
    if pipeline is not None:
        require(pipeline.rsplit(".", 1)[0])
    with zarr.config.set(config):
        group = zarr.open_group(str(store), mode="r")
        arrays = [group["images"], group["labels"]]
    found = type(arrays[0]._async_array.codec_pipeline)
    if pipeline is not None and f"{found.__module__}.{found.__name__}" != pipeline:
        raise MissingPiece(f"zarr opened the store with {found.__name__}, not {pipeline}")

    def read(slots: np.ndarray) -> None:
        for array in arrays:
            for slot in slots:
                np.asarray(array[int(slot)])

    return lambda: read


def threaded_rate(
    per_thread: ReaderFactory, valid: np.ndarray, n_patches: int, threads: int = READER_THREADS
) -> tuple[float, float]:
    """(patches/s, process CPU ms per patch) of ``threads`` threads of one process, each reading batches
    of BATCH_SIZE random valid slots (after 2 warm-up batches each), started together; the span runs from
    the first start to the last end.

    The CPU time counts every thread of the process (a library's own pool too). On a machine shared with
    other work it is the steadier number: a reader that runs more threads also wins a larger share of
    the contended cores, which raises its patches/s without making it cheaper.
    """
    batches = max(1, n_patches // (threads * BATCH_SIZE))
    barrier = threading.Barrier(threads)

    def work(seed: int) -> tuple[float, float, float, float]:
        rng = np.random.default_rng(seed)
        read = per_thread()
        for _ in range(2):
            read(rng.choice(valid, size=BATCH_SIZE))
        barrier.wait()
        t0, c0 = time.monotonic(), time.process_time()
        for _ in range(batches):
            read(rng.choice(valid, size=BATCH_SIZE))
        return t0, time.monotonic(), c0, time.process_time()

    with ThreadPoolExecutor(threads) as pool:
        spans = list(pool.map(work, [SEED + i for i in range(threads)]))
    patches = threads * batches * BATCH_SIZE
    seconds = max(s[1] for s in spans) - min(s[0] for s in spans)
    cpu = max(s[3] for s in spans) - min(s[2] for s in spans)
    return patches / seconds, 1e3 * cpu / patches


def _tuned_tensorstore(
    store: Path, valid: np.ndarray, n_patches: int
) -> tuple[ReaderFactory, dict[str, Any]]:
    """The tensorstore reader at its best concurrency limit of TS_LIMITS (one short pass each)."""
    tried = {}
    for limit in TS_LIMITS:
        tried[limit] = threaded_rate(tensorstore_reader(store, limit), valid, max(n_patches // 2, 16))[0]
    best = max(tried, key=lambda limit: tried[limit])
    info = {"limit": best, "tuning": {str(k): round(v, 1) for k, v in tried.items()}}
    return tensorstore_reader(store, best), info


def reader_rows(store: Path, n_patches: int, rounds: int = READER_ROUNDS) -> list[Row]:
    """(g): the four readers on the same store, threads and batches, in ``rounds`` alternating rounds
    (the order reverses every round), each reported as its median; a reader whose package is absent is a
    row without a value saying so."""
    _, _, valid = _open_arrays(str(store), "zarr")
    makers: dict[str, Callable[[], tuple[ReaderFactory, dict[str, Any]]]] = {
        ROW_READ_DIRECT: lambda: (direct_reader(store), {}),
        ROW_READ_TS: lambda: _tuned_tensorstore(store, valid, n_patches),
        ROW_READ_ZARR: lambda: (zarr_reader(store), {}),
        ROW_READ_ZARRS: lambda: (zarr_reader(store, "zarrs.ZarrsCodecPipeline"), {}),
    }
    readers: dict[str, tuple[ReaderFactory, dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    for name, make in makers.items():
        try:
            readers[name] = make()
        except MissingPiece as err:
            skipped[name] = f"not run: {err}"
    rates: dict[str, list[float]] = {name: [] for name in readers}
    cpu: dict[str, list[float]] = {name: [] for name in readers}
    for i in range(rounds):
        for name in list(readers) if i % 2 == 0 else list(readers)[::-1]:
            rate, cpu_ms = threaded_rate(readers[name][0], valid, n_patches)
            rates[name].append(rate)
            cpu[name].append(cpu_ms)
    versions = {m: metadata.version(m) for m in ("zarr", "tensorstore", "zarrs") if m in sys.modules}
    direct, direct_cpu = rates.get(ROW_READ_DIRECT), cpu.get(ROW_READ_DIRECT)
    rows = []
    for name in makers:
        if name in skipped:
            rows.append(Row(name, None, UNIT, skipped[name]))
            continue
        info = dict(readers[name][1])
        if direct and name != ROW_READ_DIRECT:
            # the ratio within each round: the machine's drift between rounds falls on both sides alike
            ratios = [a / b for a, b in zip(rates[name], direct, strict=True)]
            info["ratio_to_direct"] = round(statistics.median(ratios), 3)
            info["round_ratios"] = [round(r, 3) for r in ratios]
            # direct CPU per patch / this reader's: what the same cores deliver when nothing else runs
            cpu_ratios = [a / b for a, b in zip(direct_cpu, cpu[name], strict=True)]
            info["cpu_ratio_to_direct"] = round(statistics.median(cpu_ratios), 3)
        how = f"; concurrency limit {info['limit']} (best of {TS_LIMITS})" if "limit" in info else ""
        if "ratio_to_direct" in info:
            how += (
                f"; {info['ratio_to_direct']:.2f}x direct in patches/s, {info['cpu_ratio_to_direct']:.2f}x "
                "in CPU per patch (medians of the per-round ratios)"
            )
        info["cpu_ms_per_patch"] = round(statistics.median(cpu[name]), 2)
        info["cpu_rounds"] = [round(v, 2) for v in cpu[name]]
        rows.append(
            Row(
                name,
                statistics.median(rates[name]),
                UNIT,
                f"{len(valid)} slots, {READER_THREADS} threads, batches of {BATCH_SIZE}, images+labels, "
                f"median of {rounds} alternating rounds{how}",
                {"rounds": [round(v, 1) for v in rates[name]], "versions": versions, **info},
            )
        )
    return rows


def reader_bars(report: Report) -> list[Bar]:
    """Keep the direct reader while the best library reader of (g) stays under READER_BAR of it, in
    patches/s and in CPU per patch (each the median of the per-round ratios to the direct reader)."""
    bars = []
    for key, what in (("ratio_to_direct", "patches/s"), ("cpu_ratio_to_direct", "CPU per patch")):
        libraries = [
            (row.extra[key], name)
            for name in (ROW_READ_TS, ROW_READ_ZARR, ROW_READ_ZARRS)
            if (row := report.row(name)) is not None and key in row.extra
        ]
        best, best_name = max(libraries) if libraries else (None, "no library reader ran")
        bars.append(
            Bar(
                f"(h) best library reader / direct, {what}",
                best,
                None,
                "<",
                READER_BAR,
                note=f"{best_name}; at >= {READER_BAR}x that library becomes the one reader (issue 11)",
            )
        )
    return bars


# -------------------------------------------------------------------------------------------- driver


def volume_bars(
    report: Report, patch_row: str = ROW_ZARR_THREADS, expanded_row: str = ROW_ZARR_EXPANDED
) -> list[Bar]:
    """Issue 12's streaming bars: (v) against the patch store's (a2) measured beside it (and, for CPU
    training, (v3) against (a3): both standardized, float32 and one-hot on the CPU), nnU-Net's loader and
    MONAI on the fly."""
    volume = report.value(ROW_VOLUME)
    expanded = report.value(ROW_VOLUME_EXPANDED)
    return [
        Bar("(v) fresh windows / (a2) patch store", volume, report.value(patch_row), ">=", 0.7),
        Bar("(v3) / (a3), expanded on the CPU", expanded, report.value(expanded_row), ">=", 0.7),
        Bar("(v) fresh windows / (n) nnU-Net loader", volume, report.value(ROW_NNUNET), ">=", 5.0),
        Bar("(v) fresh windows / (c) MONAI on the fly", volume, report.value(ROW_MONAI), ">=", 50.0),
    ]


def run(args: Any) -> Report:
    sizes = QUICK if args.quick else FULL
    fast, slow = args.patches or sizes["fast_patches"], args.slow_patches or sizes["slow_patches"]
    report = Report(
        "Streaming: 160x160x16 patches/s delivered to a loop (no model)",
        settings={
            "cases": sizes["cases"],
            "patches_per_case": sizes["patches_per_case"],
            "workers": WORKERS,
            "batch_size": BATCH_SIZE,
            "timed_patches_fast_rows": fast,
            "timed_patches_slow_rows": slow,
            "quick": args.quick,
            "readers_only": args.readers_only,
            "volumes_only": args.volumes_only,
        },
    )
    data_dir: Path | None = None
    stores: dict[str, Path] = {}

    def need_data() -> Path:
        nonlocal data_dir
        if data_dir is None:
            data_dir = synthetic_dataset(args.workdir, sizes["cases"], fresh=args.fresh)
        return data_dir

    def need_store(fmt: str) -> Path:
        if fmt not in stores:
            stores[fmt] = patch_store(
                args.workdir, need_data(), fmt, sizes["patches_per_case"], fresh=args.fresh
            )
        return stores[fmt]

    print(report.title, flush=True)
    rows = report.rows

    def measure_remote() -> list[Row]:
        return measure_rows(
            list(REMOTE_ROWS), UNIT, lambda: remote_rows(need_store("zarr"), WORKERS, BATCH_SIZE)
        )

    if args.remote_only:
        rows.extend(measure_remote())
        return report
    reader_names = [ROW_READ_DIRECT, ROW_READ_TS, ROW_READ_ZARR, ROW_READ_ZARRS]

    def measure_readers() -> list[Row]:
        return measure_rows(reader_names, UNIT, lambda: reader_rows(need_store("zarr"), fast))

    if args.readers_only:
        rows.extend(measure_readers())
        report.bars = reader_bars(report)
        return report

    def measure_volumes() -> list[Row]:
        def a2(store: Path, n: int) -> Row:
            return brainnet_row(ROW_ZARR_THREADS, store, n, backend="threads")

        def a3(store: Path, n: int) -> Row:
            return brainnet_row(ROW_ZARR_EXPANDED, store, n, backend="threads", expand_on_cpu=True)

        def volumes() -> Path:
            return patch_store(args.workdir, need_data(), "zarr", 1, fresh=args.fresh, kind="volumes")

        def pair() -> list[Row]:
            return paired_volume_rows(need_store("zarr"), volumes(), fast, ROUNDS, a2)

        def expanded_pair() -> list[Row]:
            return paired_volume_rows(need_store("zarr"), volumes(), fast, ROUNDS, a3, expand_on_cpu=True)

        found = measure_rows([ROW_ZARR_THREADS, ROW_VOLUME], UNIT, pair)
        found.extend(measure_rows([ROW_ZARR_EXPANDED, ROW_VOLUME_EXPANDED], UNIT, expanded_pair))
        found.append(
            measure_row(ROW_NNUNET, UNIT, lambda: nnunet_row(need_data(), args.workdir, PATCH_SIZE, slow))
        )
        return found

    if args.volumes_only:
        rows.extend(measure_volumes())
        rows.append(measure_row(ROW_MONAI, UNIT, lambda: monai_on_the_fly_row(need_data(), slow)))
        report.bars = volume_bars(report)
        return report
    rows.append(measure_row(ROW_ZARR, UNIT, lambda: brainnet_row(ROW_ZARR, need_store("zarr"), fast)))
    threads_row, chunk_row = measure_rows(
        [ROW_ZARR_THREADS, ROW_DECODE_CHUNK], UNIT, lambda: paired_rows(need_store("zarr"), fast, ROUNDS)
    )
    rows.append(threads_row)
    rows.append(
        measure_row(
            ROW_ZARR_EXPANDED,
            UNIT,
            lambda: brainnet_row(
                ROW_ZARR_EXPANDED, need_store("zarr"), fast, backend="threads", expand_on_cpu=True
            ),
        )
    )
    rows.append(measure_row(ROW_HDF5, UNIT, lambda: brainnet_row(ROW_HDF5, need_store("hdf5"), fast)))
    rows.append(measure_row(ROW_MONAI, UNIT, lambda: monai_on_the_fly_row(need_data(), slow)))
    rows.append(measure_row(ROW_CACHE, UNIT, lambda: monai_cache_row(need_data(), slow)))
    if args.quick:
        rows.append(Row(ROW_PERSISTENT, None, UNIT, "skipped with --quick"))
    else:

        def persistent() -> Row:
            # MONAI keys its disk cache by the file paths only: one folder per version of the data
            data = need_data()
            cache = args.workdir / "monai-persistent" / f"{data.name}-{data_fingerprint(data)}"
            return monai_persistent_row(data, cache, slow)

        rows.append(measure_row(ROW_PERSISTENT, UNIT, persistent))
    rows.append(measure_row(ROW_TORCHIO, UNIT, lambda: torchio_row(need_data(), slow)))
    rows.append(
        measure_row(ROW_DECODE, UNIT, lambda: bare_decode_row(ROW_DECODE, need_store("zarr"), "zarr", fast))
    )
    rows.append(
        measure_row(
            ROW_DECODE_H5, UNIT, lambda: bare_decode_row(ROW_DECODE_H5, need_store("hdf5"), "hdf5", fast)
        )
    )
    rows.append(chunk_row)
    rows.append(measure_row(ROW_CHECKSUM, "us/patch", lambda: checksum_row(need_store("zarr"), fast)))
    rows.append(measure_row(ROW_MEMCPY, UNIT, lambda: memcpy_row(need_store("zarr"), fast)))
    rows.extend(measure_remote())  # last: the rows before them run as they always did
    rows.extend(measure_readers())
    volume_rows = measure_volumes()
    # the (a2), (a3) of the volume pairings are second measurements of them: kept as their own rows
    volume_rows[0].name = ROW_ZARR_THREADS_VOLUME_PAIR
    volume_rows[2].name = ROW_ZARR_EXPANDED_VOLUME_PAIR
    rows.extend(volume_rows)

    # The bars take the faster of the two loader backends (both are product configurations).
    zarr_rows = [
        (report.value(ROW_ZARR) or 0.0, ROW_ZARR),
        (report.value(ROW_ZARR_THREADS) or 0.0, ROW_ZARR_THREADS),
    ]
    zarr_rate, zarr_name = max(zarr_rows)
    zarr_rate = zarr_rate or None
    cached = [
        v for v in (report.value(ROW_CACHE), report.value(ROW_PERSISTENT), report.value(ROW_TORCHIO)) if v
    ]
    best_cached = max(cached) if cached else None
    best_name = next(
        (r.name for r in rows if best_cached is not None and r.value == best_cached), "no cached baseline ran"
    )
    # The limit is the faster bare decode: through zarr's API, or of the chunks' bytes directly.
    decode_limit, decode_name = max(
        (report.value(ROW_DECODE) or 0.0, ROW_DECODE),
        (report.value(ROW_DECODE_CHUNK) or 0.0, ROW_DECODE_CHUNK),
    )
    decode_limit = decode_limit or None
    report.bars = [
        Bar(
            "(a) Zarr / (c) MONAI on the fly", zarr_rate, report.value(ROW_MONAI), ">=", 40.0, note=zarr_name
        ),
        Bar("(a) Zarr / best cached (d, d2, e)", zarr_rate, best_cached, ">=", 3.0, note=best_name),
        Bar(
            "(a) Zarr / bare decode limit",
            zarr_rate,
            decode_limit,
            ">=",
            0.85,
            note=f"{zarr_name}; limit: {decode_name}",
        ),
        *reader_bars(report),
        *volume_bars(report, ROW_ZARR_THREADS_VOLUME_PAIR, ROW_ZARR_EXPANDED_VOLUME_PAIR),
    ]
    hdf5, monai, hdf5_limit = report.value(ROW_HDF5), report.value(ROW_MONAI), report.value(ROW_DECODE_H5)
    if hdf5 and monai and hdf5_limit:
        # information only (the bars are about Zarr): HDF5's gzip decode bounds what any loader gets from it
        report.notes.append(
            f"(b) HDF5 is {hdf5 / monai:.1f}x (c) and {hdf5 / hdf5_limit:.2f} of its own bare decode "
            f"({hdf5_limit:.0f} patches/s): h5py decodes gzip on one thread per process"
        )
    report.notes.append(
        "(a), (a2), (b) deliver the compact batch brainnet's training loop receives (float16 image, uint8 "
        "labels; expanded to float32 + one-hot on the GPU); the baselines deliver a float32 image and a "
        "label map; (a3) also expands on the CPU, as CPU training does"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--patches", type=int, default=None, help="timed patches of the fast rows (a, b, f, h)"
    )
    parser.add_argument(
        "--readers-only",
        action="store_true",
        help="only the rows (h): the readers side by side, and their bar",
    )
    parser.add_argument("--slow-patches", type=int, default=None, help="timed patches of the rows c, d, e")
    parser.add_argument("--remote-only", action="store_true", help="run the rows (g) alone, no bars")
    parser.add_argument(
        "--volumes-only",
        action="store_true",
        help="run the rows (v), (a2), (n) and (c) alone, with their bars",
    )
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return finish(run(args), args.json)


if __name__ == "__main__":
    sys.exit(main())
