"""GPU benchmark: training patches/s of the course U-Net with mixed precision, fed from a Zarr patch store and
a Zarr volume store.

    python benchmarks/bench_gpu.py [--quick] [--json FILE] [--workdir DIR] [--batch-size B] [--workers W]
    python benchmarks/bench_gpu.py --cpu-smoke     # no GPU: a tiny run of the same code on the CPU

Needs a CUDA device; without one it prints ``no CUDA device: skipped`` and exits 0 (``--cpu-smoke`` runs
a tiny model for a few steps instead, to check the harness, not to measure anything).

Rows, for each store kind (``patches``: the 20-patch store; ``volumes``: fresh windows, with the context
the augmentation's rotation and scaling read):
  training patches/s   ``UNet3D(ModelConfig())`` (course: depth 4, base 32, 160x160x16), Adam, soft Dice
                       loss (``brainnet.train.loop.compute_loss``), autocast bfloat16 (float16 + GradScaler
                       where the GPU has no bfloat16), batches from ``brainnet train``'s own stream
                       (``brainnet.train.loop.training_stream``: its sampler, its loader backend for the
                       store, pinned memory) over the store of the synthetic cases; warm-up steps excluded
  data wait share      time the loop spends in the stream's ``next`` + the host-to-device copy and the
                       on-device expansion (a volume store's windows are standardized there), without
                       the augmentation, over the whole step time (each step ends with a device sync)
  augmentation share   time of ``brainnet train``'s augmenter (``--augment``, default ``nnunet``; keyed by
                       the step) on each batch on the device, between two syncs, over the whole step time
  peak GPU memory      ``torch.cuda.max_memory_allocated`` over the training steps
and once:
  predict s/scan       ``brainnet.predict.predict_case`` of one 240x240x155 scan on the GPU with AMP

Bars: data wait share < 10 %; augmentation share <= 10 % (the issue asks it at ``--batch-size 2``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import numpy as np
from common import (
    PATCH_SIZE,
    Bar,
    Report,
    Row,
    base_parser,
    case_files,
    finish,
    measure_rows,
    patch_store,
    require,
    setup_logging,
    synthetic_dataset,
)

SEED = 0
LEARNING_RATE = 1e-4
FULL = {"cases": 8, "patches_per_case": 20, "warmup_steps": 10, "steps": 60, "predict_runs": 2}
QUICK = {"cases": 3, "patches_per_case": 8, "warmup_steps": 5, "steps": 20, "predict_runs": 1}
SMOKE = {"cases": 3, "patches_per_case": 8, "warmup_steps": 1, "steps": 2, "predict_runs": 1}
SMOKE_BASE_FILTERS = 4
SMOKE_SCAN = (160, 160, 32)  # a crop of the scan: the smoke run checks the code path, not the speed

ROW_TRAIN = "training patches/s"
ROW_STEP = "step time"
ROW_WAIT = "data wait share"
ROW_PREDICT = "predict s/scan"
ROW_MEMORY = "peak GPU memory"
ROW_AUGMENT = "augmentation share"
#: the store kinds trained from, one after the other (issue 12: both kinds at the course's patch and model)
KINDS = ("patches", "volumes")
KIND_NAMES = {"patches": "patch store", "volumes": "volume store"}


def _sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _training_config(args: Any, device: Any) -> Any:
    """The ``TrainConfig`` both kinds are read with: the CLI's defaults but batch, workers, augmentation."""
    train_config = require("brainnet.train.config")
    augment_module = require("brainnet.augment")
    return train_config.TrainConfig(
        batch_size=args.batch_size,
        workers=args.workers,
        seed=SEED,
        device=device.type,
        augment=augment_module.augment_preset(args.augment),
    )


