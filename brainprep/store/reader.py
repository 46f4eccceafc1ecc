"""Read a patch store (Zarr v3 or HDF5, local or remote) through one small API.

``open_store(location)`` returns a :class:`PatchStore`; brainnet's DataLoader and the other commands use
it. A ``PatchStore`` pickles as its location alone: each DataLoader worker process reopens its own
handle on first use (an h5py handle or a zarr store must not be shared across processes).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brainprep.errors import StoreCorruptError, StoreError, StoreIncompleteError, StoreUnreachableError
from brainprep.params import STORE_KINDS, BuildParams
from brainprep.spec import DatasetSpec, spec_from_metadata
from brainprep.store import integrity, locations, schema

if TYPE_CHECKING:
    from brainprep.store.chunk_cache import ChunkCacheParams

logger = logging.getLogger(__name__)
#: locations already reported as unverified (a store without checksums is named once per process)
_WARNED_UNVERIFIED: set[str] = set()

#: the two store kinds, as :data:`brainprep.params.STORE_KINDS` names them (patch stores first: the default)
PATCHES, VOLUMES = STORE_KINDS

#: What zarr, h5py and zipfile raise for damaged array metadata: a ``zarr.json`` that is not JSON, names an
#: unknown codec or dtype, or gives an impossible chunk grid (ValueError and zarr's errors, TypeError,
#: KeyError, ZeroDivisionError...), an HDF5 object header failing its checksum (KeyError, RuntimeError,
#: OSError), a packed member failing its CRC-32 (BadZipFile). Caught only around reads of stored bytes.
DAMAGE_ERRORS: tuple[type[BaseException], ...] = (
    LookupError,
    ValueError,
    TypeError,
    AttributeError,
    ArithmeticError,
    RuntimeError,
    OSError,
    zipfile.BadZipFile,
)
#: characters of a library's message kept in a one-line error
_REASON_CHARS = 200


def store_kind(metadata: dict[str, Any]) -> str:
    """``"patches"`` or ``"volumes"`` (``params.store.kind``; absent in every patch store)."""
    return str(((metadata.get("params") or {}).get("store") or {}).get("kind", PATCHES))


def damage_reason(error: BaseException) -> str:
    """A library's exception as one short phrase: h5py's sentence of a KeyError, else ``Type: message``."""
    raw = error.args[0] if isinstance(error, KeyError) and error.args else error
    text = " ".join(str(raw).split())
    if len(text) > _REASON_CHARS:
        text = text[: _REASON_CHARS - 3] + "..."
    return text if isinstance(error, KeyError) and " " in text else f"{type(error).__name__}: {text}"


def corrupt_error(
    location: str, what: str, error: BaseException | None = None, owner: str | None = None
) -> StoreCorruptError:
    """The one-line error of damaged stored bytes: ``"<location>: <what> (<reason>); run brainprep verify"``,
    or with ``owner`` (``"images of case X"``) ``"<owner>: <what> (<reason>) in <location>; ..."``; the
    reason is ``error``'s (:func:`damage_reason`), left out without one."""
    what = what if error is None else f"{what} ({damage_reason(error)})"
    where = f"{owner}: {what} in {location}" if owner else f"{location}: {what}"
    return StoreCorruptError(f"{where}; run `brainprep verify {location}`")


@contextlib.contextmanager
def unreadable_as_corrupt(location: str, what: str, owner: str | None = None) -> Iterator[None]:
    """Turn what a library raises for damaged metadata read in the block (:data:`DAMAGE_ERRORS`) into one
    :func:`corrupt_error`; brainprep's own errors (an unreachable server) pass unchanged."""
    try:
        yield
    except StoreError:
        raise
    except DAMAGE_ERRORS as error:
        raise corrupt_error(location, what, error, owner) from error


def open_array(handle: Any, key: str, location: str, owner: str | None = None) -> Any:
    """Array ``key`` of an open Zarr group or HDF5 file. The patch and volume readers open arrays through
    this, and the manifest reads array documents through :func:`unreadable_as_corrupt`, so damaged
    metadata is the same one line everywhere.

    Raises:
        StoreCorruptError: the array is missing (``array X missing``), its HDF5 header does not open
            (``array X missing or unreadable (...)``) or its metadata does not parse (``array X metadata
            unreadable (JSONDecodeError: ...)``); the message names ``location`` (and ``owner``).
    """
    try:
        return handle[key]
    except StoreError:
        raise
    except KeyError as error:
        if error.args[:1] == (key,):  # zarr's word for an array that is not there
            raise corrupt_error(location, f"array {key} missing", None, owner) from error
        raise corrupt_error(location, f"array {key} missing or unreadable", error, owner) from error
    except DAMAGE_ERRORS as error:
        raise corrupt_error(location, f"array {key} metadata unreadable", error, owner) from error


