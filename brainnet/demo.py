"""The end-to-end demo: synthetic cases -> check -> pictures -> store -> training -> evaluation ->
whole-scan prediction, on the embedded default dataset (the built-in synthetic generator, seeded).

The store is a volume store by default (``kind="volumes"``): every case whole, fresh windows drawn at
every step by the sampler's defaults, and the evaluation over each validation case's whole crop, because
it trained the most accurate model of ``benchmarks/bench_accuracy.py`` (whole-scan mean Dice, the
README's accuracy table). ``kind="patches"`` runs the course's frozen patch store instead, evaluated on
its validation patches.

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
        kind: the store's kind: ``volumes`` (fresh windows) or ``patches`` (K frozen patches per case).
        patches_per_case: K patches per case (``patches``); for ``volumes`` the validation windows per
            epoch are the validation cases times K.
        base_filters, depth: the U-Net (the course: 32, 4).
        epochs, steps_per_epoch, batch_size, lr: training.
        seed: seeds the data, the split, the sampling and the training.
    """

    n_cases: int = 10
    small_tumour_every: int = 4
    shape: tuple[int, int, int] = (128, 128, 64)
    patch_size: tuple[int, int, int] = (64, 64, 16)
    kind: str = "volumes"
    patches_per_case: int = 16
    base_filters: int = 8
    depth: int = 3
    epochs: int = 6
    steps_per_epoch: int = 40
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        from brainprep.errors import ConfigError
        from brainprep.params import STORE_KINDS

        if self.kind not in STORE_KINDS:
            raise ConfigError(f"demo store kind must be one of {STORE_KINDS}, got {self.kind!r}")


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, what it measured, and how long each stage took."""

    out_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    val_dice: dict[str, float] = field(default_factory=dict)
    val_unit: str = "patches"
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
        The output paths, stage timings, validation Dice per class (over the validation patches of a
        patch store, the validation cases' whole crops of a volume store) and whole-scan metrics.
    """
    params = params or DemoParams()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out)
    report = _data_stage(result, params, progress, echo)
    store_path = _store_stage(result, params, progress, echo)
    train_config = _train_stage(result, params, store_path, progress, echo)
    _pictures_of_training(result, store_path, train_config)
    _evaluate_stage(result, store_path, progress, echo)
    _segment_stage(result, store_path, report, progress, echo)
    return result


def _data_stage(result: DemoResult, params: DemoParams, progress: bool, echo: Callable[[str], None]) -> Any:
    """Synthesize, check and draw: the dataset, the check table and one case's pictures; the report."""
    from brainprep import discover_cases, read_case
    from brainprep.check import CheckParams, check_dataset, format_table
    from brainprep.show import write_gif, write_planes_png
    from brainprep.synth import SynthParams, write_synthetic_dataset

    out, data_dir = result.out_dir, result.out_dir / "data"
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

    first = read_case(discover_cases(data_dir).cases[0])
    pictures = out / "pictures"

    def draw_case() -> None:
        write_planes_png(first, pictures / f"{first.case_id}.png")
        write_gif(first, pictures / f"{first.case_id}.gif", step=2)

    _timed(result, "draw a case", draw_case, echo)
    result.outputs["case picture"] = pictures / f"{first.case_id}.png"
    result.outputs["case gif"] = pictures / f"{first.case_id}.gif"
    return report


def _store_stage(result: DemoResult, params: DemoParams, progress: bool, echo: Callable[[str], None]) -> Path:
    """Build the store of ``params.kind`` and its statistics (a picture for patches, a table for volumes)."""
    from brainprep.builder import build_patches
    from brainprep.params import BuildParams, SamplingParams, StoreParams
    from brainprep.stats import plot_stats, store_stats

    out = result.out_dir
    volumes = params.kind == "volumes"
    store_path = out / ("volumes.zarr" if volumes else "patches.zarr")
    build = BuildParams(
        sampling=SamplingParams(patch_size=params.patch_size, patches_per_case=params.patches_per_case),
        store=StoreParams(kind=params.kind),
        seed=params.seed,
    )
    summary = _timed(
        result,
        f"build {'volume' if volumes else 'patch'} store",
        lambda: build_patches(out / "data", store_path, build, workers=2, progress=progress),
        echo,
    )
    echo(f"    {summary.line()}")
    result.outputs[f"{'volume' if volumes else 'patch'} store"] = store_path
    if volumes:
        from brainprep.store import open_store
        from brainprep.volume_stats import format_volume_stats, volume_stats

        with open_store(store_path) as store:
            table = format_volume_stats(volume_stats(store), store.patch_size)
        echo(table)
        (out / "store-stats.txt").write_text(table + "\n")
        result.outputs["store stats table"] = out / "store-stats.txt"
    else:
        plot_stats(store_stats(store_path), out / "pictures" / "store-stats.png", title=store_path.name)
        result.outputs["store stats picture"] = out / "pictures" / "store-stats.png"
    return store_path


