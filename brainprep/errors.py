"""Exception hierarchy of brainprep.

Every problem with an input case is a :class:`CaseError` whose message is one line naming the case, the
file and what was expected versus what was found. Exceptions also subclass the closest builtin (as
zarr-python does) so callers can catch ``FileNotFoundError`` or ``ValueError`` without importing us.
"""

from __future__ import annotations

from pathlib import Path


class BrainprepError(Exception):
    """Base class of every error raised on purpose by brainprep and brainnet."""


class CaseError(BrainprepError):
    """A problem with one input case.

    Args:
        problem: what is wrong, e.g. ``"label values must be in {0,1,2,3}, found {4}"``.
        case_id: the case identifier (``BRATS_012``), when known.
        path: the offending file, when known.
    """

    def __init__(self, problem: str, *, case_id: str | None = None, path: Path | str | None = None):
        self.problem = problem
        self.case_id = case_id
        self.path = Path(path) if path is not None else None
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = []
        if self.case_id:
            where.append(f"case {self.case_id}")
        if self.path is not None:
            where.append(f"({self.path})")
        suffix = f" in {' '.join(where)}" if where else ""
        return f"{self.problem}{suffix}"

    def __str__(self) -> str:
        return self.message


class MissingFileError(CaseError, FileNotFoundError):
    """A file the case needs does not exist."""


class UnreadableFileError(CaseError, OSError):
    """A file exists but cannot be decoded (truncated gzip, not NIfTI, permission denied...)."""


class ShapeMismatchError(CaseError, ValueError):
    """Wrong shape, channel count, or image/label shape or affine mismatch."""


class InvalidValueError(CaseError, ValueError):
    """NaN/Inf intensities, or label values outside the convention."""


class LayoutError(BrainprepError, ValueError):
    """A data folder whose layout is not one of the known BraTS layouts."""


class ConfigError(BrainprepError, ValueError):
    """A parameter that is out of range or inconsistent with another."""


class StoreError(BrainprepError):
    """A patch store cannot be created, opened or trusted."""


class StoreIncompleteError(StoreError):
    """The store was never marked complete (an interrupted or running build)."""


class StoreLockedError(StoreError):
    """Another build holds the store's lock."""


class StoreMismatchError(StoreError):
    """A store does not match its manifest or the parameters of a resumed build."""


class StoreCorruptError(StoreError, ValueError):
    """Stored bytes or metadata fail their checksum or digest, or a chunk of a complete store is missing.

    The message names the slot, its case and the shard or file, and suggests ``brainprep verify``.
    """


class StoreSpaceError(StoreError, OSError):
    """The disk holding a store being built is full (the store stays incomplete and resumable)."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` as the one line a command prints.

    An error raised in a torch DataLoader worker reaches the training process re-raised with the worker's
    whole traceback in its message (``Caught StoreCorruptError in DataLoader worker process 0. Original
    Traceback ...``); its last line is the original message, prefixed with the exception's qualified name.
    """
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(error).__name__
    last = lines[-1]
    name, _, rest = last.partition(": ")
    if rest and name.rsplit(".", 1)[-1] == type(error).__name__:
        return rest
    return " ".join(line.strip() for line in lines)


class StoreUnreachableError(StoreError, ConnectionError):
    """A remote store stopped answering (connection refused, reset or timed out) after bounded retries."""


class RangeRequestsUnsupportedError(StoreError):
    """An HTTP server that answers a ranged GET with the whole file: chunks cannot be read from it."""
