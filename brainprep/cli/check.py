"""``brainprep check DATA_DIR``: one row per case, a summary, one line per problem; exit 1 on any problem."""

from __future__ import annotations

import json
from pathlib import Path

import click

from brainprep.cli.options import labels_option
from brainprep.cli.outputs import writable_output, writing
from brainprep.files import write_text_atomic


@click.command("check")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--patch-size",
    nargs=3,
    type=click.IntRange(min=1),
    default=(160, 160, 16),
    show_default=True,
    metavar="X Y Z",
    help="Patch size whose valid corners are counted.",
)
@click.option(
    "--background-threshold",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=0.95,
    show_default=True,
    help="A corner is valid when its patch's background share is below this.",
)
@click.option(
    "--expect-shape",
    nargs=3,
    type=click.IntRange(min=1),
    default=None,
    metavar="X Y Z",
    help="Report every case whose canonical (RAS) shape differs from this.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    callback=writable_output,
    help="Also write the full report to this JSON file (missing folders above it are made).",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Cases read at once."
)
@labels_option
def check(
    data_dir: Path,
    patch_size: tuple[int, int, int],
    background_threshold: float,
    expect_shape: tuple[int, int, int] | None,
    json_path: Path | None,
    workers: int,
    labels: str | None,
) -> None:
    """Check every case of DATA_DIR (MSD, nnU-Net raw, BraTS 2017-2021 or BraTS 2023+ layout).

    Prints one row per case (shape, spacing, source orientation and dtype, tumour voxels per class, share
    of valid patch corners, status), a summary, one line per problem and one per warning (a spacing off
    the dataset's majority, a background that is not 0). Exit status 1 when any case has a problem (a
    warning alone leaves it 0), 2 for a folder of unknown layout.
    """
    from brainprep.check import CheckParams, check_dataset, format_table
    from brainprep.errors import ConfigError, LayoutError

    try:
        params = CheckParams(
            patch_size=patch_size, background_threshold=background_threshold, expect_shape=expect_shape
        )
    except ConfigError as err:
        raise click.BadParameter(str(err)) from err
    try:
        report = check_dataset(data_dir, params, workers=workers, progress=True, labels=labels)
    except LayoutError as err:
        raise click.BadParameter(str(err), param_hint="'DATA_DIR'") from err
    if not report.cases:
        message = f"no cases found in {data_dir} ({report.layout} layout)"
        raise click.BadParameter(message, param_hint="'DATA_DIR'")
    click.echo(format_table(report))
    if json_path is not None:
        with writing(json_path):
            write_text_atomic(json_path, json.dumps(report.to_dict(), indent=2) + "\n")
    if report.problems:
        raise SystemExit(1)