def _train_stage(
    result: DemoResult, params: DemoParams, store_path: Path, progress: bool, echo: Callable[[str], None]
) -> Any:
    """Train the U-Net; returns its :class:`~brainnet.train.TrainConfig`."""
    from brainnet.data.volume_sampler import WindowSamplingParams
    from brainnet.model import ModelConfig
    from brainnet.train import TrainConfig, train

    val_steps = None  # a patch store: every validation patch
    if params.kind == "volumes":  # as many tumour-constrained validation windows as K per val case
        n_val = len(_val_case_ids(store_path))
        val_steps = max(1, -(-n_val * params.patches_per_case // params.batch_size))
    train_config = TrainConfig(
        epochs=params.epochs,
        steps_per_epoch=params.steps_per_epoch,
        batch_size=params.batch_size,
        lr=params.lr,
        seed=params.seed,
        device="auto",
        val_steps=val_steps,
        # one pass of the stream per epoch (draws depend only on the seed and the position)
        volume_sampling=WindowSamplingParams(draws_per_epoch=params.steps_per_epoch * params.batch_size),
    )
    model_config = ModelConfig(base_filters=params.base_filters, depth=params.depth)
    run_dir = result.out_dir / "run"
    trained = _timed(
        result,
        "train the U-Net",
        lambda: train(store_path, run_dir, train_config, model_config, progress=progress),
        echo,
    )
    result.outputs["checkpoint"] = trained.best_checkpoint or trained.last_checkpoint
    result.outputs["training log"] = run_dir / "log.csv"
    result.outputs["training curves"] = run_dir / "progress.png"
    return train_config


def _pictures_of_training(result: DemoResult, store_path: Path, train_config: Any) -> None:
    """The first 16 patches the training read, with their labels (``brainnet sample``'s picture)."""
    from brainnet.sample import sample_training, write_png
    from brainprep.store import open_store

    with open_store(store_path) as store:
        samples = sample_training(store, 16, train_config)
    path = write_png(samples, result.out_dir / "pictures" / "training-patches.png")
    result.outputs["training patches picture"] = path


def _evaluate_stage(
    result: DemoResult, store_path: Path, progress: bool, echo: Callable[[str], None]
) -> None:
    """Score the checkpoint on the validation split: tables, overlay, :attr:`DemoResult.val_dice`."""
    from brainnet.evaluate import evaluate_store, write_evaluation
    from brainnet.train import load_model
    from brainprep.store import open_store

    loaded = load_model(result.outputs["checkpoint"])
    with open_store(store_path) as store:
        evaluation = _timed(
            result,
            "evaluate on the validation split",
            lambda: evaluate_store(
                loaded.model,
                store,
                "val",
                progress=progress,
                model_spec=loaded.spec,
                standardize=loaded.build_params.standardize.method,
                window=loaded.build_params.sampling.patch_size,
            ),
            echo,
        )
    written = write_evaluation(evaluation, result.out_dir / "evaluation")
    result.outputs.update({f"evaluation {kind}": path for kind, path in written.items()})
    result.val_dice = {name: values["dice"] for name, values in evaluation.overall.items()}
    result.val_unit = evaluation.unit


def _val_case_ids(store_path: Path) -> set[str]:
    from brainprep.store import open_store

    with open_store(store_path) as store:
        return {c["case_id"] for c in store.cases if c["split"] == "val"}


def _segment_stage(
    result: DemoResult, store_path: Path, report: Any, progress: bool, echo: Callable[[str], None]
) -> None:
    """Segment the validation case with the largest tumour from its NIfTI files, in the source space."""
    from brainnet.predict import segment_case
    from brainnet.train import load_model
    from brainprep import discover_cases

    val_ids = _val_case_ids(store_path)
    tumour = {r.case_id: sum(r.tumour_voxels or ()) for r in report.cases if r.case_id in val_ids}
    scan = discover_cases(result.out_dir / "data").case(max(tumour, key=tumour.__getitem__))
    out, loaded = result.out_dir, load_model(result.outputs["checkpoint"])
    prediction = _timed(
        result,
        f"segment the whole scan {scan.case_id}",
        lambda: segment_case(
            loaded,
            scan,
            out / "predictions" / f"{scan.case_id}.nii.gz",
            png=out / "pictures" / f"{scan.case_id}-prediction.png",
            progress=progress,
        ),
        echo,
    )
    result.scan_metrics = prediction.metrics
    result.outputs["prediction"] = prediction.output
    if prediction.png is not None:
        result.outputs["prediction picture"] = prediction.png


#: what the validation numbers are over, by :attr:`DemoResult.val_unit`
_UNIT_NAMES = {"patches": "patches of the validation cases", "crops": "whole validation cases"}


def format_result(result: DemoResult) -> str:
    """A short report: validation Dice, whole-scan Dice, timings and where every output is."""
    from brainnet.metrics import DICE_NAME

    lines = [
        "",
        f"validation {DICE_NAME} ({_UNIT_NAMES[result.val_unit]}): "
        + ", ".join(f"{k} {v:.3f}" for k, v in result.val_dice.items()),
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