def resume_hint(location: str | os.PathLike) -> str:
    """Why a store is not complete and how to finish it, naming its build state when one is here; the one
    wording of it (the reader's refusals and :mod:`brainprep.verify` use it)."""
    path = Path(str(location))
    state = path.with_name(path.name + schema.BUILD_DIR_SUFFIX)
    local = locations.location_kind(str(location)) == locations.LOCAL
    where = f" (its build state is in {state})" if local and state.is_dir() else ""
    return (
        f"its build is still running or was interrupted{where}; rerun the same `brainprep build-patches` "
        "command to finish it"
    )


@dataclass(frozen=True, eq=False)
class PatchTable:
    """The per-slot patch table, read once (N slots).

    Attributes:
        valid: bool (N,), slot holds a patch.
        case: int32 (N,), case index, -1 for an empty slot.
        corner: int32 (N, 3), (x, y, z) corner on the case's RAS grid.
        tumour_fraction: float32 (N,), share of voxels with label > 0.
        class_fractions: float32 (N, 3), shares of edema, non-enhancing, enhancing.
        split: int8 (N,), 0 train, 1 val, -1 empty slot.
    """

    valid: np.ndarray
    case: np.ndarray
    corner: np.ndarray
    tumour_fraction: np.ndarray
    class_fractions: np.ndarray
    split: np.ndarray


