"""``brainnet evaluate``: Dice, sensitivity and specificity of a checkpoint on a store split."""

from __future__ import annotations

from pathlib import Path

import click

from brainprep.cli.options import cache_options, chunk_cache, storage_options_option, store_location
from brainprep.cli.outputs import writable_output, writing


@click.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--store", "store", required=True, help="Patch or volume store (STORE.zarr, STORE.h5, .zip or URL)."
)
@click.option("--split", type=click.Choice(["train", "val"]), default="val", show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    callback=writable_output,
    help="Folder for metrics.csv, metrics.json, overlay.png.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@storage_options_option
@cache_options
def evaluate(
    checkpoint: Path,
    store: str,
    split: str,
    out_dir: Path | None,
    batch_size: int,
    device: str,
    progress: bool,
    storage_options: dict | None,
    cache_dir: Path | None,
    cache_size: str,
) -> None:
    """Score CHECKPOINT on one split of STORE, per case and overall.

    A patch store scores its stored patches; a volume store scores each case's whole crop (the brain's
    bounding box) by the sliding window: whole-scan numbers.
    """
    from brainnet.evaluate import evaluate_store, format_table, write_evaluation
    from brainnet.train.checkpoint import load_model
    from brainnet.train.config import TrainConfig
    from brainnet.train.distributed import resolve_device
    from brainprep.config import differences
    from brainprep.errors import BrainprepError, one_line
    from brainprep.store import open_store
    from brainprep.store.integrity import short_id

    try:
        target = resolve_device(device)
        loaded = load_model(checkpoint, target)
        patch_store = open_store(
            store_location(store),
            storage_options=storage_options,
            cache=chunk_cache(cache_dir, cache_size),
        )
        click.echo(loaded.provenance(), err=True)
        click.echo(f"evaluating on {store} (store id {short_id(patch_store.content_id)})", err=True)
        changed = differences(patch_store.params.to_dict(), loaded.build_params.to_dict())
        if changed:
            click.echo(
                f"warning: {store} was built with other parameters than the checkpoint's training store "
                f"(this store's against the training store's): {'; '.join(changed)}",
                err=True,
            )
        # the training's threshold and precision: the numbers its validation logged on the same patches
        train_config = loaded.train_config if loaded.train_config is not None else TrainConfig()
        result = evaluate_store(
            loaded.model,
            patch_store,
            split,
            batch_size=batch_size,
            threshold=train_config.threshold,
            amp=target.type == "cuda" and train_config.amp,
            amp_dtype=train_config.amp_dtype,
            progress=progress,
            model_spec=loaded.spec,
            standardize=loaded.build_params.standardize.method,
            window=loaded.build_params.sampling.patch_size,
        )
    except BrainprepError as err:
        raise click.ClickException(one_line(err)) from err
    click.echo(format_table(result))
    if out_dir is not None:
        with writing(out_dir):
            paths = write_evaluation(result, out_dir, {"checkpoint": str(checkpoint), "store": str(store)})
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))
