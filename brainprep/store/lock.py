"""Build safety: one build per store (lock file) and the per-case completion markers of a resumable build.

``STORE.lock`` holds ``{"pid", "host", "started", "started_ticks"}`` of the build that owns the store. It
is created atomically (written under a temporary name, then hard-linked into place, which fails if it
exists), so a second build never sees a half-written lock. A lock whose pid is dead on this host is stale
(a build killed with ``kill -9``, reaped or not, or a pid since given to another process: the lock records its
owner's start time where Linux's ``/proc`` tells it) and is taken over; a lock held by a live build or
another host is refused.

``STORE.build/`` holds the state of an unfinished build (see :mod:`brainprep.store.schema`): ``build.json``
and one ``done/NNNNNN.json`` marker per finished case, each written atomically (temporary file + rename)
*after* the case's data is in place, so a marker never promises data that is not there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from brainprep.errors import StoreError, StoreLockedError
from brainprep.files import write_text_atomic
from brainprep.store.schema import BUILD_DIR_SUFFIX, LOCK_SUFFIX

logger = logging.getLogger(__name__)

BUILD_FILE = "build.json"
DONE_DIR = "done"
#: the done markers of DONE_DIR (``000012.json``), not the hidden temporaries written beside them
DONE_MARKERS = "[0-9]*.json"
PARTS_DIR = "parts"


def sibling(store: Path, suffix: str) -> Path:
    """``STORE`` + ``suffix`` in the same folder (``out.zarr`` -> ``out.zarr.lock``)."""
    return store.with_name(store.name + suffix)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and a rename (never half a file)."""
    write_text_atomic(path, json.dumps(data, sort_keys=True, indent=1))


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks since boot)`` of ``pid`` from Linux's ``/proc``, else ``None``.

    The fields after the parenthesised command name are split, since the name may hold spaces.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _pid_alive(pid: int, started_ticks: int | None = None) -> bool:
    """Whether the build process ``pid`` still runs.

    A killed process nobody has reaped yet (a zombie, state ``Z``) is dead although ``kill(pid, 0)`` still
    finds it: what ``kill -9`` of a build leaves when its parent does not wait, e.g. under a container's
    init. When the lock recorded the owner's start time, a live process with another start time is a
    later process that was given the dead build's pid.
    """
    stat = _proc_stat(pid)
    if stat is not None:
        state, ticks = stat
        if state in ("Z", "X"):
            return False
        return started_ticks is None or ticks == started_ticks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    """The lock file's owner record; ``None`` when absent, ``{}`` when unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


class BuildLock:
    """Exclusive lock of a store for one build (a context manager).

    Args:
        store: the store path (``out.zarr`` / ``out.h5``); the lock is ``out.zarr.lock``.

    Raises:
        StoreLockedError: on :meth:`acquire`, when a live build holds the lock.
    """

    def __init__(self, store: Path):
        self.store = Path(store)
        self.path = sibling(self.store, LOCK_SUFFIX)
        self._owned = False

    def _owner(self) -> dict[str, Any] | None:
        return _read_json(self.path)

    def _try_create(self) -> bool:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        stat = _proc_stat(os.getpid())
        if stat is not None:
            info["started_ticks"] = stat[1]
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(info))
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def acquire(self) -> BuildLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._try_create():
                self._owned = True
                return self
            owner = self._owner()
            if owner is None:  # released between our two calls
                continue
            pid, host, ticks = owner.get("pid"), owner.get("host"), owner.get("started_ticks")
            ticks = ticks if isinstance(ticks, int) else None
            if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid, ticks):
                logger.warning("taking over the stale lock %s of dead process %s", self.path, pid)
                stale = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.stale")
                try:
                    os.replace(self.path, stale)
                except FileNotFoundError:
                    continue
                # Another build may have taken over the same stale lock between our read and the rename:
                # then we moved *its* live lock. Put it back (link fails only if a third lock appeared).
                if _read_json(stale) != owner:
                    with contextlib.suppress(FileExistsError):
                        os.link(stale, self.path)
                stale.unlink(missing_ok=True)
                continue
            started = owner.get("started")
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
            raise StoreLockedError(
                f"{self.store} is being built by another build-patches (pid {pid} on host {host}, "
                f"since {since}); wait for it to finish, or delete {self.path} if that build is dead"
            )
        raise StoreLockedError(f"could not take the lock {self.path} of {self.store}; try again")

    def release(self) -> None:
        if self._owned:
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._owned = False

    def __enter__(self) -> BuildLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class BuildState:
    """The ``STORE.build/`` folder of an unfinished build: parameters, case list and done markers.

    Args:
        store: the store path; the state lives in ``STORE.build/``.
    """

    def __init__(self, store: Path):
        self.store = Path(store)
        self.root = sibling(self.store, BUILD_DIR_SUFFIX)

    @property
    def exists(self) -> bool:
        return (self.root / BUILD_FILE).is_file()

    def create(self, info: dict[str, Any]) -> None:
        """Start a fresh state holding ``info`` (parameters, cases), dropping any older one."""
        self.remove()
        (self.root / DONE_DIR).mkdir(parents=True)
        (self.root / PARTS_DIR).mkdir()
        write_json_atomic(self.root / BUILD_FILE, info)

    def read(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / BUILD_FILE).read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"cannot read the build state {self.root / BUILD_FILE}: {err}") from err

    def marker_path(self, index: int) -> Path:
        return self.root / DONE_DIR / f"{index:06d}.json"

    def part_path(self, index: int) -> Path:
        """Where the HDF5 chunks of case ``index`` are staged."""
        return self.root / PARTS_DIR / f"{index:06d}.npz"

    def mark_done(self, index: int, record: dict[str, Any]) -> None:
        """Record case ``index`` as finished; call only once its data is written."""
        write_json_atomic(self.marker_path(index), record)

    def forget(self, index: int) -> None:
        """Drop case ``index``'s done marker (then its staged part), so that a resume rebuilds it."""
        self.marker_path(index).unlink(missing_ok=True)
        self.part_path(index).unlink(missing_ok=True)

    def done(self) -> dict[int, dict[str, Any]]:
        """Case index -> the record of every finished case."""
        folder = self.root / DONE_DIR
        if not folder.is_dir():
            return {}
        records = {}
        for path in sorted(folder.glob(DONE_MARKERS)):
            records[int(path.stem)] = json.loads(path.read_text())
        return records

    def remove(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
