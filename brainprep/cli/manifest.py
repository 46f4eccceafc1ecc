"""``brainprep manifest``, ``brainprep verify`` and ``brainprep pack``: record, check and share a store."""

from __future__ import annotations

from pathlib import Path

import click

from brainprep.cli.options import storage_options_option, store_location
from brainprep.cli.outputs import writable_output, writing
from brainprep.errors import BrainprepError, one_line


@click.command("manifest")
@click.argument("store")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    required=True,
    callback=writable_output,
    help="Manifest JSON to write, e.g. manifests/NAME.json.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar while hashing.")
@storage_options_option
def manifest(store: str, output: Path, progress: bool, storage_options: dict | None) -> None:
    """Write the manifest of STORE (folder, .zarr.zip, .h5 or URL): parameters, cases, split, array
    schema and a sha256 per shard/chunk. A store that fails its own checks (as `brainprep verify STORE`)
    gets none."""
    from brainprep.manifest import write_manifest

    location = store_location(store)
    try:
        with writing(output):
            written = write_manifest(location, output, progress=progress, storage_options=storage_options)
    except BrainprepError as error:
        raise click.ClickException(one_line(error)) from None
    n_chunks = sum(len(array["stored"]) for array in written["arrays"].values())
    click.echo(
        f"{output}: {len(written['cases'])} cases, {len(written['arrays'])} arrays, {n_chunks} chunks hashed"
    )


@click.command("verify")
@click.argument("store")
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Also compare every byte's sha256 with this manifest (after the store's own checks).",
)
@click.option(
    "--images/--no-images",
    default=True,
    show_default=True,
    help="Also decode every image patch and check it is finite (a volume store's images always are).",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@storage_options_option
def verify(
    store: str, manifest_path: Path | None, images: bool, progress: bool, storage_options: dict | None
) -> None:
    """Verify STORE: its own checksums, digests and tables (against its labels), and with --manifest every
    byte's sha256 too; print every difference, naming the array, shard/chunk, patch slots and case. Exit
    status 1 on any difference, 0 when all match."""
    from brainprep.manifest import load_manifest, verify_against_manifest
    from brainprep.verify import check_store

    location = store_location(store)
    options = {"check_images": images, "progress": progress, "storage_options": storage_options}
    what = "its own checksums, digests, patch table and labels"
    try:
        if manifest_path is not None:
            differences = verify_against_manifest(location, load_manifest(manifest_path), **options)
            what = f"manifest {manifest_path} and {what}"
        else:
            differences, note = check_store(location, **options)
            if note is not None:
                click.echo(f"note: {note}", err=True)
                what = "its own patch table and labels (no checksums to check)"
    except BrainprepError as error:
        raise click.ClickException(one_line(error)) from None
    for difference in differences:
        click.echo(str(difference))
    if differences:
        click.echo(f"{store}: {len(differences)} difference(s) from {what}", err=True)
        raise SystemExit(1)
    click.echo(f"{store}: OK, matches {what}")


@click.command("pack")
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument(
    "output", type=click.Path(dir_okay=False, writable=True, path_type=Path), callback=writable_output
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
def pack(store: Path, output: Path, overwrite: bool, progress: bool) -> None:
    """Pack a complete Zarr STORE folder into one OUTPUT .zarr.zip (uncompressed zip of the compressed
    shards); open_store reads it like the folder."""
    from brainprep.pack import pack_store

    try:
        with writing(output):
            pack_store(store, output, progress=progress, overwrite=overwrite)
    except BrainprepError as error:
        raise click.ClickException(one_line(error)) from None
    click.echo(f"{output}: {output.stat().st_size} bytes")
