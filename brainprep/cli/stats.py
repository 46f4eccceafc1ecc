"""``brainprep stats STORE``: patch counts, class balance and tumour fraction histograms per split."""

from __future__ import annotations

from pathlib import Path

import click

from brainprep.errors import BrainprepError, one_line


@click.command("stats")
@click.argument("store")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also draw the histograms and class balance into this PNG.",
)
@click.option("--bins", type=click.IntRange(min=1), default=10, show_default=True, help="Histogram bins.")
def stats(store: str, plot_path: Path | None, bins: int) -> None:
    """Statistics of STORE (folder, .zarr.zip, .h5 or URL), read from its patch table only."""
    from brainprep.stats import format_stats, plot_stats, store_stats
    from brainprep.store.remote import is_url

    if not is_url(store) and not Path(store).exists():
        raise click.BadParameter(f"{store} does not exist", param_hint="STORE")
    try:
        result = store_stats(store, bins=bins)
    except BrainprepError as error:
        raise click.ClickException(one_line(error)) from None
    click.echo(format_stats(result))
    if plot_path is not None:
        plot_stats(result, plot_path, title=str(store))
        click.echo(f"wrote {plot_path}")
