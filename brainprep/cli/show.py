"""``brainprep show``: draw the three planes through a case's tumour (PNG) and a slice movie (GIF)."""

from __future__ import annotations

from pathlib import Path

import click

from brainprep.cli.options import labels_option
from brainprep.cli.outputs import writable_output, writing


def channel_index(name: str) -> int:
    """Canonical channel index of a channel name in any release's spelling (case-insensitive)."""
    from brainprep.read.dataset_json import CHANNEL_ALIASES
    from brainprep.read.dataset_json import channel_index as canonical_index

    index = canonical_index(name)
    if index is None:
        known = ", ".join(sorted(a for aliases in CHANNEL_ALIASES.values() for a in aliases))
        raise click.BadParameter(
            f"unknown channel {name!r}; expected one of {known}", param_hint="--channel"
        ) from None
    return index


@click.command("show")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("case_id")
@click.option(
    "--out",
    "out_png",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    callback=writable_output,
    help="PNG file for the planes figure.",
)
@click.option(
    "--gif",
    "out_gif",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=writable_output,
    help="Also write a GIF stepping through the axial, coronal and sagittal slices.",
)
@click.option(
    "--channel", default="FLAIR", show_default=True, help="Channel of the GIF (FLAIR, T1w, T1gd, T2w)."
)
@click.option(
    "--gif-step",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Take every n-th slice in the GIF.",
)
@labels_option
def show(
    data_dir: Path,
    case_id: str,
    out_png: Path,
    out_gif: Path | None,
    channel: str,
    gif_step: int,
    labels: str | None,
) -> None:
    """Draw case CASE_ID of DATA_DIR: four channels x three planes through the tumour centre."""
    from brainprep.errors import BrainprepError, one_line
    from brainprep.read import discover_cases, read_case
    from brainprep.show import write_gif, write_planes_png

    index = channel_index(channel)
    try:
        dataset = discover_cases(data_dir, labels)
        case = read_case(dataset.case(case_id))
        if case.label is None:
            click.echo(f"case {case_id} has no label: drawing no overlay")
        with writing(out_png, out_gif):
            click.echo(str(write_planes_png(case, out_png)))
            if out_gif is not None:
                click.echo(str(write_gif(case, out_gif, channel=index, step=gif_step)))
    except BrainprepError as err:
        raise click.ClickException(one_line(err)) from err
