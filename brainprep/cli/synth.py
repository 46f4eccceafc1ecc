"""``brainprep synth``: write a synthetic BraTS-like dataset."""

from __future__ import annotations

from pathlib import Path

import click

from brainprep.cli.outputs import writable_output, writing

LAYOUT_CHOICES = ("msd", "brats2021", "brats2023")


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path), callback=writable_output)
@click.option("--cases", "n_cases", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--shape",
    type=(click.IntRange(min=8), click.IntRange(min=8), click.IntRange(min=8)),
    default=(240, 240, 155),
    show_default=True,
    metavar="X Y Z",
    help="Volume shape in voxels.",
)
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default="msd", show_default=True)
@click.option(
    "--small-tumour-every",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Every k-th case gets a tumour too small for any valid patch (0 = never).",
)
@click.option(
    "--labels-from",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of real MSD label maps (e.g. labelsTr) whose tumours to use, cycled.",
)
@click.option(
    "--with-skull",
    is_flag=True,
    help="Keep scalp and skull (default: skull-stripped, 0 outside the brain, like the real MSD/BraTS data).",
)
@click.option(
    "--mimics",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Tumour mimics per case: FLAIR/T2 hyperintensities and T1gd-enhancing foci in healthy brain "
    "(label 0).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
def synth(
    out_dir: Path,
    n_cases: int,
    seed: int,
    shape: tuple[int, int, int],
    layout: str,
    small_tumour_every: int,
    labels_from: Path | None,
    with_skull: bool,
    mimics: int,
    overwrite: bool,
) -> None:
    """Write N synthetic BraTS-like cases to OUT_DIR (MSD layout by default)."""
    from brainprep.errors import BrainprepError, one_line
    from brainprep.synth import SynthParams, write_synthetic_dataset

    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise click.BadParameter(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    try:
        params = SynthParams(
            n_cases=n_cases,
            shape=shape,
            seed=seed,
            layout=layout,
            small_tumour_every=small_tumour_every,
            labels_from=str(labels_from) if labels_from is not None else None,
            skull_stripped=not with_skull,
            mimics=mimics,
        )
        with writing(out_dir):
            write_synthetic_dataset(out_dir, params, progress=True, overwrite=overwrite)
    except BrainprepError as err:
        raise click.ClickException(one_line(err)) from err
    x, y, z = params.shape
    head = "skull-stripped" if params.skull_stripped else "with skull"
    extra = f", {mimics} mimics per case" if mimics else ""
    described = f"{layout} layout, {x}x{y}x{z}, seed {seed}, {head}{extra}"
    click.echo(f"wrote {n_cases} synthetic cases ({described}) to {out_dir}")
