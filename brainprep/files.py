"""Writing a file so that no reader ever finds half of it: a temporary sibling, then a rename.

A write that fails part way (a full disk, a kill) leaves the previous file, or none, never a truncated
one that reads as complete; ``os.replace`` is atomic on POSIX within one folder.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name beside ``path`` (``.NAME.<hex>.tmp``) to write before renaming."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temporary sibling and a rename; folders are made.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
