"""Augmentation benchmark: the nnunet preset, brainnet on 2 CPU threads vs nnU-Net on 2 processes.

    python benchmarks/bench_augment.py [--quick] [--json FILE] [--batch-size B] [--rounds R]

Two patch sizes: the course's 160x160x16 and nnU-Net's BraTS 112x160x128, each in batches of
``--batch-size`` (2) standardized-like images (4 channels, N(0, 1) with a zero background) and label maps.

Rows per patch size:
  brainnet            samples/s of ``BatchAugment(augment_preset("nnunet"))`` on whole batches, in this
                      process with ``torch.set_num_threads(2)`` (the row's note reads the thread count
                      back), a new key (new draws) per batch, as training calls it: on a fresh batch it
                      may overwrite (``inplace=True``; the copies are made outside the timer,
                      :data:`IN_FLIGHT` at a time)
  brainnet, tensor    the same on the tensor path alone (``brainnet.augment.cpu_kernels.ENABLED`` off:
  path                no numba kernels for the resampling, the noise and the upsampling), in the same
                      rounds: what the kernels bring
  nnU-Net             samples/s of ``nnUNetTrainer.get_training_transforms`` (nnunetv2, the Compose of
                      batchgeneratorsv2 transforms nnU-Net trains with: its probabilities, its dummy-2D
                      rule for the anisotropic patch) on one sample at a time, in 2 worker processes with 1
                      torch thread each, started together, each warmed up to its steady state first
                      (its blur's FFT-or-direct cache filled, :func:`prime_blur`, then 4 samples), as
                      its training runs them: each on a fresh sample (copies made before the timer
                      starts, :data:`IN_FLIGHT` at a time; runs before 2026-12-04 cloned inside
                      the timer on both sides);
                      samples of both / the slower one's seconds.
                      Time to ship samples between processes is not counted (nnU-Net would pay it too)
  <transform>, both   ms per sample each transform costs at the preset's probabilities: nnU-Net's from a
                      timer around each transform of its Compose; brainnet's from batches on which only
                      that transform fires (on every sample), times its firing probability, per sample
Rounds alternate brainnet and nnU-Net; the median rate of each side counts.

Bar: brainnet / nnU-Net samples/s >= 3 on each patch size.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import statistics
import sys
import time
from typing import Any

import numpy as np
from common import Bar, Report, Row, base_parser, finish, measure_rows, require, setup_logging

SHAPES = {"course": (160, 160, 16), "nnU-Net BraTS": (112, 160, 128)}
CHANNELS = 4
THREADS = 2
#: samples per nnU-Net worker and batches for brainnet, per round, by patch size. Each transform fires
#: on a sample with probability 0.1-0.3 and nnU-Net's blur of a BraTS patch alone costs more than the
#: rest together, so a round of 6 BraTS samples gave ratios from 2.5x to 4.0x between two runs on an
#: idle machine (2026-12-03): 24 per round make a round's mix of transforms close to the preset's.
FULL = {"course": {"samples": 96, "rounds": 5}, "nnU-Net BraTS": {"samples": 24, "rounds": 5}}
QUICK = {"course": {"samples": 4, "rounds": 1}, "nnU-Net BraTS": {"samples": 1, "rounds": 1}}
#: brainnet's blocks, their firing probability per sample in the preset (spatial: rotation or scaling)
#: fresh inputs made at a time (outside the timer) on either side: a few batches in flight, as in training
#: (all of a round's at once, 1.3 GB for the course patch, had made both sides' rates swing by 1.5x)
IN_FLIGHT = 8
#: nnU-Net samples per worker before its timer starts (after :func:`prime_blur`)
WARM_UP_SAMPLES = 4
BLOCKS = ("spatial", "noise", "blur", "brightness", "contrast", "low_resolution", "gamma_inverted", "gamma")


def make_batch(torch: Any, batch: int, shape: tuple[int, ...], seed: int) -> tuple[Any, Any]:
    """float32 (B, 4, *shape) N(0, 1) inside an ellipsoid 'brain', 0 outside; uint8 labels 0..3 in blobs."""
    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, s) for s in shape]
    grid = torch.meshgrid(*axes, indexing="ij")
    brain = sum(a**2 for a in grid) < 0.9
    image = torch.randn(batch, CHANNELS, *shape, generator=g) * brain
    label = torch.zeros(batch, *shape, dtype=torch.uint8)
    for value, radius in ((1, 0.5), (2, 0.3), (3, 0.15)):
        label[:, sum(a**2 for a in grid) < radius**2] = value
    return image, label


# -------------------------------------------------------------------------------------------- nnU-Net
_TRANSFORMS: dict[tuple[int, ...], Any] = {}


def _nnunet_transforms(shape: tuple[int, ...]) -> Any:
    """nnU-Net's training Compose for ``shape``, each transform wrapped in a timer."""
    if shape in _TRANSFORMS:
        return _TRANSFORMS[shape]
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    # nnU-Net orders axes by spacing, the coarse one first: brainnet's short Z axis goes first
    patch = tuple(shape[::-1]) if shape[2] < min(shape[:2]) else tuple(shape)
    dummy_2d = max(patch) / patch[0] > ANISO_THRESHOLD  # configure_rotation_dummyDA_mirroring_...
    angle = np.pi if dummy_2d else np.pi / 6
    compose = nnUNetTrainer.get_training_transforms(
        patch, (-angle, angle), None, (0, 1, 2), dummy_2d, None, False, None, None, None
    )
    timers: dict[str, float] = {}

    class Timed:
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            wrapped = getattr(inner, "transform", inner)
            self.name = type(wrapped).__name__

        def __call__(self, **data: Any) -> Any:
            started = time.perf_counter()
            out = self.inner(**data)
            timers[self.name] = timers.get(self.name, 0.0) + time.perf_counter() - started
            return out

    compose.transforms = [Timed(t) for t in compose.transforms]
    _TRANSFORMS[shape] = (compose, timers, patch)
    return _TRANSFORMS[shape]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def timed_on_fresh(count: int, make: Any, call: Any) -> float:
    """Seconds ``call(k, *make())`` takes over ``count`` fresh inputs, made :data:`IN_FLIGHT` at a time
    outside the timer (as a loader hands inputs over, a few in flight)."""
    elapsed = 0.0
    for first in range(0, count, IN_FLIGHT):
        fresh = [make() for _ in range(min(IN_FLIGHT, count - first))]
        started = time.perf_counter()
        for k, inputs in enumerate(fresh, start=first):
            call(k, *inputs)
        elapsed += time.perf_counter() - started
    return elapsed


