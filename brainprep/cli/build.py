"""``brainprep build-patches DATA_DIR STORE``: build (or resume) a Zarr v3 / HDF5 patch store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from brainprep.cli.options import labels_option
from brainprep.cli.outputs import writable_output, writing
from brainprep.params import STORE_KINDS, BuildParams

#: defaults shown in --help come from the parameter dataclasses, so they cannot drift from them.
_DEFAULT = BuildParams()
_SAMPLING, _STORE = _DEFAULT.sampling, _DEFAULT.store

#: options that set the store's content; with --recipe they come from the recipe instead.
CONTENT_OPTIONS = (
    "patches_per_case",
    "patch_size",
    "background_threshold",
    "sampler",
    "max_tries",
    "standardize",
    "dtype",
    "compression_level",
    "val_fraction",
    "split_file",
    "seed",
    "resample",
    "allow_mixed_spacing",
)


def _suffix_format(store: Path) -> str | None:
    """``zarr`` or ``hdf5`` by the suffix of ``store``; ``None`` for another (the build refuses it)."""
    from brainprep.errors import ConfigError
    from brainprep.store.locations import format_for_new_store

    try:
        return format_for_new_store(store)
    except ConfigError:
        return None


def _params_from_options(options: dict[str, Any], store: Path) -> Any:
    """BuildParams from the given options, defaults for the others; the store's format from the suffix of
    ``store``, so that a level given for one format is not taken for another's default (``with_layout``)."""
    from brainprep.errors import ConfigError
    from brainprep.params import (
        BuildParams,
        SamplingParams,
        SpacingParams,
        SplitParams,
        StandardizeParams,
        StoreParams,
    )

    def given(**pairs: Any) -> dict[str, Any]:
        return {key: value for key, value in pairs.items() if value is not None}

    if options["resample"] and options["allow_mixed_spacing"]:
        raise click.UsageError("--resample and --allow-mixed-spacing exclude each other")
    policy = "resample" if options["resample"] else "allow-mixed" if options["allow_mixed_spacing"] else None
    try:
        return BuildParams(
            sampling=SamplingParams(
                **given(
                    patch_size=options["patch_size"],
                    patches_per_case=options["patches_per_case"],
                    background_threshold=options["background_threshold"],
                    sampler=options["sampler"],
                    max_tries=options["max_tries"],
                )
            ),
            standardize=StandardizeParams(**given(method=options["standardize"])),
            store=StoreParams(
                **given(
                    format=_suffix_format(store),
                    dtype=options["dtype"],
                    compression_level=options["compression_level"],
                    kind=options["kind"],
                )
            ),
            split=SplitParams(
                **given(
                    val_fraction=options["val_fraction"],
                    split_file=str(options["split_file"]) if options["split_file"] else None,
                )
            ),
            spacing=SpacingParams(**given(policy=policy)),
            **given(seed=options["seed"]),
        )
    except ConfigError as err:
        raise click.BadParameter(str(err)) from err


