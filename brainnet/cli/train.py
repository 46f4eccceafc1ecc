"""``brainnet train``: train the 3D U-Net on a patch or volume store.

Several GPUs (or CPU processes): ``torchrun --nproc-per-node N --no-python brainnet train ...``.
"""

from __future__ import annotations

from pathlib import Path

import click

from brainnet.cli.augment_options import augment_config, augment_options
from brainprep.cli.options import cache_options, chunk_cache, storage_options_option, store_location
from brainprep.cli.outputs import writable_output, writing

#: CLI options that set a TrainConfig field of another name.
_CONFIG_FIELD = {
    "flips": "augment",
    "augment_set": "augment",
    "tumour_share": "volume_sampling",
    "foreground_share": "volume_sampling",
    "draws_per_epoch": "volume_sampling",
}


def _augment_config(options: dict) -> object:
    """The AugmentConfig of --augment, --augment-set and --flips."""
    preset = str(options["augment"])
    if options["flips"]:
        if preset not in ("none", "flips"):
            raise click.UsageError(f"--flips contradicts --augment {preset} (it means --augment flips)")
        preset = "flips"
    return augment_config(preset, options["augment_set"])


def _refuse_changes(explicit: set[str], asked: dict, saved: dict, path: Path) -> None:
    """Raise when an option given with --resume contradicts the checkpoint (it would be ignored); the
    options of ``RESUMABLE_CHANGES`` (those ``train`` accepts changed on a resume) may change."""
    from brainnet.train.loop import RESUMABLE_CHANGES

    changed = sorted(
        name
        for name in explicit
        if name in saved and name not in RESUMABLE_CHANGES and asked.get(name) != saved[name]
    )
    if changed:
        details = ", ".join(
            f"--{n.replace('_', '-')} {asked[n]!r} (checkpoint: {saved[n]!r})" for n in changed
        )
        raise click.UsageError(f"--resume continues {path} as it was trained; cannot change {details}")


@click.command("train")
@click.option(
    "--store",
    "store",
    required=True,
    help="Patch or volume store (STORE.zarr, STORE.h5, .zip or URL); a volume store gives fresh windows.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    callback=writable_output,
    help="Run folder.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Course: 10.")
