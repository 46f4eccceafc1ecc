"""The ``brainnet`` command line: train, evaluate and predict over brainprep stores."""

from __future__ import annotations

import logging

import click

from brainnet import __version__
from brainprep.cli import LazyGroup

COMMANDS: dict[str, str] = {
    "train": "brainnet.cli.train:train",
    "evaluate": "brainnet.cli.evaluate:evaluate",
    "predict": "brainnet.cli.predict:predict",
    "demo": "brainnet.cli.demo:demo",
    "sample": "brainnet.cli.sample:sample",
}
HELP = {
    "train": "Train the 3D U-Net on a patch or volume store.",
    "evaluate": "Dice, sensitivity and specificity of a checkpoint on a store split.",
    "predict": "Segment whole scans with sliding windows; write NIfTI in the source space.",
    "demo": "The whole pipeline end to end on the embedded synthetic dataset.",
    "sample": "N samples of a patch or volume store as training reads them (.npz, optional PNG).",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, short_help=HELP)
@click.version_option(__version__, prog_name="brainnet")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """brainnet: a thin PyTorch 3D U-Net over brainprep patch and volume stores."""
    try:  # every brainnet command needs torch; `pip install brainprep` is the offline half alone
        import torch  # noqa: F401
    except ImportError as err:
        raise click.ClickException(
            f'brainnet needs PyTorch and TensorBoard ({err}): pip install "brainprep[train]" (see the README)'
        ) from err
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
