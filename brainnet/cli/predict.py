"""``brainnet predict``: segment a whole scan with sliding windows, write the labels in the source space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from brainprep.cli.options import labels_option
from brainprep.cli.outputs import suffixed_output, writing


def _resolve_case(input_path: Path, case_id: str | None, labels: str | None, model_spec: Any):
    """The CaseFiles of INPUT: a data folder (+ --case), a case folder, or an MSD 4D image file (whose
    labels, if any, are taken to be in the convention of ``--labels`` or else of the model)."""
    from brainprep import CaseFiles, convention_spec, discover_cases
    from brainprep.read.layouts import strip_nifti_suffix

    if input_path.is_file():
        name = strip_nifti_suffix(input_path.name)
        if name is None:
            raise click.BadParameter(
                f"{input_path} is not a NIfTI file (.nii or .nii.gz)", param_hint="--input"
            )
        if input_path.parent.name in ("imagesTr", "imagesTs"):
            # An MSD image inside its dataset: discover it there so its label (labelsTr) comes along.
            return discover_cases(input_path.parent.parent, labels).case(name)
        spec = convention_spec(labels) if labels is not None else model_spec
        return CaseFiles(name, "msd", (input_path,), None, spec)
    dataset = discover_cases(input_path, labels)
    if case_id is not None:
        return dataset.case(case_id)
    if len(dataset.cases) != 1:
        raise click.BadParameter(
            f"{input_path} holds {len(dataset.cases)} cases; choose one with --case "
            f"(e.g. {', '.join(dataset.case_ids[:3])})",
            param_hint="--input",
        )
    return dataset.cases[0]


@click.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="A case folder (BraTS layouts), an MSD 4D image, or a data folder with --case.",
)
@click.option("--case", "case_id", default=None, help="Case id inside a data folder.")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    callback=suffixed_output(".nii.gz", ".nii"),
    help="OUT.nii.gz (or an uncompressed OUT.nii).",
)
@click.option(
    "--overlap",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.5,
    show_default=True,
    help="Share of a window each neighbour shares along each axis, in [0, 1): windows start every "
    "int(window x (1 - overlap)) voxels; their predictions are blended with Gaussian weights.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--source-labels", is_flag=True, help="Write the source's label convention instead of MSD's.")
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=suffixed_output(".png"),
    help="Overlay picture, FILE.png.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@labels_option
def predict(
    checkpoint: Path,
    input_path: Path,
    case_id: str | None,
    out_path: Path,
    overlap: float,
    batch_size: int,
    source_labels: bool,
    png: Path | None,
    device: str,
    progress: bool,
    labels: str | None,
) -> None:
    """Segment one scan with CHECKPOINT, preprocessed as its training store was."""
    from brainnet.metrics import DICE_DEFINITION, DICE_NAME
    from brainnet.predict import segment_case
    from brainnet.train.checkpoint import load_model
    from brainnet.train.distributed import resolve_device
    from brainprep.errors import BrainprepError, one_line

    try:
        target = resolve_device(device)
        loaded = load_model(checkpoint, target)
        files = _resolve_case(input_path, case_id, labels, loaded.spec)
        click.echo(loaded.provenance(), err=True)
        with writing(out_path, png):
            result = segment_case(
                loaded,
                files,
                out_path,
                overlap=overlap,
                batch_size=batch_size,
                source_labels=source_labels,
                png=png,
                # as evaluate: autocast only for a model trained under it (same numbers, label for label)
                amp=target.type == "cuda" and (loaded.train_config is None or loaded.train_config.amp),
                progress=progress,
            )
    except BrainprepError as err:
        raise click.ClickException(one_line(err)) from err
    # counted per class, named by the value the file holds for it (the source's with --source-labels)
    counts = [int((result.labels == c).sum()) for c in range(len(result.written_values))]
    click.echo(
        f"{result.case_id}: wrote {result.output} (voxels per label value "
        f"{'/'.join(map(str, result.written_values))}: {'/'.join(map(str, counts))})"
    )
    if result.metrics is not None:
        click.echo(DICE_DEFINITION)
        click.echo(f"{'target':<18} {DICE_NAME:>13} {'sens':>8} {'spec':>8}")
        for name in loaded.spec.targets:
            m = result.metrics[name]
            click.echo(f"{name:<18} {m['dice']:>13.4f} {m['sensitivity']:>8.4f} {m['specificity']:>8.4f}")
    if result.png is not None:
        click.echo(f"wrote {result.png}")
