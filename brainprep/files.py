"""Writing a file so that no reader ever finds half of it: a temporary sibling, then a rename.

A write that fails part way (a full disk, a kill) leaves the previous file, or none, never a truncated
one that reads as complete; ``os.replace`` is atomic on POSIX within one folder.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name beside ``path`` (``.NAME.<hex>.tmp.SUFFIX``) to write before renaming.

    ``path``'s suffix stays last: writers such as matplotlib and PIL pick the format from it.
    """
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{path.suffix}")


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """Yield a :func:`temporary_sibling` of ``path`` to write; when the block ends without an error it
    replaces ``path``, otherwise it is removed (``path`` keeps its previous content, or stays absent).
    Folders are made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temporary sibling and a rename; folders are made.

    Returns:
        ``path``.
    """
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)