def consecutive_runs(sorted_slots: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` positions of the runs of consecutive values in a sorted int array.

    >>> consecutive_runs(np.array([2, 3, 4, 9, 11, 12]))
    [(0, 3), (3, 4), (4, 6)]
    """
    if len(sorted_slots) == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_slots) != 1) + 1
    bounds = [0, *breaks.tolist(), len(sorted_slots)]
    return list(itertools.pairwise(bounds))


def _layout_difference(array: Any) -> str:
    """What of a Zarr patch array's metadata differs from brainprep's shard layout, for a message
    (:func:`brainprep.store.shards.shard_layout` decides whether it does; this only names the field)."""
    from zarr.codecs import ShardingCodec

    if array.fill_value != 0:
        return f"fill_value {array.fill_value}, brainprep writes 0"
    codecs = tuple(array.metadata.codecs)
    names = [codec.to_dict().get("name") for codec in codecs]
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return f"codecs {names}, brainprep writes one sharding_indexed codec"
    sharding = codecs[0]
    chunk, want = tuple(sharding.chunk_shape), (1, *(int(s) for s in array.shape[1:]))
    if chunk != want:
        return f"inner chunk shape {chunk}, brainprep writes {want} (one patch per chunk)"
    inner = [codec.to_dict().get("name") for codec in sharding.codecs]
    index = [codec.to_dict().get("name") for codec in sharding.index_codecs]
    return (
        f"inner codecs {inner}, index codecs {index} at the {sharding.index_location.value}, dtype "
        f"{np.dtype(array.dtype).str}; brainprep writes bytes, blosc, crc32c, an index of bytes, crc32c at "
        "the end, little-endian"
    )


class PatchStore:
    """An open patch store. Use :func:`open_store` to make one.

    Attributes:
        location: where the store lives (a path string or URL).
        format: ``"zarr"`` or ``"hdf5"``.
        kind: ``"local"``, ``"zip"``, ``"http"``, ``"s3"`` or ``"gs"`` (:mod:`brainprep.store.locations`).
        storage_options: fsspec options of a remote store (``None`` for none).
        cache: the disk cache a remote Zarr store reads through (``None`` for none).
    """

    def __init__(
        self,
        location: str | os.PathLike,
        *,
        require_complete: bool = True,
        check_integrity: bool = True,
        storage_options: dict[str, Any] | None = None,
        cache: ChunkCacheParams | None = None,
    ):
        self.location = os.fspath(location)
        self.format = locations.store_format(self.location)
        self.kind = locations.location_kind(self.location)
        self.require_complete = require_complete
        self.check_integrity = check_integrity
        self.storage_options = storage_options
        self.cache = cache
        self._handle: Any = None
        self._images: Any = None
        self._labels: Any = None
        self._metadata: dict[str, Any] | None = None
        self._table: PatchTable | None = None
        self._shards: tuple[Any, Any] | None = None  # ShardReader of images and labels

    # -- opening ---------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._handle is not None:
            return
        try:
            self._open_once()
        except StoreError as error:
            # a chunk cache keeps the documents it once served: a damaged copy that is still JSON would
            # fail every later open, the store being fine; read them once more from the store
            if isinstance(error, StoreUnreachableError) or not self._refresh_cached_documents():
                raise
            self._open_once()

    def _open_once(self) -> None:
        if self.format == "hdf5":
            self._open_hdf5()
        else:
            self._open_zarr()
        if store_kind(self._metadata or {}) != PATCHES:
            return
        try:
            self._images, self._labels = (self._patch_array(n) for n in (schema.IMAGES, schema.LABELS))
        except StoreCorruptError:
            self.close()  # not half open: the next call would find a handle and no arrays
            raise
        layout = self.layout_problem()
        problem = (self.shape_problem() or layout) if self.check_integrity else None
        if problem is not None:
            self.close()
            raise corrupt_error(self.location, problem)
        # an incomplete store is refused unless opened to inspect it; then zarr reads what is there
        if self.format == "zarr" and (self._metadata or {}).get("complete") and layout is None:
            self._shards = self._shard_readers()

    def _refresh_cached_documents(self) -> bool:
        """Read the root, ``images`` and ``labels`` documents of a remote Zarr store read through a chunk
        cache again from the store; True when a cached copy differed (then the store is opened again)."""
        if self.cache is None or self.format != "zarr" or self.kind == locations.LOCAL:
            return False
        from brainprep.store.remote import open_zarr_store

        try:
            store = open_zarr_store(self.location, storage_options=self.storage_options, cache=self.cache)
        except StoreError:
            return False  # the store itself does not open: the first error stands
        refresh = getattr(store, "refresh", None)
        try:
            keys = ("zarr.json", *(f"{name}/zarr.json" for name in (schema.IMAGES, schema.LABELS)))
            return refresh is not None and any([refresh(key) for key in keys])  # a list: refresh them all
        finally:
            store.close()

    def shape_problem(self) -> str | None:
        """How a complete patch store's arrays disagree with its metadata (``None`` when they agree).

        ``images`` must be (cases x K, channels, X, Y, Z) of the store dtype and ``labels`` (cases x K,
        X, Y, Z) uint8 for the recorded cases, K, channels and patch size; this catches an edited parameter
        even in a store from before metadata digests, an array resized by damage, and an edited array
        dtype (whose chunks would pass their checksums and read as other values).
        """
        metadata = self._metadata or {}
        if not metadata.get("complete") or self._images is None:
            return None
        sampling = self.params.sampling
        slots = len(metadata.get("cases", [])) * sampling.patches_per_case
        patch = tuple(sampling.patch_size)
        want = {
            schema.IMAGES: (slots, len(self.spec.channels), *patch),
            schema.LABELS: (slots, *patch),
        }
        dtypes = {schema.IMAGES: np.dtype(self.params.store.dtype), schema.LABELS: np.dtype(np.uint8)}
        for name, array in ((schema.IMAGES, self._images), (schema.LABELS, self._labels)):
            shape = tuple(int(s) for s in array.shape)
            if shape != want[name]:
                return (
                    f"array {name} has shape {shape}, its metadata (cases, K, patch size) gives {want[name]}"
                )
            # an array's own metadata (zarr.json) says how its bytes read: another dtype reads every chunk,
            # checksums and all, as other values
            if np.dtype(array.dtype) != dtypes[name]:
                found = np.dtype(array.dtype)
                return f"array {name} has dtype {found}, its metadata (store dtype) gives {dtypes[name]}"
        return None

    def layout_problem(self) -> str | None:
        """How a complete Zarr patch store's ``images`` or ``labels`` metadata differs from brainprep's shard
        layout (one phrase naming the ``zarr.json``), or ``None`` (it does not, or HDF5, or incomplete).

        Every Zarr patch store brainprep writes has that layout (one patch per chunk, one case per shard,
        Blosc then crc32c, fill value 0; stores from before checksums without the crc32c), so another one
        is a damaged or edited ``zarr.json``, refused: read by zarr instead, a missing shard and every
        empty slot would read as its fill value. A sealed store's chunks all carry a crc32c (sealing and
        chunk checksums came together), so one whose ``zarr.json`` lost it would read them unchecked.
        """
        metadata = self._metadata or {}
        if self.format != "zarr" or self._images is None or not metadata.get("complete"):
            return None
        from brainprep.store.shards import shard_layout

        for name, array in ((schema.IMAGES, self._images), (schema.LABELS, self._labels)):
            try:
                layout = shard_layout(name, array)
            except StoreError:
                return f"{name}/zarr.json is not brainprep's shard layout: {_layout_difference(array)}"
            if integrity.is_sealed(metadata) and not layout.checksummed:
                return f"{name}/zarr.json has no crc32c codec, yet the store is sealed (its chunks carry one)"
        return None

    def _patch_array(self, name: str) -> Any:
        """Array ``name`` of a patch store (:func:`open_array`: one that is gone, whose header fails its
        checksum or whose ``zarr.json`` does not parse is a :class:`StoreCorruptError`)."""
        return open_array(self._handle, name, self.location)

    def _missing(self) -> StoreError:
        """The error for a location that holds no store: incomplete when a build state exists."""
        if self.kind == locations.LOCAL:
            path = Path(self.location)
            if path.with_name(path.name + schema.BUILD_DIR_SUFFIX).is_dir():
                return StoreIncompleteError(f"{path} is not complete: {resume_hint(path)}")
        return StoreError(f"no brainprep store at {self.location}")

    def _open_zarr(self) -> None:
        import zarr

        if self.kind != locations.LOCAL:
            from brainprep.store.remote import open_zarr_store

            store = open_zarr_store(self.location, storage_options=self.storage_options, cache=self.cache)
        else:
            if not Path(self.location, "zarr.json").is_file():
                raise self._missing()
            store = self.location
        try:
            group = zarr.open_group(store, mode="r")
            metadata = group.attrs.get(schema.ATTRS_KEY)
        except StoreError:
            raise
        except zipfile.BadZipFile as err:  # the packed zarr.json fails its CRC-32
            raise StoreCorruptError(
                f"{self.location}: damaged zip member ({err}); pack or download it again"
            ) from err
        except DAMAGE_ERRORS as err:  # no zarr.json, not JSON, not Zarr v3
            raise StoreError(f"{self.location} is not a Zarr v3 patch store: {damage_reason(err)}") from err
        self._handle = group
        self._check_metadata(metadata)

    def _shard_readers(self) -> tuple[Any, Any]:
        """Checked direct readers of the image and label shards (the layout is checked by the caller)."""
        from brainprep.store.shards import LocalFiles, ShardReader, StoreBytes, shard_layout

        readers = []
        for name, array in ((schema.IMAGES, self._images), (schema.LABELS, self._labels)):
            if self.kind != locations.LOCAL:
                source: Any = StoreBytes(self._handle.store, name, self.location)
            else:
                source = LocalFiles(Path(self.location, name))
            readers.append(ShardReader(shard_layout(name, array), source, self.describe_slot))
        return readers[0], readers[1]

    def _open_hdf5(self) -> None:
        from brainprep.store.remote import close_h5_file, open_h5_file

        if self.cache is not None and self.kind != locations.LOCAL:
            logger.warning("the chunk cache serves Zarr stores only; %s is read uncached", self.location)
        if self.kind == locations.LOCAL and not Path(self.location).is_file():
            raise self._missing()
        handle = open_h5_file(self.location, storage_options=self.storage_options)
        try:
            raw = handle.attrs.get(schema.ATTRS_KEY)
        except (KeyError, OSError, RuntimeError) as err:  # a root object header failing its checksum
            close_h5_file(handle)
            raise StoreCorruptError(
                f"{self.location} is a damaged HDF5 file (its root attributes cannot be read: {err}); "
                "restore it or rebuild the store"
            ) from err
        self._handle = handle
        try:
            metadata = json.loads(raw) if raw is not None else None
        except (TypeError, ValueError):
            metadata = None
        self._check_metadata(metadata)

    def _check_metadata(self, metadata: Any) -> None:
        if not isinstance(metadata, dict) or "schema_version" not in metadata:
            self.close()
            raise StoreError(f"{self.location} has no '{schema.ATTRS_KEY}' metadata: not a brainprep store")
        if metadata["schema_version"] > schema.SCHEMA_VERSION:
            self.close()
            raise StoreError(
                f"{self.location} has schema version {metadata['schema_version']}, this brainprep reads "
                f"up to {schema.SCHEMA_VERSION}; upgrade brainprep"
            )
        if self.require_complete and not metadata.get("complete", False):
            self.close()
            raise StoreIncompleteError(
                f"{self.location} is not complete (complete=false): {resume_hint(self.location)} "
                "(or open with require_complete=False to inspect it)"
            )
        if metadata.get("complete", False) and self.check_integrity:
            self._check_integrity(metadata)
        self._metadata = metadata

    def _check_integrity(self, metadata: dict[str, Any]) -> None:
        """Refuse a sealed store whose metadata fails its digest; say once that an older one is unverified."""
        if not integrity.is_sealed(metadata):
            if self.chunks_checksummed(metadata):
                self.close()
                raise StoreCorruptError(
                    f"{self.location}: {integrity.MISSING_SEAL}; restore the store from its source or "
                    "rebuild it"
                )
            if self.location not in _WARNED_UNVERIFIED:
                _WARNED_UNVERIFIED.add(self.location)
                logger.warning(
                    "%s was built without checksums (brainprep %s): its reads are not verified; rebuild it "
                    "with this brainprep to have every chunk checked",
                    self.location,
                    metadata.get("tool_version", "?"),
                )
            return
        problem = integrity.metadata_problem(metadata)
        if problem is not None:
            self.close()
            raise StoreCorruptError(
                f"{self.location}: {problem}; restore the store from its source or rebuild it "
                f"(`brainprep verify {self.location}` lists what it can check)"
            )

    def chunks_checksummed(self, metadata: dict[str, Any]) -> bool:
        """Whether this store's chunks carry checksums (crc32c per Zarr chunk, fletcher32 per HDF5 chunk).

        Only a brainprep that seals its stores writes them (every volume store is one), so such a store
        without an integrity block had it removed: edited metadata, not a store from before checksums.
        """
        if store_kind(metadata) != PATCHES:
            return True
        try:
            images = self._patch_array(schema.IMAGES)
        except StoreCorruptError:
            return False  # refused as missing or unreadable when the arrays are opened
        if self.format == "hdf5":
            return bool(images.fletcher32)
        from brainprep.store.shards import shard_layout

        try:
            return shard_layout(schema.IMAGES, images).checksummed
        except StoreError:
            return False  # another layout: refused when the arrays are opened (layout_problem)

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def handle(self) -> Any:
        """The open ``zarr.Group`` (its ``store``: the zarr ``Store``) or ``h5py.File``: the manifest
        hashes the store's bytes through it instead of opening the store again."""
        self._open()
        return self._handle

    @property
    def metadata(self) -> dict[str, Any]:
        """The ``brainprep`` attribute (see :mod:`brainprep.store.schema`)."""
        self._open()
        assert self._metadata is not None  # set by _open; not an input check
        return self._metadata

    @property
    def params(self) -> BuildParams:
        """The build parameters (parsed once per opened metadata: readers ask for them per window)."""
        metadata = self.metadata
        cached = getattr(self, "_params_of", None)
        if cached is None or cached[0] is not metadata:
            self._params_of = (metadata, BuildParams.from_dict(metadata["params"]))
        return self._params_of[1]

    @property
    def spec(self) -> DatasetSpec:
        """The dataset spec the store was built with (a store from before the spec: MSD glioma)."""
        return spec_from_metadata(self.metadata)

    @property
    def content_id(self) -> str | None:
        """The store's content id (sha256 hex, see :mod:`brainprep.store.integrity`); ``None`` for a store
        built before stores carried one."""
        return integrity.store_id(self.metadata)

    def describe_slot(self, slot: int | None) -> str:
        """``"slot 7 (case BRATS_003)"``, for messages."""
        if slot is None:
            return "the store"
        metadata = self._metadata or {}
        cases = metadata.get("cases", [])
        per_case = int(metadata.get("params", {}).get("sampling", {}).get("patches_per_case", 0) or 0)
        if per_case and 0 <= slot // per_case < len(cases):
            return f"slot {slot} (case {cases[slot // per_case].get('case_id')})"
        return f"slot {slot}"

    @property
    def cases(self) -> list[dict[str, Any]]:
        return list(self.metadata["cases"])

    @property
    def case_ids(self) -> dict[int, str]:
        """The id of each case (``BRATS_001``) by its index in the store (``patch_case``, a window's case)."""
        return {int(c["index"]): str(c["case_id"]) for c in self.metadata["cases"]}

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[2:])  # type: ignore[return-value]

    @property
    def n_slots(self) -> int:
        return int(self.images.shape[0])

    def _require_patches(self) -> None:
        """Refuse patch-slot access to a volume store in one line (it has no slots)."""
        kind = store_kind(self.metadata)
        if kind != PATCHES:
            raise StoreError(
                f"{self.location} is a {kind} store, not a patch store: it holds no patch slots "
                "(open it with brainprep.store.open_store, which returns a VolumeStore)"
            )

    @property
    def images(self) -> Any:
        """The underlying ``zarr.Array`` / ``h5py.Dataset`` (N, 4, X, Y, Z)."""
        self._open()
        self._require_patches()
        return self._images

    @property
    def labels(self) -> Any:
        """The underlying ``zarr.Array`` / ``h5py.Dataset`` (N, X, Y, Z) uint8."""
        self._open()
        self._require_patches()
        return self._labels

    @property
    def table(self) -> PatchTable:
        self._require_patches()
        if self._table is None:
            self._open()
            self.use_table({name: self.read_table_array(name) for name in schema.PATCH_TABLE_ARRAYS})
        assert self._table is not None  # set just above; not an input check
        return self._table

    def use_table(self, arrays: dict[str, np.ndarray]) -> None:
        """Take the patch table from ``arrays`` (name -> array) instead of reading it: for
        :mod:`brainprep.verify`, which reads the tables without their digest check to report them."""
        self._table = PatchTable(
            valid=arrays[schema.PATCH_VALID].astype(bool),
            case=arrays[schema.PATCH_CASE],
            corner=arrays[schema.PATCH_CORNER],
            tumour_fraction=arrays[schema.PATCH_TUMOUR_FRACTION],
            class_fractions=arrays[schema.PATCH_CLASS_FRACTIONS],
            split=arrays[schema.PATCH_SPLIT],
        )

    def read_table_array(self, name: str, *, check: bool = True) -> np.ndarray:
        """A whole table array (patch table or case statistics), checked against its recorded digest
        (``check=False``: not, for :mod:`brainprep.verify`, which reports a mismatch instead).

        Raises:
            StoreCorruptError: the array fails its checksum or digest (edited or damaged).
        """
        self._open()
        try:
            return self._read_table_once(name, check)
        except StoreCorruptError:
            if not self._forget_cached_table(name):
                raise
            return self._read_table_once(name, check)  # read again from the store, past the chunk cache

    def _read_table_once(self, name: str, check: bool) -> np.ndarray:
        stored = open_array(self._handle, name, self.location)
        # a chunk failing its crc32c / fletcher32, or metadata that parsed but does not decode
        with unreadable_as_corrupt(self.location, f"table {name} does not decode"):
            array = np.asarray(stored[...])
        if check and self._metadata is not None and self._metadata.get("complete", False):
            integrity.check_table(self.location, self._metadata, name, array)
        return array

    def _forget_cached_table(self, name: str) -> bool:
        """Drop what a chunk cache holds of table ``name`` (its zarr.json and chunks, read whole); True when
        the store is cached, so that a damaged download is read once more from the store."""
        forget = getattr(getattr(self._handle, "store", None), "forget", None)
        if forget is None:
            return False
        dropped = forget(f"{name}/zarr.json", None)
        try:
            array = open_array(self._handle, name, self.location)
            grid = [range(-(-int(s) // int(c))) for s, c in zip(array.shape, array.chunks, strict=True)]
        except StoreCorruptError:  # its zarr.json was what failed: dropped above
            return dropped
        for coords in itertools.product(*grid):
            dropped |= forget(f"{name}/{array.metadata.encode_chunk_key(coords)}", None)
        return dropped

    def _refresh_cached(self, key: str) -> bool:
        """Read document ``key`` (``images/000003/zarr.json``) of a store read through a chunk cache again
        from the store; True when the cached copy differed (the caller reads it once more)."""
        refresh = getattr(getattr(self._handle, "store", None), "refresh", None)
        return refresh is not None and bool(refresh(key))

    def patch_indices(self, split: str | None = None) -> np.ndarray:
        """int64 slots holding a patch, ascending; only those of ``split`` (``train``/``val``) if given."""
        table = self.table
        keep = table.valid.copy()
        if split is not None:
            if split not in schema.SPLIT_CODES:
                raise StoreError(f"split must be one of {list(schema.SPLIT_CODES)}, got {split!r}")
            keep &= table.split == schema.SPLIT_CODES[split]
        return np.flatnonzero(keep).astype(np.int64)

    # -- data -------------------------------------------------------------------------------------
    def _check_slot(self, slot: int) -> int:
        slot = int(slot)
        if not 0 <= slot < self.n_slots:
            raise IndexError(f"slot {slot} out of range [0, {self.n_slots}) in {self.location}")
        return slot

    def _check_slots(self, slots: np.ndarray | list[int]) -> np.ndarray:
        """int64 (B,) ``slots``, each checked."""
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        for slot in slots:
            self._check_slot(slot)
        return slots

    def _holds_patch(self, slot: int) -> bool:
        """False for an empty slot of a complete store (it reads as zeros without touching the data,
        since a case without patches may have no shard); True otherwise."""
        if self._metadata is None or not self._metadata.get("complete", False):
            return True
        return bool(self.table.valid[slot])

    def read_image(self, slot: int) -> np.ndarray:
        """(4, X, Y, Z) image patch of ``slot`` in the store dtype (zeros for an empty slot)."""
        return self._read_one(0, slot)

    def read_label(self, slot: int) -> np.ndarray:
        """uint8 (X, Y, Z) label patch of ``slot`` (zeros for an empty slot)."""
        return self._read_one(1, slot)

    def _read_one(self, which: int, slot: int) -> np.ndarray:
        """Array ``which`` (0 images, 1 labels) of one slot, checked (see :meth:`read_patches_into`)."""
        slot = self._check_slot(slot)
        array = (self.images, self.labels)[which]
        out = np.zeros(array.shape[1:], dtype=array.dtype)
        if not self._holds_patch(slot):
            return out
        if self._shards is not None:
            self._shards[which].read_into(slot, out)
            return out
        return self._read_fallback(np.array([slot]))[which][0]

    def _require_layout(self) -> None:
        """Refuse to read a complete Zarr store whose arrays are not brainprep's layout (opened unchecked,
        for :mod:`brainprep.verify`); zarr would read its missing shards and empty slots as fill values."""
        problem = self.layout_problem()
        if problem is not None:
            raise corrupt_error(self.location, problem)

    def read_patches_into(
        self, slots: np.ndarray | list[int], images: np.ndarray, labels: np.ndarray
    ) -> None:
        """Read ``slots`` into ``images[i]`` / ``labels[i]`` (C-contiguous arrays of the store dtypes).

        A brainprep Zarr store (any location) decodes each chunk straight into the arrays after checking
        its crc32c; HDF5 checks each chunk's fletcher32; an empty slot reads as zeros.

        Args:
            slots: int (B,) slot indices (repeats allowed).
            images: (B, 4, X, Y, Z) store dtype; labels: uint8 (B, X, Y, Z).

        Raises:
            StoreCorruptError: a chunk is missing, cut short or fails its checksum; the message names the
                slot, its case and the shard or dataset. Also a complete Zarr store opened unchecked
                (``check_integrity=False``) whose metadata is not brainprep's layout (:meth:`layout_problem`).
        """
        slots = self._check_slots(slots)
        if self._shards is None:
            images[...], labels[...] = self._read_fallback(slots)
            return
        image_reader, label_reader = self._shards
        for i, slot in enumerate(slots):
            if not self._holds_patch(int(slot)):
                images[i], labels[i] = 0, 0
                continue
            image_reader.read_into(int(slot), images[i])
            label_reader.read_into(int(slot), labels[i])

    def read_patches(self, slots: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Read several slots at once, returned in the order asked (see :meth:`read_patches_into`).

        Args:
            slots: int (B,) slot indices (repeats allowed).

        Returns:
            (images (B, 4, X, Y, Z) store dtype, labels uint8 (B, X, Y, Z)).
        """
        slots = self._check_slots(slots)
        images = np.empty((len(slots), *self.images.shape[1:]), dtype=self.images.dtype)
        labels = np.empty((len(slots), *self.labels.shape[1:]), dtype=self.labels.dtype)
        self.read_patches_into(slots, images, labels)
        return images, labels

    def _read_fallback(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Checked ``slots`` of an HDF5 store, or of an incomplete Zarr store opened to inspect it (zarr
        reads what is there; it has no patch table to tell an empty slot), in the order asked."""
        self._require_layout()
        unique, inverse = np.unique(slots, return_inverse=True)  # sorted: grouped by shard (case)
        images = np.zeros((len(unique), *self.images.shape[1:]), dtype=self.images.dtype)
        labels = np.zeros((len(unique), *self.labels.shape[1:]), dtype=self.labels.dtype)
        if self.format == "zarr":
            # Runs of consecutive slots are read as basic slices: zarr 3.1's orthogonal (integer-array)
            # selection is ~30x slower per patch than a slice over the same chunks of a shard.
            for start, stop in consecutive_runs(unique):
                first, last = int(unique[start]), int(unique[stop - 1]) + 1
                images[start:stop] = self.images[first:last]
                labels[start:stop] = self.labels[first:last]
        else:
            for i, slot in enumerate(unique):
                if self._holds_patch(int(slot)):
                    self._read_hdf5_slot(int(slot), images, labels, i)
        return images[inverse], labels[inverse]

    def _read_hdf5_slot(self, slot: int, images: np.ndarray, labels: np.ndarray, i: int) -> None:
        """One valid slot of an HDF5 store into ``images[i]`` / ``labels[i]``: its chunks must be stored
        (an unallocated chunk would read as zeros) and pass their fletcher32."""
        from brainprep.store.hdf5_store import stored_slot_chunk

        for dataset, out in ((self.images, images), (self.labels, labels)):
            try:
                stored = stored_slot_chunk(dataset, slot)
            except StoreCorruptError as err:
                where = f"{self.describe_slot(slot)}: {err} in {self.location}"
                raise StoreCorruptError(f"{where}; run `brainprep verify {self.location}`") from err
            if stored is None:
                raise StoreCorruptError(
                    f"{dataset.name.lstrip('/')} of {self.describe_slot(slot)}: chunk missing in "
                    f"{self.location}; run `brainprep verify {self.location}`"
                )
            try:
                dataset.read_direct(out, np.s_[slot], np.s_[i])
            except StoreError:
                raise  # an unreachable server (a ConnectionError too) is not damage
            except OSError as error:
                raise StoreCorruptError(
                    f"{dataset.name.lstrip('/')} of {self.describe_slot(slot)}: chunk fails its checksum "
                    f"or does not decode ({error}) in {self.location}; run `brainprep verify "
                    f"{self.location}`"
                ) from error

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        handle, self._handle = self._handle, None
        self._images = self._labels = None
        self._shards = None
        if handle is not None and self.format == "hdf5":
            from brainprep.store.remote import close_h5_file

            close_h5_file(handle)

    def __enter__(self) -> PatchStore:
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "require_complete": self.require_complete,
            "check_integrity": self.check_integrity,
            "storage_options": self.storage_options,
            "cache": self.cache,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("location"), **state)  # type: ignore[misc]

    def __len__(self) -> int:
        return self.n_slots

    def __repr__(self) -> str:
        return f"PatchStore({self.location!r}, format={self.format!r})"


