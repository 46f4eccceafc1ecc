"""``brainnet sample``: N samples of a patch or volume store as training reads them (.npz, optional PNG)."""

from __future__ import annotations

from pathlib import Path

import click

from brainnet.cli.augment_options import augment_config, augment_options
from brainprep.cli.options import storage_options_option, store_location
from brainprep.cli.outputs import suffixed_output, writing


@click.command("sample")
@click.option("--store", "store", required=True, help="Patch or volume store (.zarr, .h5, .zip or URL).")
@click.option("--count", type=click.IntRange(min=1), default=16, show_default=True, help="Samples.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Training's seed.")
@click.option(
    "--split",
    type=click.Choice(["train", "val"]),
    default="train",
    show_default=True,
    help="Split drawn from.",
)
@augment_options(
    None,
    "Show the first COUNT patches a training run with --seed and --batch-size (other options at `brainnet "
    "train`'s defaults) trains on, augmented as `brainnet train --augment PRESET` augments them.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="With --augment: training's batch size (the draws of a step depend on it).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    callback=suffixed_output(".npz"),
    help="FILE.npz (missing folders above it are made; the suffix is needed).",
)
@click.option(
    "--png",
    "png",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=suffixed_output(".png"),
    help="FILE.png, written with FILE.npz or not at all.",
)
@storage_options_option
def sample(
    store: str,
    count: int,
    seed: int,
    split: str,
    augment: str | None,
    augment_set: tuple[str, ...],
    batch_size: int,
    out: Path,
    png: Path | None,
    storage_options: dict | None,
) -> None:
    """Write COUNT samples of STORE to FILE.npz: image (standardized, float32), label,
    case (ids), case_index, corner (on the source grid), kind (the rule that drew it), tumour_fraction."""
    from brainnet.sample import sample_store, sample_training, write_samples
    from brainprep.errors import BrainprepError, one_line
    from brainprep.store import open_store

    if augment is None and augment_set:
        raise click.UsageError("--augment-set needs --augment PRESET")
    if augment is not None and split != "train":
        raise click.UsageError("--augment shows training batches: only --split train is augmented")
    try:
        config = None
        if augment is not None:
            from brainnet.train import TrainConfig

            config = TrainConfig(
                seed=seed, batch_size=batch_size, augment=augment_config(augment, augment_set)
            )
        with open_store(store_location(store), storage_options=storage_options) as opened:
            if config is None:
                samples = sample_store(opened, count, seed, split)
            else:
                samples = sample_training(opened, count, config)
    except BrainprepError as err:
        raise click.ClickException(one_line(err)) from err
    with writing(out, png):
        write_samples(samples, out, png)
    click.echo(f"{out}: {count} samples of {store}" + (f", augmented ({augment})" if augment else ""))
    if png is not None:
        click.echo(f"wrote {png}")
