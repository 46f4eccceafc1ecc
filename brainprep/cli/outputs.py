"""Output paths of the commands: one that cannot be written is a one-line error naming it, not a traceback.

Every writer creates the missing folders above its output (``manifest -o``, ``train --out``, ...), so a
missing folder is fine. A folder above the output that is a file, or that is read-only, is refused when
the options are parsed, before any work (:func:`writable_output`, a click callback). A write that fails
later anyway (a full disk, a folder made read-only meanwhile) becomes the same one line in
:func:`writing`. Both name the output as it was given.

An output whose format follows from its suffix (a picture, an ``.npz``) must carry one its writer
supports, checked with the same parse (:func:`suffixed_output`): matplotlib and Pillow would otherwise
refuse it after the work, and numpy would write ``foo.npz`` for ``foo``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click


def output_problem(path: Path) -> str | None:
    """Why ``path`` cannot be written (``None``: it can, as far as can be told without writing).

    The nearest existing path of ``path`` and the folders above it decides: a folder must be writable, a
    file is fine only as ``path`` itself (it is replaced).
    """
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return None if os.access(candidate, os.W_OK | os.X_OK) else f"folder {candidate} is read-only"
        if candidate.exists():
            return None if candidate == path else f"{candidate} is a file, not a folder"
    return None


def writable_output(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback of an output option or argument: refuse a path :func:`output_problem` rejects."""
    if value is not None:
        problem = output_problem(Path(value))
        if problem is not None:
            raise click.BadParameter(f"cannot write {value}: {problem}")
    return value


def suffix_problem(path: Path, suffixes: tuple[str, ...]) -> str | None:
    """Why the suffix of ``path`` is not one of ``suffixes`` (``None``: it is).

    Case counts: numpy would write ``foo.NPZ.npz`` for ``foo.NPZ``, so ``.PNG`` is refused alike.
    """
    name = Path(path).name
    if any(name.endswith(s) and len(name) > len(s) for s in suffixes):  # .nii.gz: a suffix of two parts
        return None
    allowed = suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"
    parts = max(s.count(".") for s in suffixes)  # show as many suffix parts as the allowed ones have
    return f"needs a {allowed} suffix, found {''.join(Path(name).suffixes[-parts:]) or 'none'}"


def suffixed_output(*suffixes: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """Click callback of an output whose format is its suffix: one of ``suffixes``, then
    :func:`writable_output`."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        problem = None if value is None else suffix_problem(Path(value), suffixes)
        if problem is not None:
            raise click.BadParameter(f"cannot write {value}: {problem}")
        return writable_output(ctx, param, value)

    return check


def _concerns(error: OSError, path: Path) -> bool:
    """Whether ``error`` is about ``path``: the path, a folder above it, a file in it, or a sibling file
    named after it (the ``.partial`` / ``.lock`` / ``.tmp`` files writers make next to their output)."""
    target = Path(os.path.abspath(path))
    names = [name for name in (error.filename, error.filename2) if name is not None]
    if not names:
        return str(path) in str(error) or str(target) in str(error)
    for name in names:
        where = Path(os.path.abspath(os.fsdecode(name)))
        if where == target or where in target.parents or target in where.parents:
            return True
        if where.parent == target.parent and target.name in where.name:
            return True
    return False


@contextlib.contextmanager
def writing(*paths: Path | None) -> Iterator[None]:
    """Turn an ``OSError`` on one of the output ``paths`` into a one-line ``click.ClickException``.

    Errors of brainprep's own (``StoreSpaceError`` ...) and those about other files pass through.
    """
    from brainprep.errors import BrainprepError

    try:
        yield
    except OSError as error:
        if isinstance(error, BrainprepError):
            raise
        path = next((p for p in paths if p is not None and _concerns(error, Path(p))), None)
        if path is None:
            raise
        reason = output_problem(Path(path)) or error.strerror or str(error)
        raise click.ClickException(f"cannot write {path}: {reason}") from error