def prime_blur(compose: Any, image: Any) -> None:
    """Fill the FFT-or-direct choice cache of nnU-Net's blur for every axis and kernel size it can draw.

    nnU-Net builds its blur with ``benchmark=True``: the first blur of an (axis length, kernel size) pair
    times 9 direct and 9 FFT convolutions before it blurs. That is paid once per worker over a training of
    thousands of samples; in a round of a few samples it had dominated nnU-Net's time (a BraTS blur
    averaged 313 ms per sample over 6 samples, 31 over 24). Steady state is what training sees.
    """
    for timed in compose.transforms:
        blur = getattr(timed.inner, "transform", timed.inner)
        if type(blur).__name__ != "GaussianBlurTransform" or not blur.benchmark:
            continue
        low, high = blur.blur_sigma
        for axis in range(image.ndim - 1):
            for sigma in np.linspace(low, high, 11):  # every kernel size the sigma range gives
                blur._benchmark_wrapper(image[:1].clone(), float(sigma), axis)


def nnunet_task(shape: tuple[int, ...], samples: int, seed: int) -> tuple[float, dict[str, float]]:
    """In a worker: time ``samples`` samples through nnU-Net's transforms, warmed up to its steady state."""
    import torch

    compose, timers, patch = _nnunet_transforms(shape)
    np.random.seed(seed)
    torch.manual_seed(seed)
    image, label = make_batch(torch, 1, patch, seed)
    image, segmentation = image[0], label.to(torch.int16)
    prime_blur(compose, image)
    for _ in range(WARM_UP_SAMPLES):
        compose(image=image.clone(), segmentation=segmentation.clone())
    timers.clear()
    elapsed = timed_on_fresh(
        samples,
        lambda: (image.clone(), segmentation.clone()),
        lambda _, sample, labels: compose(image=sample, segmentation=labels),
    )
    return elapsed, {k: 1000 * v / samples for k, v in timers.items()}


