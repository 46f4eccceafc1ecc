"""The end-to-end demo: synthetic cases -> check -> pictures -> patch store -> training -> evaluation ->
whole-scan prediction, on the embedded default dataset (the built-in synthetic generator, seeded).

Run it with ``brainnet demo OUT_DIR`` (or ``bash scripts/demo.sh``). The defaults are sized for a 2-core CPU
in under 10 minutes: smaller scans and patches and a slimmer U-Net than the course's, and a larger learning
rate than the course's 1e-5 so that a few hundred steps learn something visible. Every stage is the real
one; only sizes differ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainprep.config import Params

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoParams(Params):
    """Sizes of the demo run.

    Attributes:
        n_cases: synthetic cases.
        small_tumour_every: every k-th case has a tumour too small for any patch (0 = none).
        shape: scan shape (X, Y, Z); real BraTS scans are 240x240x155.
        patch_size: store patch and sliding-window size (the course: 160x160x16).
        patches_per_case: K patches per case.
        base_filters, depth: the U-Net (the course: 32, 4).
        epochs, steps_per_epoch, batch_size, lr: training.
        seed: seeds the data, the split, the sampling and the training.
    """

    n_cases: int = 10
    small_tumour_every: int = 4
    shape: tuple[int, int, int] = (128, 128, 64)
    patch_size: tuple[int, int, int] = (64, 64, 16)
    patches_per_case: int = 16
    base_filters: int = 8
    depth: int = 3
    epochs: int = 6
    steps_per_epoch: int = 40
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, what it measured, and how long each stage took."""

    out_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    val_dice: dict[str, float] = field(default_factory=dict)
    scan_metrics: dict[str, dict[str, float]] | None = None


def _timed(result: DemoResult, name: str, step: Callable[[], Any], echo: Callable[[str], None]) -> Any:
    echo(f"[{len(result.seconds) + 1}] {name} ...")
    start = time.perf_counter()
    value = step()
    result.seconds[name] = time.perf_counter() - start
    echo(f"    done in {result.seconds[name]:.1f} s")
    return value


def run_demo(
    out_dir: Path | str,
    params: DemoParams | None = None,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = logger.info,
) -> DemoResult:
    """Run the whole pipeline into ``out_dir`` (which must not hold an earlier demo).

    Returns:
        The output paths, stage timings, validation Dice per class and whole-scan metrics.
    """
    from brainnet.evaluate import evaluate_store, write_evaluation
    from brainnet.model import ModelConfig
    from brainnet.predict import segment_case
    from brainnet.train import TrainConfig, load_model, train
    from brainprep import discover_cases, read_case
    from brainprep.builder import build_patches
    from brainprep.check import CheckParams, check_dataset, format_table
    from brainprep.params import BuildParams, SamplingParams
    from brainprep.show import write_gif, write_planes_png
    from brainprep.stats import plot_stats, store_stats
    from brainprep.store import open_store
    from brainprep.synth import SynthParams, write_synthetic_dataset

    params = params or DemoParams()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out)
    data_dir = out / "data"
    store_path = out / "patches.zarr"
    run_dir = out / "run"

    synth = SynthParams(
        n_cases=params.n_cases,
        shape=params.shape,
        seed=params.seed,
        small_tumour_every=params.small_tumour_every,
    )
    _timed(result, "synthesize cases", lambda: write_synthetic_dataset(data_dir, synth, progress), echo)
    result.outputs["dataset"] = data_dir

    check_params = CheckParams(patch_size=params.patch_size)
    report = _timed(
        result, "check cases", lambda: check_dataset(data_dir, check_params, progress=progress), echo
    )
    echo(format_table(report))
    (out / "check.txt").write_text(format_table(report) + "\n")
    result.outputs["check table"] = out / "check.txt"

    dataset = discover_cases(data_dir)
    first = read_case(dataset.cases[0])
    pictures = out / "pictures"

    def draw_case() -> None:
        write_planes_png(first, pictures / f"{first.case_id}.png")
        write_gif(first, pictures / f"{first.case_id}.gif", step=2)

    _timed(result, "draw a case", draw_case, echo)
    result.outputs["case picture"] = pictures / f"{first.case_id}.png"
    result.outputs["case gif"] = pictures / f"{first.case_id}.gif"

    build = BuildParams(
        sampling=SamplingParams(patch_size=params.patch_size, patches_per_case=params.patches_per_case),
        seed=params.seed,
    )
    summary = _timed(
        result,
        "build patch store",
        lambda: build_patches(data_dir, store_path, build, workers=2, progress=progress),
        echo,
    )
    echo(f"    {summary.line()}")
    result.outputs["patch store"] = store_path
    stats = store_stats(store_path)
    plot_stats(stats, pictures / "store-stats.png", title=store_path.name)
    result.outputs["store stats picture"] = pictures / "store-stats.png"

    train_config = TrainConfig(
        epochs=params.epochs,
        steps_per_epoch=params.steps_per_epoch,
        batch_size=params.batch_size,
        lr=params.lr,
        seed=params.seed,
        device="auto",
    )
    model_config = ModelConfig(base_filters=params.base_filters, depth=params.depth)
    trained = _timed(
        result,
        "train the U-Net",
        lambda: train(store_path, run_dir, train_config, model_config, progress=progress),
        echo,
    )
    result.outputs["checkpoint"] = trained.best_checkpoint or trained.last_checkpoint
    result.outputs["training log"] = run_dir / "log.csv"

    loaded = load_model(result.outputs["checkpoint"])
    with open_store(store_path) as store:
        evaluation = _timed(
            result,
            "evaluate on the validation split",
            lambda: evaluate_store(loaded.model, store, "val", progress=progress),
            echo,
        )
    written = write_evaluation(evaluation, out / "evaluation")
    result.outputs.update({f"evaluation {kind}": path for kind, path in written.items()})
    result.val_dice = {name: values["dice"] for name, values in evaluation.overall.items()}

    # Segment the validation case with the largest tumour; the small-tumour cases hold no training patch.
    with open_store(store_path) as store:
        val_ids = {c["case_id"] for c in store.cases if c["split"] == "val"}
    tumour = {r.case_id: sum(r.tumour_voxels or ()) for r in report.cases if r.case_id in val_ids}
    scan = dataset.case(max(tumour, key=tumour.__getitem__))
    prediction = _timed(
        result,
        f"segment the whole scan {scan.case_id}",
        lambda: segment_case(
            loaded,
            scan,
            out / "predictions" / f"{scan.case_id}.nii.gz",
            png=pictures / f"{scan.case_id}-prediction.png",
            progress=progress,
        ),
        echo,
    )
    result.scan_metrics = prediction.metrics
    result.outputs["prediction"] = prediction.output
    if prediction.png is not None:
        result.outputs["prediction picture"] = prediction.png
    return result


def format_result(result: DemoResult) -> str:
    """A short report: validation Dice, whole-scan Dice, timings and where every output is."""
    from brainnet.metrics import DICE_NAME

    lines = [
        "",
        f"validation {DICE_NAME} (patches): " + ", ".join(f"{k} {v:.3f}" for k, v in result.val_dice.items()),
    ]
    if result.scan_metrics:
        lines.append(
            f"whole-scan {DICE_NAME}: "
            + ", ".join(f"{k} {v['dice']:.3f}" for k, v in result.scan_metrics.items())
        )
    lines.append(
        f"total {sum(result.seconds.values()):.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    )
    lines.append(f"outputs in {result.out_dir}:")
    width = max(len(k) for k in result.outputs)
    lines += [f"  {name:<{width}}  {path}" for name, path in result.outputs.items()]
    return "\n".join(lines)
