"""Inference benchmark: seconds per 240x240x155 scan, brainnet's sliding window vs MONAI's, on CPU.

    python benchmarks/bench_inference.py [--quick] [--json FILE] [--workdir DIR] [--base-filters N]

brainnet runs through ``brainnet.predict.predict_case`` (the Python API behind ``brainnet predict``:
per-window standardization as the store was made, float16 rounding, the U-Net, sigmoid, Gaussian
blending, zeroing outside the brain, thresholding to labels). MONAI runs ``sliding_window_inference``
with the very same predictor (``brainnet.predict.window_predictor``) over the same brain bounding box
(``brainnet.predict.brain_box``, where predict_case slides) and the same window 160x160x16, overlap 0.5,
Gaussian blending (sigma 1/8), constant zero padding and windows per batch, followed by the same brain
mask and thresholding; each side finds the box inside its timed run, as predict_case does. Both sides
alternate ``--repeats`` times; the fastest run of each counts.

The U-Net is ``UNet3D(ModelConfig(base_filters=N))`` with random (seeded) weights; the course default
is N = 32 (16.3 M parameters), about 3 s per window on this 2-core CPU, i.e. ~4 min per scan per side,
so the CPU default is N = 8 (same depth and layout, 16x fewer FLOPs; ``--base-filters 32`` for the real
one). predict_case does not run the network on windows that hold no brain voxel (their voxels are zeroed
anyway); the row says how many of the case's windows that is, and a third row runs MONAI's side with
brainnet's sliding window instead (every window, brain zeroed after): the two implementations on the same
work. A second pair of rows uses a trivial
elementwise predictor (3 channels made by one addition), so that the windowing itself (gathering
windows, weighting, accumulating, dividing) is what is timed; a 1x1x1 convolution, tried first, spent
90% of the time in oneDNN and timed the convolution instead. Each of brainnet's runs there rebuilds its
weight-sum divisor (``predict_case`` keeps it between scans of one shape), as MONAI rebuilds its count
map.

Bars: brainnet / MONAI seconds <= 1.0; max |probability difference| <= 1e-5.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from common import (
    PATCH_SIZE,
    SCAN_SHAPE,
    Bar,
    Report,
    Row,
    base_parser,
    case_files,
    finish,
    measure_rows,
    require,
    setup_logging,
    synthetic_dataset,
)

OVERLAP = 0.5
SW_BATCH_SIZE = 4  # predict_case's default
SIGMA_SCALE = 0.125
TOLERANCE = 1e-5
SEED = 0
FULL = {"cases": 8, "base_filters": 8, "repeats": 3}
QUICK = {"cases": 3, "base_filters": 4, "repeats": 1}

ROW_BRAINNET = "brainnet predict_case"
ROW_MONAI = "MONAI sliding_window_inference"
ROW_BRAINNET_ALL = "brainnet sliding_window, every window"
ROW_DIFF = "max |p_brainnet - p_monai|"
ROW_LABELS = "labels equal"
ROW_BRAINNET_TRIVIAL = "brainnet sliding_window, trivial predictor"
ROW_MONAI_TRIVIAL = "MONAI sliding_window_inference, trivial predictor"


def _model(base_filters: int) -> Any:
    torch = require("torch")
    model_module = require("brainnet.model")
    torch.manual_seed(SEED)
    return model_module.UNet3D(model_module.ModelConfig(base_filters=base_filters)).eval()


def _fastest(runs: list[tuple[float, Any]]) -> tuple[float, Any]:
    return min(runs, key=lambda r: r[0])


def _timed(func: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = func()
    return time.perf_counter() - started, out


def compare_model(args: Any, sizes: dict[str, Any]) -> list[Row]:
    """Rows brainnet / MONAI / max diff / labels equal with the U-Net predictor."""
    torch = require("torch")
    np = require("numpy")
    predict = require("brainnet.predict")
    metrics = require("brainnet.metrics")
    inferers = require("monai.inferers")
    sliding = require("brainnet.infer", "sliding_window")
    read = require("brainprep.read")
    params = require("brainprep.params")

    data_dir = synthetic_dataset(args.workdir, sizes["cases"], fresh=args.fresh)
    files = read.discover_cases(data_dir).case(case_files(data_dir)[0][0])
    case = read.read_case(files)
    build_params = params.BuildParams(sampling=params.SamplingParams(patch_size=PATCH_SIZE))
    model = _model(args.base_filters or sizes["base_filters"])
    predictor = predict.window_predictor(model, build_params)
    # predict_case slides over the brain's bounding box and zeroes the probabilities outside the brain
    # (brain_only); MONAI's side gets the same box and the same post-processing, so both compute the same
    # thing (predict.brain_box: the box, the prepared volume cut to it, the brain in it)
    box = predict.brain_box(case.image, build_params, PATCH_SIZE)

    def brainnet_run() -> Any:
        return predict.predict_case(
            model, case, build_params, window=PATCH_SIZE, overlap=OVERLAP, batch_size=SW_BATCH_SIZE
        )

    def _masked(run_box: Any, probabilities: Any) -> Any:
        probabilities[:, ~run_box.mask] = 0.0
        probabilities = run_box.paste(probabilities)
        return metrics.probabilities_to_labels(probabilities), probabilities

    # each side finds the box in its timed run, as predict_case does: the same work from scan to labels
    def brainnet_every_window_run() -> Any:
        # MONAI's side with brainnet's sliding window: every window predicted, the brain zeroed after
        run_box = predict.brain_box(case.image, build_params, PATCH_SIZE)
        volume = torch.from_numpy(run_box.volume)
        return _masked(
            run_box,
            sliding(
                volume, predictor, PATCH_SIZE, OVERLAP, "gaussian", SW_BATCH_SIZE, sigma_scale=SIGMA_SCALE
            ).numpy(),
        )

    def monai_run() -> Any:
        run_box = predict.brain_box(case.image, build_params, PATCH_SIZE)
        volume = torch.from_numpy(run_box.volume)
        with torch.inference_mode():
            probabilities = inferers.sliding_window_inference(
                volume[None],
                roi_size=PATCH_SIZE,
                sw_batch_size=SW_BATCH_SIZE,
                predictor=predictor,
                overlap=OVERLAP,
                mode="gaussian",
                sigma_scale=SIGMA_SCALE,
                padding_mode="constant",
                cval=0.0,
            )[0].numpy()
        return _masked(run_box, probabilities)

    brainnet_runs, every_window_runs, monai_runs = [], [], []
    for _ in range(args.repeats or sizes["repeats"]):
        brainnet_runs.append(_timed(brainnet_run))
        every_window_runs.append(_timed(brainnet_every_window_run))
        monai_runs.append(_timed(monai_run))
    b_seconds, (b_labels, b_prob) = _fastest(brainnet_runs)
    a_seconds, (_, a_prob) = _fastest(every_window_runs)
    m_seconds, (m_labels, m_prob) = _fastest(monai_runs)
    shape = "x".join(map(str, case.shape))
    box_shape = "x".join(map(str, box.crop.shape))
    regions = require("brainnet.infer.sliding_window", "window_regions")(box.crop.shape, PATCH_SIZE, OVERLAP)
    empty = sum(not box.mask[region].any() for region in regions)
    b_prob, m_prob = np.asarray(b_prob), np.asarray(m_prob)
    diff = float(np.abs(b_prob - m_prob).max())
    equal = float((np.asarray(b_labels) == np.asarray(m_labels)).mean())
    return [
        Row(
            ROW_BRAINNET,
            b_seconds,
            "s/scan",
            f"{shape} scan, brain box {box_shape}; {empty} of its {len(regions)} windows hold no brain voxel "
            "and are not predicted",
            {"runs_s": [r[0] for r in brainnet_runs], "windows": len(regions), "windows_skipped": empty},
        ),
        Row(
            ROW_MONAI,
            m_seconds,
            "s/scan",
            "same predictor, same brain box and mask",
            {"runs_s": [r[0] for r in monai_runs]},
        ),
        Row(
            ROW_BRAINNET_ALL,
            a_seconds,
            "s/scan",
            f"MONAI's side with brainnet's sliding window; max |diff| to MONAI "
            f"{float(np.abs(np.asarray(a_prob) - m_prob).max()):.2g}",
            {"runs_s": [r[0] for r in every_window_runs]},
        ),
        Row(ROW_DIFF, diff, "", f"probabilities {tuple(b_prob.shape)}"),
        Row(ROW_LABELS, equal, "share", "voxels with the same thresholded label"),
    ]


def compare_overhead(args: Any, sizes: dict[str, Any]) -> list[Row]:
    """Rows brainnet / MONAI with a trivial predictor (``x[:, :3] + x[:, 3:]``): the windowing cost alone."""
    torch = require("torch")
    sliding = require("brainnet.infer", "sliding_window")
    divisor_cache = require("brainnet.infer.sliding_window", "_cached_weights")
    inferers = require("monai.inferers")
    volume = torch.randn((4, *SCAN_SHAPE), generator=torch.Generator().manual_seed(SEED))

    def predictor(x: Any) -> Any:
        with torch.inference_mode():
            return x[:, :3] + x[:, 3:]

    def brainnet_run() -> Any:
        divisor_cache.cache_clear()  # each run makes its weight sum, as MONAI's makes its count map
        return sliding(volume, predictor, PATCH_SIZE, OVERLAP, "gaussian", SW_BATCH_SIZE)

    def monai_run() -> Any:
        with torch.inference_mode():
            return inferers.sliding_window_inference(
                volume[None], PATCH_SIZE, SW_BATCH_SIZE, predictor, OVERLAP, mode="gaussian"
            )[0]

    repeats = max(5, args.repeats or sizes["repeats"])
    brainnet_runs, monai_runs = [], []
    for _ in range(repeats):
        brainnet_runs.append(_timed(brainnet_run))
        monai_runs.append(_timed(monai_run))
    b_seconds, b_out = _fastest(brainnet_runs)
    m_seconds, m_out = _fastest(monai_runs)
    diff = float((b_out - m_out).abs().max())
    return [
        Row(ROW_BRAINNET_TRIVIAL, b_seconds, "s/scan", f"fastest of {repeats}; max |diff| {diff:.2g}"),
        Row(ROW_MONAI_TRIVIAL, m_seconds, "s/scan", f"fastest of {repeats}"),
    ]


def run(args: Any) -> Report:
    sizes = QUICK if args.quick else FULL
    torch = require("torch")
    base = args.base_filters or sizes["base_filters"]
    report = Report(
        "Inference: seconds per 240x240x155 scan, brainnet vs MONAI sliding window (CPU)",
        settings={
            "model": f"UNet3D depth 4, base_filters {base}" + (" (course default)" if base == 32 else ""),
            "window": "x".join(map(str, PATCH_SIZE)),
            "overlap": OVERLAP,
            "blend": "gaussian",
            "sw_batch_size": SW_BATCH_SIZE,
            "repeats": args.repeats or sizes["repeats"],
            "torch_threads": torch.get_num_threads(),
            "quick": args.quick,
        },
    )
    print(report.title, flush=True)

    report.rows += measure_rows(
        [ROW_BRAINNET, ROW_MONAI, ROW_BRAINNET_ALL, ROW_DIFF, ROW_LABELS],
        "s/scan",
        lambda: compare_model(args, sizes),
    )
    report.rows += measure_rows(
        [ROW_BRAINNET_TRIVIAL, ROW_MONAI_TRIVIAL], "s/scan", lambda: compare_overhead(args, sizes)
    )
    report.bars = [
        Bar("brainnet / MONAI, U-Net", report.value(ROW_BRAINNET), report.value(ROW_MONAI), "<=", 1.0),
        Bar("max |probability difference|", report.value(ROW_DIFF), None, "<=", TOLERANCE, unit=""),
    ]
    # information, not bars: the same work on both sides, so parity within the machine's noise is expected
    for name, row_b, row_m in (
        ("brainnet every window / MONAI, U-Net", ROW_BRAINNET_ALL, ROW_MONAI),
        ("brainnet / MONAI, trivial predictor (windowing alone)", ROW_BRAINNET_TRIVIAL, ROW_MONAI_TRIVIAL),
    ):
        if report.value(row_b) and report.value(row_m):
            report.notes.append(f"{name}: {report.value(row_b) / report.value(row_m):.3f}x")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--base-filters", type=int, default=None, help="U-Net base filters (CPU default 8; course 32)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="alternating runs per side (fastest counts)"
    )
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return finish(run(args), args.json)


if __name__ == "__main__":
    sys.exit(main())
