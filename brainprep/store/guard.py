"""Remote reads that fail in one line: bounded retries, then a :class:`StoreUnreachableError` naming the URL.

Without this, a server that stops mid-training surfaces as an aiohttp traceback from zarr's event loop
thread. :class:`GuardedStore` wraps zarr's ``FsspecStore`` (and :class:`GuardedFile` the fsspec file under
an HDF5 store): a read that fails with a connection error is tried :data:`ATTEMPTS` times in all (the
first try included) with a short exponential backoff, then raises one line naming the URL of the key and
the last error. Errors that a retry cannot fix (access denied, an HTTP 4xx) raise at once; a missing key
stays what zarr expects (``FileNotFoundError`` inside ``FsspecStore``, which returns ``None``).

s3fs retries transient S3 errors itself (its ``retries`` option) before an error reaches this layer; the
retries here add a bound on top of whatever the filesystem does, they do not replace it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from brainprep.errors import StoreError, StoreUnreachableError

logger = logging.getLogger(__name__)

#: Tries of one read before giving up (the first included), and the wait before the second try (doubled
#: before each further one): a server restart of a second or two is ridden out, a dead one fails in ~1 s.
ATTEMPTS = 3
BACKOFF_S = 0.3

T = TypeVar("T")
_NOT_RETRIED = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def _retryable_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the fsspec backends that are installed (imports stay lazy)."""
    errors: list[type[BaseException]] = [OSError, TimeoutError, asyncio.TimeoutError]
    try:
        import aiohttp

        errors.append(aiohttp.ClientError)
    except ImportError:
        pass
    try:
        import botocore.exceptions

        errors.append(botocore.exceptions.BotoCoreError)
    except ImportError:
        pass
    return tuple(errors)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def classify(error: BaseException) -> str:
    """``"missing"`` (a key that is not there), ``"final"`` (a retry cannot help), ``"retry"`` or
    ``"other"`` (not a transport error: decode bugs and the like propagate unchanged)."""
    if isinstance(error, _NOT_RETRIED):
        return "missing"
    if isinstance(error, PermissionError):
        return "final"
    status = getattr(error, "status", None)  # aiohttp.ClientResponseError: retry server errors only
    if isinstance(status, int) and status < 500:
        return "final"
    return "retry" if isinstance(error, _retryable_errors()) else "other"


def unreachable(url: str, error: BaseException, attempts: int) -> StoreError:
    """The one-line error for ``url`` after ``attempts`` failed tries ending in ``error``."""
    if classify(error) == "final":
        return StoreError(f"cannot read {url}: {_first_line(error)}")
    return StoreUnreachableError(f"cannot reach {url} after {attempts} attempts: {_first_line(error)}")


def _after_failure(url: str, error: Exception, attempt: int, attempts: int) -> float:
    """Seconds to wait before try ``attempt + 1``; raises when there is none (or no retry can help)."""
    kind = classify(error)
    if kind in ("missing", "other"):
        raise error
    if kind == "final" or attempt >= attempts:
        raise unreachable(url, error, attempt) from error
    logger.info("reading %s failed (%s); try %d of %d", url, _first_line(error), attempt + 1, attempts)
    return BACKOFF_S * 2 ** (attempt - 1)


async def retry_async(url: str, call: Callable[[], Awaitable[T]], attempts: int = ATTEMPTS) -> T:
    """``await call()``, retried on connection errors; :func:`unreachable` once ``attempts`` are spent."""
    attempt = 1
    while True:
        try:
            return await call()
        except Exception as error:
            delay = _after_failure(url, error, attempt, attempts)
        await asyncio.sleep(delay)
        attempt += 1


def retry_sync(url: str, call: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """:func:`retry_async` for blocking calls (the file object under an HDF5 store)."""
    attempt = 1
    while True:
        try:
            return call()
        except Exception as error:
            delay = _after_failure(url, error, attempt, attempts)
        time.sleep(delay)
        attempt += 1


class ReadWrapperStore(WrapperStore[Store]):
    """A ``WrapperStore`` whose every read (``get_partial_values``, ``_get_many``) goes through ``get``,
    so a subclass overrides ``get`` alone (zarr's ``WrapperStore`` forwards those to the inner store)."""

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)


class GuardedStore(ReadWrapperStore):
    """Read-only zarr store over a remote ``store`` at ``url``: connection errors retried, then one line.

    Args:
        store: the ``FsspecStore`` to read.
        url: the store's URL, named in errors as ``URL/KEY``.
    """

    def __init__(self, store: Store, *, url: str) -> None:
        super().__init__(store)
        self.url = url.rstrip("/")

    def _with_store(self, store: Store) -> GuardedStore:
        return type(self)(store, url=self.url)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return await retry_async(f"{self.url}/{key}", lambda: self._store.get(key, prototype, byte_range))

    async def exists(self, key: str) -> bool:
        return await retry_async(f"{self.url}/{key}", lambda: self._store.exists(key))


class GuardedFile(io.RawIOBase):
    """A read-only file object over an fsspec file at ``url`` whose reads are retried, then one line.

    h5py reads an HDF5 store through it (h5py re-raises what a Python file object raises).
    """

    def __init__(self, fileobj: Any, url: str) -> None:
        super().__init__()
        self._file = fileobj
        self.url = url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer: Any) -> int:
        position = self._file.tell()

        def read() -> int:
            self._file.seek(position)  # a failed read may have moved the position
            data = self._file.read(len(buffer))
            memoryview(buffer).cast("B")[: len(data)] = data
            return len(data)

        return retry_sync(self.url, read)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()
