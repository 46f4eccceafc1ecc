"""``brainnet demo``: the whole pipeline end to end on the embedded synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import click

from brainprep.cli.outputs import writable_output, writing


@click.command()
@click.argument(
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="demo-output",
    callback=writable_output,
)
@click.option("--cases", type=click.IntRange(min=2), default=None, help="Synthetic cases (default 10).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs (default 6).")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Seed of data, split, sampling and training (default 0).",
)
@click.option(
    "--kind",
    type=click.Choice(["volumes", "patches"]),
    default=None,
    help="Store kind: volumes (default: fresh windows, the more accurate model of "
    "benchmarks/bench_accuracy.py) or patches (the course's frozen patches).",
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo in OUT_DIR.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
def demo(
    out_dir: Path,
    cases: int | None,
    epochs: int | None,
    seed: int | None,
    kind: str | None,
    overwrite: bool,
    progress: bool,
) -> None:
    """Synthesize cases, check them, draw one, build a store, train, evaluate and segment a scan.

    Everything lands in OUT_DIR (default ./demo-output); the last lines say where.
    """
    import shutil

    from brainnet.demo import DemoParams, format_result, run_demo

    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise click.BadParameter(f"{out_dir} is not empty (use --overwrite)", param_hint="OUT_DIR")
        shutil.rmtree(out_dir)
    changes = {
        k: v
        for k, v in {"n_cases": cases, "epochs": epochs, "seed": seed, "kind": kind}.items()
        if v is not None
    }
    params = DemoParams().replace(**changes)
    with writing(out_dir):
        result = run_demo(out_dir, params, progress=progress, echo=click.echo)
    click.echo(format_result(result))