def nnunet_round(pool: Any, shape: tuple[int, ...], samples: int, seed: int) -> tuple[float, dict]:
    futures = [pool.submit(nnunet_task, shape, samples, seed + k) for k in range(THREADS)]
    results = [f.result() for f in futures]
    rate = THREADS * samples / max(r[0] for r in results)
    names = results[0][1]
    return rate, {k: statistics.mean(r[1].get(k, 0.0) for r in results) for k in names}


# ------------------------------------------------------------------------------------------- brainnet
def brainnet_rate(torch: Any, augment: Any, image: Any, label: Any, batches: int, step: int) -> float:
    """Samples/s of ``augment`` on ``batches`` fresh copies of the batch, each handed over in place (as
    the training loop hands over each batch it converts)."""
    augment(image.clone(), label.clone(), key=(0, 0, step), inplace=True)  # warm-up
    elapsed = timed_on_fresh(
        batches,
        lambda: (image.clone(), label.clone()),
        lambda k, images, labels: augment(images, labels, key=(0, 0, step + 1 + k), inplace=True),
    )
    return batches * image.shape[0] / elapsed


def brainnet_costs(torch: Any, image: Any, label: Any, batches: int) -> dict[str, float]:
    """ms per sample of each block at the preset's probability (timed firing on every sample)."""
    augment_module = require("brainnet.augment")
    preset = augment_module.augment_preset("nnunet")
    silent = {f"{b}.p": 0.0 for b in BLOCKS if b != "spatial"}
    silent |= {"spatial.p_rotation": 0.0, "spatial.p_scaling": 0.0, "mirror.axes": ()}
    costs = {}
    for block in (*BLOCKS, "mirror"):
        if block == "spatial":
            only = {"spatial.p_rotation": 1.0}
            fire = 1 - (1 - preset.spatial.p_rotation) * (1 - preset.spatial.p_scaling)
        elif block == "mirror":
            only, fire = {"mirror.axes": (0, 1, 2)}, 1.0
        else:
            only, fire = {f"{block}.p": 1.0}, getattr(preset, block).p
        config = augment_module.with_overrides(preset, {**silent, **only})
        rate = brainnet_rate(torch, augment_module.BatchAugment(config), image, label, batches, 10_000)
        costs[block] = fire * 1000 / rate
    return costs


NNUNET_NAMES = {
    "spatial": "SpatialTransform",
    "noise": "GaussianNoiseTransform",
    "blur": "GaussianBlurTransform",
    "brightness": "MultiplicativeBrightnessTransform",
    "contrast": "ContrastTransform",
    "low_resolution": "SimulateLowResolutionTransform",
    "gamma_inverted": "GammaTransform",  # both gammas share a class name in nnU-Net's Compose
    "mirror": "MirrorTransform",
}