@click.command("build-patches")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("store", type=click.Path(path_type=Path), callback=writable_output)
@click.option(
    "--patches-per-case",
    type=click.IntRange(min=1),
    default=None,
    help=f"K, patches drawn per case [{_SAMPLING.patches_per_case}].",
)
@click.option(
    "--patch-size",
    nargs=3,
    type=click.IntRange(min=1),
    default=None,
    metavar="X Y Z",
    help=f"Patch size in voxels [{' '.join(map(str, _SAMPLING.patch_size))}].",
)
@click.option(
    "--background-threshold",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=None,
    help=f"Keep a patch only when its background share is below this [{_SAMPLING.background_threshold}].",
)
@click.option(
    "--sampler",
    type=click.Choice(["exact", "rejection"]),
    default=None,
    help="exact: uniform among all valid corners; rejection: the course's random tries "
    f"[{_SAMPLING.sampler}].",
)
@click.option(
    "--max-tries",
    type=click.IntRange(min=1),
    default=None,
    help=f"Tries per patch of the rejection sampler [{_SAMPLING.max_tries}].",
)
@click.option(
    "--standardize",
    type=click.Choice(["patch-slice", "volume-nonzero"]),
    default=None,
    help="patch-slice: each channel of each z-slice of a patch to mean 0/std 1 (course); volume-nonzero: "
    f"per channel over the brain voxels of the volume (nnU-Net) [{_DEFAULT.standardize.method}].",
)
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default=None,
    help=f"Image dtype in the store [{_STORE.dtype}].",
)
@click.option(
    "--kind",
    type=click.Choice(list(STORE_KINDS)),
    default=None,
    help="patches: K standardized patches per case (the course's); volumes: each case's raw image cropped "
    f"to the brain with its sampling tables, for fresh windows at every step [{_STORE.kind}].",
)
@click.option(
    "--compression-level",
    type=click.IntRange(min=1, max=9),
    default=None,
    help="Compressor level: zstd (Zarr patch store) [1], lz4hc (Zarr volume store) [3] or gzip (HDF5) [1].",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(min=0.0, max=1.0, max_open=True),
    default=None,
    help=f"Share of cases in the validation split [{_DEFAULT.split.val_fraction}].",
)
@click.option(
    "--split-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='JSON {"train": [ids], "val": [ids]} fixing the split (instead of --val-fraction).',
)
@click.option("--seed", type=int, default=None, help=f"Seed of the corners and the split [{_DEFAULT.seed}].")
@click.option(
    "--resample",
    is_flag=True,
    default=None,
    help="Resample every case whose voxel spacing differs from the dataset's majority to it (images "
    "trilinear, labels nearest neighbour); without it (or --allow-mixed-spacing) mixed spacing is refused.",
)
@click.option(
    "--allow-mixed-spacing",
    is_flag=True,
    default=None,
    help="Build cases of different voxel spacing as they are (recorded per case in the store).",
)
@click.option(
    "--recipe",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Build exactly as a recipe says (parameters, cases and their split); excludes the options above.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Local worker processes, one case each at a time [CPU count].",
)
@click.option(
    "--threads", is_flag=True, help="Use local threads instead of processes (slower: the GIL is shared)."
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Run on an existing dask.distributed cluster (tcp://host:8786); STORE must be on a shared disk.",
)
@click.option(
    "--skip-bad", is_flag=True, help="Record unreadable cases as skipped instead of stopping before writing."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing store, complete or not.")
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Progress bars (one tick per case)."
)
@labels_option
def build_patches(
    data_dir: Path,
    store: Path,
    labels: str | None,
    recipe: Path | None,
    workers: int | None,
    threads: bool,
    scheduler: str | None,
    skip_bad: bool,
    overwrite: bool,
    progress: bool,
    **options: Any,
) -> None:
    """Build a patch store STORE (*.zarr: Zarr v3, *.h5: HDF5) from the cases of DATA_DIR.

    Plans every case first (labels and image headers): a bad case stops the build before anything is
    written (unless --skip-bad). Then writes the cases in parallel; damage seen only when image voxels
    are decoded (NaN, a constant channel, a cut file) stops it there, leaving an incomplete store that
    the same command resumes once the file is fixed. Interrupted (even kill -9), the same command
    resumes and ends with the store an uninterrupted build makes; the store says complete only at the
    very end. The content depends only on the data, the parameters and --seed, not on --workers.
    """
    from brainprep.builder import BadCasesError
    from brainprep.builder import build_patches as run_build
    from brainprep.errors import BrainprepError, one_line

    if recipe is not None:
        given = [k for k in CONTENT_OPTIONS if options.get(k) not in (None, False)]  # flags: False if absent
        clashing = sorted(f"--{k.replace('_', '-')}" for k in given)
        if clashing:
            raise click.UsageError(f"--recipe fixes the parameters; drop {', '.join(clashing)}")
        from brainprep.errors import ConfigError
        from brainprep.recipe import load_recipe

        try:
            params, splits = load_recipe(recipe)
        except ConfigError as err:
            raise click.BadParameter(one_line(err), param_hint="--recipe") from err
        if options["kind"] is not None:  # the store's kind is a layout, like its format: not the recipe's
            params = params.replace(store=params.store.with_layout(kind=options["kind"]))
    else:
        params, splits = _params_from_options(options, store), None
    if threads and scheduler:
        raise click.UsageError("--threads and --scheduler exclude each other")
    try:
        with writing(store):
            summary = run_build(
                data_dir,
                store,
                params,
                workers=workers,
                scheduler=scheduler or ("threads" if threads else None),
                skip_bad=skip_bad,
                progress=progress,
                overwrite=overwrite,
                splits=splits,
                labels=labels,
            )
    except BadCasesError as err:
        for message in err.messages:
            click.echo(message, err=True)
        raise click.ClickException(f"{err.summary}; fix them or pass --skip-bad") from err
    except BrainprepError as err:
        raise click.ClickException(one_line(err)) from err
    click.echo(summary.line(params.store.kind))
