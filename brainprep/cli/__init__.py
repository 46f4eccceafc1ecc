"""The ``brainprep`` command line: a thin layer over the Python API.

Each command lives in its own module of this package and imports heavy dependencies inside its body,
so ``brainprep --help`` stays instant.
"""

from __future__ import annotations

import importlib
import logging

import click

from brainprep import __version__

#: command name -> "module:function" of a click command, loaded on first use.
COMMANDS: dict[str, str] = {
    "check": "brainprep.cli.check:check",
    "synth": "brainprep.cli.synth:synth",
    "show": "brainprep.cli.show:show",
    "build-patches": "brainprep.cli.build:build_patches",
    "manifest": "brainprep.cli.manifest:manifest",
    "verify": "brainprep.cli.manifest:verify",
    "pack": "brainprep.cli.manifest:pack",
    "stats": "brainprep.cli.stats:stats",
    "import-course": "brainprep.cli.course:import_course",
}

HELP = {
    "check": "Check every case of a data folder and print a table.",
    "synth": "Write a synthetic BraTS-like dataset (MSD layout, or --layout brats2021|brats2023).",
    "show": "Draw the three planes through a case's tumour (PNG, GIF).",
    "build-patches": "Build a Zarr v3 / HDF5 patch or volume store (--kind) from a data folder.",
    "manifest": "Write the manifest (parameters, cases, hashes) of a store.",
    "verify": "Verify a store's checksums, digests and tables; with --manifest, every byte.",
    "pack": "Pack a Zarr store into one zip file for sharing.",
    "stats": "Per split: patch counts, class balance, tumour fractions (volume store: crops, corners).",
    "import-course": "Convert the course's legacy h5 patch folder into a store.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked (TorchIO/pip idiom)."""

    def __init__(self, *args, lazy_commands: dict[str, str], short_help: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands
        self.short_help = short_help

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            module_name, attribute = self.lazy_commands[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.short_help.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, short_help=HELP)
@click.version_option(__version__, prog_name="brainprep")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """brainprep: BraTS MRI -> checked cases -> standardized patch stores or cropped volume stores."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
