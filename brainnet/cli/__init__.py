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
}
HELP = {
    "train": "Train the 3D U-Net on a patch store.",
    "evaluate": "Dice, sensitivity and specificity of a checkpoint on a store split.",
    "predict": "Segment whole scans with sliding windows; write NIfTI in the source space.",
    "demo": "The whole pipeline end to end on the embedded synthetic dataset.",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, short_help=HELP)
@click.version_option(__version__, prog_name="brainnet")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """brainnet: a thin PyTorch 3D U-Net over brainprep patch stores."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def error_line(error: BaseException) -> str:
    """The one-line message of ``error`` for the CLI.

    An error raised in a DataLoader worker process reaches the main process re-raised by torch with the
    worker's whole traceback as its message (``Caught X in DataLoader worker process 0. Original
    Traceback ...``); its last line holds the original message, which is what the user needs.
    """
    text = str(error)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return text
    last = text.rstrip().splitlines()[-1]
    return last.removeprefix(f"{type(error).__module__}.{type(error).__qualname__}: ")
