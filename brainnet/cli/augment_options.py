"""``--augment`` and ``--augment-set``: the options ``brainnet train`` and ``brainnet sample`` share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

#: :data:`brainnet.augment.PRESETS`, spelled out so ``--help`` needs no torch import.
PRESET_NAMES = ("none", "flips", "nnunet")


def augment_options(
    default: str | None, help_text: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command with ``--augment PRESET`` (default ``default``) and ``--augment-set``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option(
            "--augment-set",
            "augment_set",
            multiple=True,
            metavar="BLOCK.FIELD=VALUE",
            help="Override one augmentation field, e.g. noise.p=0.2 or spatial.rotation_degrees=-15,15 "
            "(repeatable).",
        )(command)
        return click.option(
            "--augment", type=click.Choice(PRESET_NAMES), default=default, show_default=True, help=help_text
        )(command)

    return decorate


def parse_value(text: str) -> object:
    """A value of --augment-set: a number, true/false, a comma-separated tuple of numbers, or a word."""
    if "," in text:
        return tuple(parse_value(part) for part in text.split(",") if part.strip())
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(lowered) if lowered.lstrip("+-").isdigit() else float(lowered)
    except ValueError:
        return text.strip()


def augment_config(preset: str, settings: Sequence[str]) -> Any:
    """The :class:`~brainnet.augment.AugmentConfig` of ``--augment preset`` and ``--augment-set`` items."""
    from brainnet.augment import augment_preset
    from brainprep.errors import ConfigError

    overrides = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise click.BadParameter(f"expected BLOCK.FIELD=VALUE, got {item!r}", param_hint="--augment-set")
        overrides[key.strip()] = parse_value(value)
    try:
        return augment_preset(preset, overrides)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--augment-set") from error