@click.option(
    "--steps-per-epoch",
    type=click.IntRange(min=1),
    default=None,
    help="Batches per epoch (course: 20); default one pass: every train patch of a patch store, or "
    "--draws-per-epoch windows of a volume store (ceil(draws / (ranks x --batch-size)) batches).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=3, show_default=True, help="Course: 3.")
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-5,
    show_default=True,
    help="Adam; course 1e-5.",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(["constant", "poly"]),  # brainnet.train.schedule.LR_SCHEDULES (torch-free import)
    default="constant",
    show_default=True,
    help="constant (the course's) or poly: nnU-Net's decay lr * (1 - step / steps) ** 0.9 over the run.",
)
@click.option("--base-filters", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--depth", type=click.IntRange(min=2), default=4, show_default=True)
@click.option(
    "--normalization", type=click.Choice(["none", "batch", "instance"]), default="none", show_default=True
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Loader workers reading batches ahead: threads or processes as --loader chooses; 0 reads in the "
    "training process. Results do not depend on it. (TrainConfig's default is 0, for library calls; the "
    "command reads ahead.)",
)
@click.option(
    "--loader",
    type=click.Choice(["auto", "processes", "threads"]),
    default="auto",
    show_default=True,
    help="Loader workers: auto (threads for Zarr, processes for HDF5: the faster for each), processes or "
    "threads.",
)
@click.option(
    "--dice",
    type=click.Choice(["sample", "batch", "nnunet"]),
    default="sample",
    show_default=True,
    help="Soft Dice per example and class (the course), per class over the batch (nnU-Net's batch_dice "
    "axes, the course's squared denominator: false positives in tumour-free windows count), or nnU-Net's "
    "own (the batch axes, sum t + sum p in the denominator; with --bce-weight 1 nnU-Net's region loss).",
)
@click.option(
    "--bce-weight",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Add this times the binary cross-entropy to the Dice (0: the course's loss; 1: Dice + BCE "
    "as nnU-Net weighs them, which pulls back a channel saturated over the whole brain).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seeds model initialisation, shuffling or window draws, and augmentation.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--val-split",
    type=click.Choice(["train", "val", "none"]),
    default="val",
    show_default=True,
    help="Split validated each epoch; none skips validation.",
)
@click.option(
    "--val-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Validation batches of --batch-size patches, over all ranks together: the first ones of the "
    "split, whatever the ranks. Default: all, i.e. every val patch of a patch store, or --draws-per-epoch "
    "tumour windows of the val cases of a volume store (1000 by default; the same windows every epoch).",
)
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision on CUDA.")
@click.option(
    "--min-tumour-fraction",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Patch store: train only on patches whose stored tumour fraction is at least this. Ignored, with "
    "a warning, on a volume store (see --tumour-share, --foreground-share).",
)
@click.option(
    "--weighting",
    type=click.Choice(["uniform", "tumour"]),
    default="uniform",
    show_default=True,
    help="Patch store: uniform (every patch once per pass) or tumour (drawn with replacement, probability "
    "proportional to the stored tumour fraction, floor 0.01). Ignored, with a warning, on a volume store.",
)
@augment_options(
    "none", "Batch augmentation on the training device: none (course), flips (X, Y, Z), nnunet (nnU-Net's)."
)
@click.option(
    "--flips/--no-flips",
    default=False,
    show_default=True,
    help="--flips: same as --augment flips (kept for older scripts; refused with --augment nnunet). "
    "--no-flips, the default, changes nothing: --augment alone decides.",
)
@click.option(
    "--tumour-share",
    type=click.FloatRange(0, 1),
    default=None,
    help="Volume store: share of windows drawn among the corners passing the course's tumour threshold "
    "[default: the sampler's, 0; 0 when only --foreground-share is given].",
)
@click.option(
    "--foreground-share",
    type=click.FloatRange(0, 1),
    default=None,
    help="Volume store: share of windows centred on a voxel of a random tumour class (nnU-Net's rule) "
    "[default: the sampler's, 0.5; 0 when only --tumour-share is given].",
)
@click.option(
    "--draws-per-epoch",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Volume store: fresh windows per training pass (over all ranks), and the count of validation's "
    "fixed tumour windows, read every epoch, unless --val-steps.",
)
@click.option(
    "--resume", is_flag=True, help="Continue RUN_DIR/last.pt (its configs; --epochs etc. may change)."
)
@click.option(
    "--allow-store-change",
    is_flag=True,
    help="With --resume: go on training on a store other than the checkpoint's (fine-tuning on purpose).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@storage_options_option
@cache_options
@click.pass_context
def train(
    ctx: click.Context,
    store: str,
    out_dir: Path,
    storage_options: dict | None,
    cache_dir: Path | None,
    cache_size: str,
    **options: object,
) -> None:
    """Train on the train split of STORE; checkpoints, log.csv, progress.png (the curves) and TensorBoard
    events go to RUN_DIR."""
    from brainnet.data.volume_sampler import WindowSamplingParams
    from brainnet.model import ModelConfig
    from brainnet.train import TrainConfig
    from brainnet.train import train as run_training
    from brainnet.train.checkpoint import check_resume_keys, load_checkpoint
    from brainprep.errors import BrainprepError, one_line
    from brainprep.store import open_store

    val_split = None if options["val_split"] == "none" else str(options["val_split"])
    try:
        config = TrainConfig(
            epochs=options["epochs"],
            steps_per_epoch=options["steps_per_epoch"],
            batch_size=options["batch_size"],
            lr=options["lr"],
            lr_schedule=options["lr_schedule"],
            val_split=val_split,
            val_steps=options["val_steps"],
            seed=options["seed"],
            device=options["device"],
            amp=options["amp"],
            workers=options["workers"],
            loader=options["loader"],
            min_tumour_fraction=options["min_tumour_fraction"],
            weighting=options["weighting"],
            dice=options["dice"],
            bce_weight=options["bce_weight"],
            augment=_augment_config(options),
            volume_sampling=WindowSamplingParams(
                draws_per_epoch=options["draws_per_epoch"], **_sampling_shares(options)
            ),
        )
        patch_store = open_store(
            store_location(store),
            storage_options=storage_options,
            cache=chunk_cache(cache_dir, cache_size),
        )
        model_config = ModelConfig(
            out_channels=patch_store.spec.n_classes,  # one sigmoid per class of the store's spec
            depth=options["depth"],
            base_filters=options["base_filters"],
            normalization=options["normalization"],
        )
        last = out_dir / "last.pt"
        if options["resume"] and last.exists():
            from brainnet.train.loop import RESUMABLE_CHANGES

            saved = load_checkpoint(last)
            check_resume_keys(saved, last)
            explicit = {
                _CONFIG_FIELD.get(name, name)
                for name in options
                if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
            }
            saved["train_config"] = TrainConfig.from_dict(
                saved["train_config"]
            ).to_dict()  # older checkpoints
            _refuse_changes(explicit, config.to_dict(), saved["train_config"], last)
            _refuse_changes(explicit, model_config.to_dict(), saved["model_config"], last)
            model_config = ModelConfig.from_dict(saved["model_config"])
            given = {name: getattr(config, name) for name in RESUMABLE_CHANGES if name in explicit}
            config = TrainConfig.from_dict(saved["train_config"]).replace(**given)
        with writing(out_dir):
            result = run_training(
                patch_store,
                out_dir,
                config,
                model_config,
                progress=options["progress"],
                resume=options["resume"],
                allow_store_change=bool(options["allow_store_change"]),
            )
    except BrainprepError as err:
        raise click.ClickException(one_line(err)) from err
    if result.rank == 0:
        click.echo(
            f"trained {result.epochs} epochs ({result.global_step} steps); "
            f"best {result.best_metric} {result.best_score:.4f}; checkpoints in {result.out_dir}"
        )


def _sampling_shares(options: dict) -> dict[str, float]:
    """The window shares asked for: none given, the sampler's defaults; one given, the other is 0 (so
    ``--tumour-share 1`` alone is the course's rule, not a sum over 1 with the default foreground share)."""
    given = {k: options[k] for k in ("tumour_share", "foreground_share") if options[k] is not None}
    if len(given) == 1:
        given.setdefault("tumour_share", 0.0)
        given.setdefault("foreground_share", 0.0)
    return given