def train_rows(args: Any, sizes: dict[str, Any], device: Any, smoke: bool, kind: str) -> list[Row]:
    """Rows training patches/s, step time, data wait share, augmentation share, peak GPU memory, training
    from a Zarr store of ``kind`` (``patches`` / ``volumes``) read as ``brainnet train`` reads it."""
    torch = require("torch")
    data = require("brainnet.data")
    model_module = require("brainnet.model")
    loop = require("brainnet.train.loop")
    open_store = require("brainprep.store.reader", "open_store")

    data_dir = synthetic_dataset(args.workdir, sizes["cases"], fresh=args.fresh)
    path = patch_store(args.workdir, data_dir, "zarr", sizes["patches_per_case"], fresh=args.fresh, kind=kind)
    store = open_store(path)
    config = _training_config(args, device)
    # brainnet train's own stream (sampler, loader backend, windows with context on a volume store) and
    # augmenter (the patch size out of those windows), keyed by the step as in training
    stream = loop.training_stream(store, config, device=device)
    augmenter = loop.training_augmenter(store, config)

    torch.manual_seed(SEED)
    model_config = (
        model_module.ModelConfig(base_filters=SMOKE_BASE_FILTERS) if smoke else model_module.ModelConfig()
    )
    model = model_module.UNet3D(model_config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    on_cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if (not on_cuda or torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda") if on_cuda and amp_dtype == torch.float16 else None
    if on_cuda:
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    augment_seconds: list[float] = []

    def timed_augment(step: int) -> Any:
        """The training loop's augmentation of ``step``, timed between two device syncs."""
        augment = loop.step_augment(augmenter, SEED, 0, step)
        if augment is None:
            return None

        def run(image: Any, label: Any) -> Any:
            _sync(torch, device)
            started = time.perf_counter()
            out = augment(image, label)
            _sync(torch, device)
            augment_seconds.append(time.perf_counter() - started)
            return out

        return run

    steps, warmup = sizes["steps"], sizes["warmup_steps"]
    waits, totals, augments, patches = [], [], [], 0
    for step in range(warmup + steps):
        started = time.perf_counter()
        augment_seconds.append(0.0)
        image, target = data.to_training_batch(stream.next(), device, timed_augment(step), store.spec)
        _sync(torch, device)
        fetched = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=on_cuda):
            logits = model.forward_logits(image)
        loss = loop.compute_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        _sync(torch, device)
        ended = time.perf_counter()
        if step >= warmup:
            augments.append(augment_seconds[-1])
            waits.append(fetched - started - augment_seconds[-1])
            totals.append(ended - started)
            patches += int(image.shape[0])
    store.close()
    return _train_rows(args, kind, model, amp_dtype, device, patches, waits, totals, augments)


def _train_rows(args, kind, model, amp_dtype, device, patches, waits, totals, augments) -> list[Row]:
    torch = require("torch")
    seconds, steps = sum(totals), len(totals)
    params = sum(p.numel() for p in model.parameters())
    on_cuda = device.type == "cuda"
    rows = [
        Row(
            row_name(ROW_TRAIN, kind),
            patches / seconds,
            "patches/s",
            f"{params / 1e6:.1f} M parameters, batch {args.batch_size}, {args.workers} workers, "
            f"{str(amp_dtype).removeprefix('torch.')} autocast" + (" (off on CPU)" if not on_cuda else ""),
            {"patches": patches, "seconds": seconds, "steps": steps},
        ),
        Row(
            row_name(ROW_STEP, kind),
            1000 * seconds / steps,
            "ms",
            f"median {1000 * float(np.median(totals)):.1f} ms",
        ),
        Row(
            row_name(ROW_WAIT, kind),
            sum(waits) / seconds,
            "share",
            f"median wait {1000 * float(np.median(waits)):.1f} ms per step",
            {"wait_s": sum(waits)},
        ),
        Row(
            row_name(ROW_AUGMENT, kind),
            sum(augments) / seconds,
            "share",
            f"--augment {args.augment} on the batch on the device: median "
            f"{1000 * float(np.median(augments)):.1f} ms per step",
            {"augment_s": sum(augments)},
        ),
    ]
    memory = torch.cuda.max_memory_allocated(device) / 1e9 if on_cuda else None
    rows.append(Row(row_name(ROW_MEMORY, kind), memory, "GB", "training" if on_cuda else "no CUDA device"))
    return rows


def row_name(row: str, kind: str) -> str:
    return f"{row} ({KIND_NAMES[kind]})"


def predict_rows(args: Any, sizes: dict[str, Any], device: Any, smoke: bool) -> list[Row]:
    """Row predict s/scan: predict_case of one synthetic scan on ``device``."""
    torch = require("torch")
    predict = require("brainnet.predict")
    model_module = require("brainnet.model")
    read = require("brainprep.read")
    params = require("brainprep.params")

    data_dir = synthetic_dataset(args.workdir, sizes["cases"], fresh=args.fresh)
    case = read.read_case(read.discover_cases(data_dir).case(case_files(data_dir)[0][0]))
    if smoke:
        crop = tuple(slice(0, s) for s in SMOKE_SCAN)
        label = case.label[crop] if case.label is not None else None
        case = dataclasses.replace(
            case, image=np.ascontiguousarray(case.image[(slice(None), *crop)]), label=label
        )
    torch.manual_seed(SEED)
    config = (
        model_module.ModelConfig(base_filters=SMOKE_BASE_FILTERS) if smoke else model_module.ModelConfig()
    )
    model = model_module.UNet3D(config).to(device).eval()
    build_params = params.BuildParams(sampling=params.SamplingParams(patch_size=PATCH_SIZE))

    def once() -> float:
        _sync(torch, device)
        started = time.perf_counter()
        predict.predict_case(model, case, build_params, window=PATCH_SIZE, device=device, amp=True)
        _sync(torch, device)
        return time.perf_counter() - started

    if not smoke:
        once()  # warm-up: cuDNN autotuning, allocator
    runs = [once() for _ in range(sizes["predict_runs"])]
    shape = "x".join(map(str, case.shape))
    return [Row(ROW_PREDICT, min(runs), "s/scan", f"{shape} scan, fastest of {len(runs)}", {"runs_s": runs})]


def run(args: Any) -> Report | None:
    torch = require("torch")
    has_cuda = torch.cuda.is_available()
    if not has_cuda and not args.cpu_smoke:
        return None
    smoke = not has_cuda
    sizes = SMOKE if smoke else (QUICK if args.quick else FULL)
    device = torch.device("cuda" if has_cuda else "cpu")
    report = Report(
        "GPU: mixed-precision training fed from Zarr patch and volume stores, and prediction"
        + (" (CPU SMOKE RUN: no numbers to keep)" if smoke else ""),
        settings={
            "device": torch.cuda.get_device_name(device) if has_cuda else "cpu (smoke)",
            "cases": sizes["cases"],
            "batch_size": args.batch_size,
            "workers": args.workers,
            "steps": sizes["steps"],
            "quick": args.quick,
        },
    )
    print(report.title, flush=True)
    for kind in KINDS:
        report.rows += measure_rows(
            [row_name(r, kind) for r in (ROW_TRAIN, ROW_STEP, ROW_WAIT, ROW_AUGMENT, ROW_MEMORY)],
            "patches/s",
            lambda kind=kind: train_rows(args, sizes, device, smoke, kind),
        )
    report.rows += measure_rows([ROW_PREDICT], "s/scan", lambda: predict_rows(args, sizes, device, smoke))
    for kind in KINDS:
        wait, augment = report.value(row_name(ROW_WAIT, kind)), report.value(row_name(ROW_AUGMENT, kind))
        report.bars += [
            Bar(f"data wait share of step time, {KIND_NAMES[kind]}", wait, None, "<", 0.10, unit=""),
            Bar(f"augmentation share of step time, {KIND_NAMES[kind]}", augment, None, "<=", 0.10, unit=""),
        ]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-size",
        type=int,
        default=2,
        help="patches per step (2: issue 14's augmentation bar; the course: 3)",
    )
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader worker processes"
    )
    parser.add_argument(
        "--augment", default="nnunet", help="augmentation preset applied on the device (none, flips, nnunet)"
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="without CUDA, run a tiny CPU version")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    report = run(args)
    if report is None:
        print("bench_gpu: no CUDA device: skipped (run with --cpu-smoke to exercise the code on the CPU)")
        return 0
    return finish(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
