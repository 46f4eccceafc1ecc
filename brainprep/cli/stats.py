"""``brainprep stats STORE``: patch counts, class balance and tumour fraction histograms per split (a
volume store: cases, crops and tumour corners per split)."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from brainprep.cli.options import storage_options_option, store_location
from brainprep.cli.outputs import suffixed_output, writing
from brainprep.errors import BrainprepError, one_line

#: formats of ``--plot`` that matplotlib writes from the suffix (a chart: vector formats serve too).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


@click.command("stats")
@click.argument("store")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    callback=suffixed_output(*PLOT_SUFFIXES),
    help="Also draw the histograms and class balance into FILE.png (or a vector .pdf / .svg).",
)
@click.option(
    "--bins",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Bins of a patch store's tumour fraction histogram (a volume store has none).",
)
@storage_options_option
@click.pass_context
def stats(
    ctx: click.Context, store: str, plot_path: Path | None, bins: int, storage_options: dict | None
) -> None:
    """Statistics of STORE (folder, .zarr.zip, .h5 or URL), read from its patch table only (a volume store:
    from its case tables)."""
    from brainprep.stats import format_stats, plot_stats, table_stats
    from brainprep.store import open_store
    from brainprep.store.volume_reader import VolumeStore
    from brainprep.volume_stats import format_volume_stats, volume_stats

    try:
        with open_store(store_location(store), storage_options=storage_options) as opened:
            if isinstance(opened, VolumeStore):
                if plot_path is not None:
                    raise click.UsageError("--plot draws patch stores only (a volume store has no patches)")
                if ctx.get_parameter_source("bins") is not ParameterSource.DEFAULT:
                    raise click.UsageError("--bins sets a patch store's histogram (a volume store has none)")
                click.echo(format_volume_stats(volume_stats(opened), opened.patch_size))
                return
            result = table_stats(opened.table, bins, opened.spec)
    except BrainprepError as error:
        raise click.ClickException(one_line(error)) from None
    click.echo(format_stats(result))
    if plot_path is not None:
        with writing(plot_path):
            plot_stats(result, plot_path, title=str(store))
        click.echo(f"wrote {plot_path}")
