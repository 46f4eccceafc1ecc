"""Options shared by every command that opens a store: its location, fsspec storage options, the cache.

``brainprep stats / manifest / verify`` and ``brainnet train / evaluate`` take the same ``STORE`` and
``--storage-options JSON``; the readers of patches (train, evaluate) also take ``--cache-dir`` and
``--cache-size``. Heavy imports stay inside the callbacks, so ``--help`` stays instant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

STORAGE_OPTIONS_HELP = (
    "fsspec options of a remote store as a JSON object, e.g. '{\"anon\": true}' or "
    '\'{"endpoint_url": "http://127.0.0.1:9000"}\'. S3 also reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, '
    "AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION."
)


def store_location(value: str) -> str:
    """A URL as is; a local path must exist (click.BadParameter otherwise)."""
    from brainprep.store.locations import is_url

    if not is_url(value) and not Path(value).exists():
        raise click.BadParameter(f"{value} does not exist", param_hint="STORE")
    return value


def parse_storage_options(ctx: click.Context, param: click.Parameter, value: str | None) -> dict | None:
    """The ``--storage-options`` JSON as a dict (``None`` when not given)."""
    if value is None:
        return None
    try:
        options = json.loads(value)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"must be a JSON object, got {value!r} ({error})") from None
    if not isinstance(options, dict):
        raise click.BadParameter(f"must be a JSON object, got {type(options).__name__} {value!r}")
    return options


def storage_options_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--storage-options JSON`` -> ``storage_options: dict | None``."""
    return click.option(
        "--storage-options",
        "storage_options",
        metavar="JSON",
        default=None,
        callback=parse_storage_options,
        help=STORAGE_OPTIONS_HELP,
    )(command)


def cache_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--cache-dir DIR`` and ``--cache-size SIZE`` (read with :func:`chunk_cache`)."""
    command = click.option(
        "--cache-size",
        default="20G",
        show_default=True,
        help="Bound on --cache-dir's total size (512M, 20G, ...).",
    )(command)
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Keep the chunks read from a remote Zarr store in this folder (size-bounded), so later "
        "epochs and runs read them from disk. Off by default.",
    )(command)


def chunk_cache(cache_dir: Path | None, cache_size: str) -> Any:
    """The :class:`~brainprep.store.chunk_cache.ChunkCacheParams` of the cache options, ``None`` if off."""
    if cache_dir is None:
        return None
    from brainprep.errors import ConfigError
    from brainprep.store.chunk_cache import ChunkCacheParams, parse_size

    try:
        return ChunkCacheParams(directory=str(cache_dir), max_bytes=parse_size(cache_size))
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--cache-size") from None


def labels_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--labels CONVENTION`` -> ``labels: str | None``: the label convention of a data folder, for every
    command that reads one (``None``: detected from the layout, the case ids or the dataset.json)."""
    from brainprep.read.labels import CONVENTIONS

    return click.option(
        "--labels",
        "labels",
        type=click.Choice(list(CONVENTIONS), case_sensitive=False),
        default=None,
        help="Label convention of the data (default: detected from the layout, the case ids or the "
        "dataset.json; a folder where that is ambiguous, e.g. BraTS-PED, needs it).",
    )(command)
