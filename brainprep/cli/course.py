"""``brainprep import-course DIR STORE``: the course's legacy h5 patch folder -> a patch store."""

from __future__ import annotations

from pathlib import Path

import click

from brainprep.cli.outputs import writable_output, writing
from brainprep.errors import BrainprepError, one_line
from brainprep.params import STORE_DTYPES


@click.command("import-course")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("store", type=click.Path(path_type=Path), callback=writable_output)
@click.option(
    "--unlisted",
    type=click.Choice(["skip", "train"]),
    default="skip",
    show_default=True,
    help="Patch files on disk that config.json does not list: skip them, or import them as train.",
)
@click.option("--dtype", type=click.Choice(STORE_DTYPES), default="float16", show_default=True)
@click.option(
    "--compression-level",
    type=click.IntRange(min=1, max=9),  # the range build-patches accepts
    default=None,
    help="Compressor level: zstd (Zarr) or gzip (HDF5) [1, as build-patches].",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
def import_course(
    source: Path, store: Path, unlisted: str, dtype: str, compression_level: int, progress: bool
) -> None:
    """Convert the course's patch folder SOURCE (config.json + BRATS_NNN.nii.gz_K_xX_yY_zZ.h5 files) into
    STORE (*.zarr or *.h5): patches standardized per slice as the course did, labels = argmax of y."""
    from brainprep.course import import_course as run_import
    from brainprep.params import StoreParams

    if store.exists():
        raise click.BadParameter(f"{store} exists; remove it first", param_hint="STORE")
    try:
        with writing(store):
            result = run_import(
                source,
                store,
                unlisted_policy=unlisted,
                store_params=StoreParams(dtype=dtype, compression_level=compression_level),
                progress=progress,
            )
    except BrainprepError as error:
        raise click.ClickException(one_line(error)) from None
    for name in result.unlisted:
        action = "skipped" if unlisted == "skip" else "imported as train"
        click.echo(f"not in config.json, {action}: {name}")
    for name in result.missing:
        click.echo(f"listed in config.json but not on disk: {name}")
    splits = ", ".join(f"{case_id} ({split})" for case_id, split in result.cases.items())
    click.echo(f"{store}: {result.n_patches} patches of {len(result.cases)} cases: {splits}")