def open_store(
    location: str | os.PathLike,
    *,
    require_complete: bool = True,
    check_integrity: bool = True,
    storage_options: dict[str, Any] | None = None,
    cache: ChunkCacheParams | None = None,
) -> PatchStore:
    """Open a patch store for reading.

    Args:
        location: ``STORE.zarr`` folder, ``STORE.h5`` file, a packed ``.zip``, or an ``http(s)://``,
            ``s3://`` or ``gs://`` URL of any of them (:mod:`brainprep.store.locations`).
        require_complete: refuse a store whose build has not finished (the default).
        check_integrity: refuse a sealed store whose metadata fails its digest (the default; only
            :mod:`brainprep.verify` turns it off, to report the mismatch). Chunk checksums are checked
            on every read regardless.
        storage_options: fsspec options of a remote store (credentials, ``endpoint_url``, ``anon``...).
        cache: read a remote Zarr store through this size-bounded disk cache
            (:mod:`brainprep.store.chunk_cache`); ignored for local stores and HDF5.

    Returns:
        The open :class:`PatchStore`, or :class:`~brainprep.store.volume_reader.VolumeStore` for a volume
        store (opened eagerly here, so problems show at once).

    Raises:
        StoreIncompleteError: the store's build is still running or was interrupted.
        StoreCorruptError: its metadata fails its recorded digest (hand-edited or damaged).
        StoreError: nothing, or no brainprep store, at ``location``.
        StoreUnreachableError: a remote store does not answer.
        RangeRequestsUnsupportedError: an HTTP server ignores Range requests.
    """
    options = {
        "require_complete": require_complete,
        "check_integrity": check_integrity,
        "storage_options": storage_options,
        "cache": cache,
    }
    store = PatchStore(location, **options)  # type: ignore[arg-type]
    store._open()
    if store_kind(store.metadata) != PATCHES:
        from brainprep.store.volume_reader import VolumeStore

        store.close()
        store = VolumeStore(location, **options)  # type: ignore[arg-type]
        store._open()
    return store
