"""Rows (v) of ``bench_streaming.py``: fresh windows from a volume store, beside the patch store and nnU-Net.

  (v)  brainnet's training stream over a volume store: ``VolumeDraws`` (``WindowSamplingParams``'
       defaults: half of the windows centred on a voxel of a random tumour class, the rest uniform over
       the brain crop) + ``VolumeWindowDataset`` (each window read and ``patch-slice`` standardized at read
       time, as training sees it) + ``make_loader`` with the threads backend, 2 threads, batches of 2
  (a2) the patch store's threads loader, the same settings (:func:`bench_streaming.brainnet_row`)
  (n)  nnU-Net v2's ``nnUNetDataLoader`` over its own preprocessed blosc2 data of the same cases, same
       patch size, batch and worker count, no augmentation (:mod:`nnunet_baseline`)

(v) and (a2) run in alternating rounds (which goes first alternates too) and each reports its median, so
the machine's drift falls on both alike; the 0.7x bar of issue 12 is their ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import MissingPiece, Row, alternating_rows, cycle, require, time_stream, touch

ROW_VOLUME = "(v) volume store, fresh windows, threads"
ROW_VOLUME_EXPANDED = "(v3) (v) + standardized/float32/one-hot on CPU"
ROW_NNUNET = "(n) nnU-Net nnUNetDataLoader, 2 procs"
WORKERS = 2
BATCH_SIZE = 2
SEED = 0


def volume_row(store: Path, n_patches: int, expand_on_cpu: bool = False) -> Row:
    """(v): the fresh-window stream ``brainnet train --store VOLUMES`` reads, without the model: raw
    windows, which the training loop standardizes on its device. ``expand_on_cpu`` (v3) also runs
    ``to_training_batch`` here (standardization, float32, one-hot), as CPU training does: the side of
    (a3), which does the same to the patch store's batches."""
    open_store = require("brainprep.store.reader", "open_store")
    data = require("brainnet.data")
    sampling = require("brainnet.data.volume_sampler")
    volumes = open_store(store)
    params = sampling.WindowSamplingParams(draws_per_epoch=n_patches + 4 * WORKERS * BATCH_SIZE)
    draws = sampling.VolumeDraws(volumes, None, params, seed=SEED)
    dataset = sampling.VolumeWindowDataset(volumes, draws)
    sampler = sampling.WindowStreamSampler(params.draws_per_epoch)
    loader = data.make_loader(dataset, sampler, batch_size=BATCH_SIZE, workers=WORKERS, backend="threads")
    count = (lambda batch: touch(data.to_training_batch(batch))) if expand_on_cpu else touch
    result = time_stream(cycle(lambda: loader), n_patches, warmup_batches=2 * WORKERS, count=count)
    what = (
        "standardized, float32 + one-hot made on the CPU"
        if expand_on_cpu
        else "raw float16 windows + uint8 (standardized by the loop on its device)"
    )
    return Row(
        ROW_VOLUME_EXPANDED if expand_on_cpu else ROW_VOLUME,
        result.rate,
        "patches/s",
        f"{len(draws.cases)} volumes, default sampler (tumour {params.tumour_share:.2f}, "
        f"foreground {params.foreground_share:.2f}), "
        f"batch {BATCH_SIZE}, {WORKERS} threads, {what}",
        {"patches": result.patches, "seconds": round(result.seconds, 3)},
    )


def paired_volume_rows(
    patch_store: Path,
    volume_store: Path,
    n_patches: int,
    rounds: int,
    patch_row: Any,
    expand_on_cpu: bool = False,
) -> list[Row]:
    """(a2) and (v) (with ``expand_on_cpu``: (a3) and (v3)) in ``rounds`` alternating rounds
    (:func:`common.alternating_rows`), each reported as its median with every round kept.

    Args:
        patch_row: ``(store, n_patches) -> Row``, the (a2) (or (a3)) row of ``bench_streaming``.

    Returns:
        ``[patch row, volume row]``; the volume row keeps ``round_ratios_volume_over_patch``.
    """
    volume, patch = alternating_rows(
        lambda: volume_row(volume_store, n_patches, expand_on_cpu),
        lambda: patch_row(patch_store, n_patches),
        rounds,
        f"median of {rounds} rounds alternating with the other store",
        "round_ratios_volume_over_patch",
    )
    return [patch, volume]


def nnunet_row(data_dir: Path, workdir: Path, patch_size: tuple[int, ...], n_patches: int) -> Row:
    """(n): nnU-Net's loader over its preprocessed data of ``data_dir`` (preprocessed once, cached)."""
    try:
        import nnunet_baseline
    except ImportError as error:
        raise MissingPiece(f"benchmarks/nnunet_baseline.py is missing ({error})") from error
    require("nnunetv2")
    folder = nnunet_baseline.nnunet_preprocessed(data_dir, workdir, processes=WORKERS)
    rate, details = nnunet_baseline.nnunet_loader_rate(folder, patch_size, BATCH_SIZE, WORKERS, n_patches)
    return Row(
        ROW_NNUNET,
        rate,
        "patches/s",
        f"nnUNetDataLoader over its blosc2 data, batch {BATCH_SIZE}, {WORKERS} worker processes, "
        "oversample_foreground_percent 0.33, no augmentation",
        details,
    )