def size_rows(args: Any, label_name: str, sizes: dict[str, int], pool: Any) -> list[Row]:
    torch = require("torch")
    augment_module = require("brainnet.augment")
    shape = SHAPES[label_name]
    image, label = make_batch(torch, args.batch_size, shape, 0)
    augment = augment_module.BatchAugment(augment_module.augment_preset("nnunet"))
    batches = max(1, sizes["samples"] * THREADS // args.batch_size)
    kernels = require("brainnet.augment.cpu_kernels")
    enabled = kernels.ENABLED
    ours, tensor_path, theirs, their_costs = [], [], [], []
    for r in range(args.rounds or sizes["rounds"]):
        ours.append(brainnet_rate(torch, augment, image, label, batches, 1000 * r))
        rate, costs = nnunet_round(pool, shape, sizes["samples"], r)
        theirs.append(rate)
        their_costs.append(costs)
        kernels.ENABLED = False
        try:
            tensor_path.append(brainnet_rate(torch, augment, image, label, batches, 1000 * r))
        finally:
            kernels.ENABLED = enabled
        print(
            f"    round {r + 1}: brainnet {ours[-1]:.2f} (tensor path {tensor_path[-1]:.2f}), "
            f"nnU-Net {rate:.2f} samples/s",
            flush=True,
        )
    our_costs = brainnet_costs(torch, image, label, max(1, batches // 2))
    shape_text = "x".join(map(str, shape))
    rows = [
        Row(
            f"{label_name} {shape_text}: brainnet",
            statistics.median(ours),
            "samples/s",
            f"batch {args.batch_size}, {torch.get_num_threads()} torch threads, median of {len(ours)} rounds",
            {"rounds": ours},
        ),
        Row(
            f"{label_name} {shape_text}: brainnet, tensor path",
            statistics.median(tensor_path),
            "samples/s",
            f"numba kernels {'off' if enabled else 'unavailable'} (cpu_kernels.ENABLED), same rounds",
            {"rounds": tensor_path},
        ),
        Row(
            f"{label_name} {shape_text}: nnU-Net",
            statistics.median(theirs),
            "samples/s",
            f"{THREADS} processes x 1 thread, {sizes['samples']} samples each per round",
            {"rounds": theirs},
        ),
    ]
    for block in (*BLOCKS, "mirror"):
        name = NNUNET_NAMES.get(block)
        theirs_ms = statistics.median(c.get(name, float("nan")) for c in their_costs) if name else None
        if block == "gamma_inverted":
            note = f"nnU-Net: both GammaTransforms {theirs_ms:.1f} ms/sample"
        elif block == "gamma":
            note = "nnU-Net: in the row above"
        else:
            note = f"nnU-Net {theirs_ms:.1f} ms/sample"
        rows.append(Row(f"  {block}", our_costs[block], "ms/sample", f"brainnet; {note}"))
    return rows


def run(args: Any) -> Report:
    torch = require("torch")
    require("nnunetv2")
    from importlib.metadata import version

    torch.set_num_threads(THREADS)
    plan = QUICK if args.quick else FULL
    report = Report(
        "Augmentation: nnU-Net's default transforms, brainnet batched vs nnU-Net per sample (CPU)",
        settings={
            "batch_size": args.batch_size,
            "threads_or_processes": THREADS,
            "nnunetv2": version("nnunetv2"),
            "batchgeneratorsv2": version("batchgeneratorsv2"),
            "torch": torch.__version__,
            "quick": args.quick,
        },
    )
    print(report.title, flush=True)
    context = multiprocessing.get_context("spawn")
    executor = concurrent.futures.ProcessPoolExecutor
    with executor(THREADS, mp_context=context, initializer=_worker_init) as pool:
        for label_name, sizes in plan.items():
            shape_text = "x".join(map(str, SHAPES[label_name]))
            names = [f"{label_name} {shape_text}: brainnet", f"{label_name} {shape_text}: nnU-Net"]
            rows = measure_rows(names, "samples/s", lambda n=label_name, s=sizes: size_rows(args, n, s, pool))
            report.rows += rows
            report.bars.append(
                Bar(
                    f"{label_name}: brainnet / nnU-Net samples/s",
                    report.value(names[0]),
                    report.value(names[1]),
                    ">=",
                    3.0,
                )
            )
    report.notes.append(
        "per-transform rows: ms per sample at the nnunet preset's probabilities (brainnet: cost when firing "
        "on every sample of a batch x firing probability; nnU-Net: timer around each transform, mean per "
        "sample)"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2, help="samples per brainnet batch")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3, quick 1)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return finish(run(args), args.json)


if __name__ == "__main__":
    sys.exit(main())
