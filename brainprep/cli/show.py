"""``brainprep show``: draw the three planes through a case's tumour (PNG) and a slice movie (GIF)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from brainprep.cli.options import labels_option
from brainprep.cli.outputs import suffixed_output, writing

if TYPE_CHECKING:
    from brainprep.read.case import Case


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
    callback=suffixed_output(".png"),
    help="FILE.png for the planes figure.",
)
@click.option(
    "--gif",
    "out_gif",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=suffixed_output(".gif"),
    help="Also write FILE.gif stepping through the axial, coronal and sagittal slices (both or neither).",
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

    index = channel_index(channel)
    try:
        dataset = discover_cases(data_dir, labels)
        case = read_case(dataset.case(case_id))
        if case.label is None:
            click.echo(f"case {case_id} has no label: drawing no overlay")
        with writing(out_png, out_gif):
            for path in _write_pictures(case, out_png, out_gif, index, gif_step):
                click.echo(str(path))
    except BrainprepError as err:
        raise click.ClickException(one_line(err)) from err


def _write_pictures(case: Case, out_png: Path, out_gif: Path | None, channel: int, step: int) -> list[Path]:
    """Write the planes PNG and the GIF: both or neither (a failed GIF takes the PNG with it; Pillow
    removes a GIF it did not finish)."""
    from brainprep.show import write_gif, write_planes_png

    written = [write_planes_png(case, out_png)]
    try:
        if out_gif is not None:
            written.append(write_gif(case, out_gif, channel=channel, step=step))
    except BaseException:
        out_png.unlink(missing_ok=True)
        raise
    return written
