"""Read a volume store (:mod:`.volume_schema`): windows cut at any corner, standardized at read time.

``open_store(location)`` returns a :class:`VolumeStore` for a volume store. It opens, checks and pickles
exactly as a :class:`~brainprep.store.reader.PatchStore` (same locations, the same refusal of an
incomplete store or of metadata that fails its digest); what it reads is per case instead of per slot.
Every read is checked: brainprep's own chunk reader (:mod:`.volume_chunks`) checks each chunk's crc32c
before it decodes it (h5py each chunk's fletcher32), a case's shard index must list every chunk (a missing
chunk is an error, never zeros), each case array's metadata must give the dtype and shape the store and
its case table say, and the case and sampling tables must match their recorded digests.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.errors import StoreCorruptError, StoreError
from brainprep.params import STANDARDIZE_METHODS
from brainprep.store import integrity, locations, schema
from brainprep.store import volume_schema as vs
from brainprep.store.reader import DAMAGE_ERRORS, PatchStore, corrupt_error, open_array
from brainprep.volume import Crop, window_parts


@dataclass(frozen=True, eq=False)
class VolumeCaseTable:
    """The case tables of a volume store (C cases; see :mod:`.volume_schema`)."""

    split: np.ndarray
    crop_offset: np.ndarray
    crop_shape: np.ndarray
    padding: np.ndarray
    brain_corners: np.ndarray
    tumour_corners: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def _direct_layout(array: Any) -> bool:
    """:func:`~brainprep.store.volume_chunks.is_direct_layout`, False where the metadata does not compute."""
    from brainprep.store.volume_chunks import is_direct_layout

    try:
        return is_direct_layout(array)
    except DAMAGE_ERRORS:  # a chunk shape of 0, say
        return False


def _transpose_problem(array: Any) -> str | None:
    """Why a Zarr case array's chunk axis order is not the schema's (:func:`volume_schema.stored_axis_order`),
    or ``None``: an edited ``TransposeCodec`` order reads the same bytes, checksums and all, scrambled."""
    from zarr.codecs import ShardingCodec, TransposeCodec

    codecs = list(array.metadata.codecs)
    if codecs and isinstance(codecs[0], ShardingCodec):
        codecs = list(codecs[0].codecs)
    orders = [tuple(int(a) for a in c.order) for c in codecs if isinstance(c, TransposeCodec)]
    want = vs.stored_axis_order(len(array.shape))
    if orders != [want]:
        found = ", ".join(map(str, orders)) or "none"
        return f"chunk axis order (TransposeCodec) {found}, expected {want}"
    return None


class VolumeStore(PatchStore):
    """An open volume store. Use :func:`~brainprep.store.reader.open_store` to make one.

    Attributes: as :class:`~brainprep.store.reader.PatchStore`'s (``location``, ``format``, ``kind``...).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.metadata.get("complete", False) and self.metadata.get("corner_table") != vs.CORNER_TABLE:
            self.close()
            raise StoreError(
                f"{self.location} was built before its tumour corner tables covered the whole source grid "
                "(they hold only the corners inside each brain crop, so tumour windows would miss most of "
                "the course's); rebuild it with `brainprep build-patches --kind volumes --overwrite`"
            )
        self._case_table: VolumeCaseTable | None = None
        self._checked: set[str] = set()  # HDF5 case arrays whose every chunk is known to be stored
        self._readers: dict[str, Any] = {}  # case array -> its direct chunk reader (None: read by zarr)

    # -- tables ---------------------------------------------------------------------------------
    @property
    def patch_size(self) -> tuple[int, int, int]:
        """The build's patch size: the one its corner tables are computed for."""
        return self.params.sampling.patch_size

    @property
    def case_table(self) -> VolumeCaseTable:
        """The case tables, each checked against its recorded digest."""
        if self._case_table is None:
            arrays = {name: self.read_table_array(name) for name in vs.CASE_TABLE_ARRAYS}
            self._case_table = VolumeCaseTable(*(arrays[name] for name in vs.CASE_TABLE_ARRAYS))
        return self._case_table

    def case_indices(self, split: str | None = None) -> np.ndarray:
        """int64 indices of the cases that hold a volume, ascending; only those of ``split`` if given."""
        table = self.case_table
        keep = table.split != schema.EMPTY_SLOT
        if split is not None:
            if split not in schema.SPLIT_CODES:
                raise StoreError(f"split must be one of {list(schema.SPLIT_CODES)}, got {split!r}")
            keep &= table.split == schema.SPLIT_CODES[split]
        return np.flatnonzero(keep).astype(np.int64)

    def _case(self, index: int) -> dict[str, Any]:
        cases = self.metadata["cases"]
        if not 0 <= int(index) < len(cases):
            raise IndexError(f"case {index} out of range [0, {len(cases)}) in {self.location}")
        entry = cases[int(index)]
        if entry.get("crop_shape") is None:
            raise StoreError(
                f"case {entry['case_id']} of {self.location} holds no volume ({entry.get('skip_reason')})"
            )
        return entry

    def crop(self, index: int) -> Crop:
        """Where case ``index``'s crop lies on its source grid."""
        entry = self._case(index)
        return Crop(
            tuple(entry["crop_offset"]), tuple(entry["crop_shape"]), tuple(tuple(p) for p in entry["padding"])
        )  # type: ignore[arg-type]

    def corner_on_source(self, index: int, corner: Any) -> np.ndarray:
        """int64 (..., 3): corner(s) in case ``index``'s crop on its source (RAS) grid."""
        return np.asarray(corner, dtype=np.int64) + np.asarray(self.crop(index).offset, dtype=np.int64)

    def sampling_tables(self, index: int) -> dict[str, np.ndarray]:
        """``tumour_corners`` int32 (M, 3), ``tumour_voxels`` int32 (M,), ``class_locations`` int32 (L, 4)
        of case ``index`` (see :meth:`sampling_table`)."""
        return {name: self.sampling_table(index, name) for name in vs.SAMPLING_TABLES}

    def sampling_table(self, index: int, name: str) -> np.ndarray:
        """Sampling table ``name`` of case ``index``, checked against the case's recorded digest.

        Raises:
            StoreCorruptError: the table is missing, fails its chunk checksum or its digest.
        """
        entry = self._case(index)
        key = vs.case_key(name, index)
        array = self.read_table_array(key, check=False)
        want = (entry.get("data_digest") or {}).get(name)
        if integrity.is_sealed(self.metadata) and integrity.array_digest(array) != want:
            raise StoreCorruptError(
                f"{self.location}: table {key} of case {entry['case_id']} does not match its recorded "
                f"digest (edited or damaged); run `brainprep verify {self.location}`"
            )
        return array

    # -- data -----------------------------------------------------------------------------------
    def _array(self, name: str, index: int) -> Any:
        """The checked ``zarr.Array`` / ``h5py.Dataset`` of case ``index``: the dtype and shape the store
        and its case table say (:meth:`_layout_problem`) and, for HDF5, every chunk stored.

        A remote store read through a chunk cache whose cached ``zarr.json`` fails these checks reads it
        once more from the store (a damaged download is not kept for good).

        Raises:
            StoreCorruptError: the array is missing, its metadata does not parse or disagrees with the
                store's.
        """
        try:
            return self._checked_array(name, index)
        except StoreCorruptError:
            if not self._refresh_cached(f"{vs.case_key(name, index)}/zarr.json"):
                raise
            return self._checked_array(name, index)

    def _checked_array(self, name: str, index: int) -> Any:
        """:meth:`_array`, read once."""
        entry = self._case(index)
        key = vs.case_key(name, index)
        array = open_array(self._handle, key, self.location, owner=f"{name} of case {entry['case_id']}")
        if key not in self._checked:
            problem = self._layout_problem(name, entry, array)
            if problem is None and self.format == "hdf5":
                problem = self._hdf5_problem(array)
            if problem is not None:
                raise StoreCorruptError(
                    f"{name} of case {entry['case_id']}: {problem} in {self.location}/{key}; "
                    f"run `brainprep verify {self.location}`"
                )
            self._checked.add(key)
        return array

    def _layout_problem(self, name: str, entry: dict[str, Any], array: Any) -> str | None:
        """Why case array ``name`` (images or labels) cannot be read as the store says (one phrase), or
        ``None``.

        An array's own metadata (a Zarr ``zarr.json``; an HDF5 header, unchecked in files of HDF5's
        earliest format) says how its bytes are read; a damaged one reads other values, or a crop of
        another shape. The store's params (digest-checked) fix the dtype, the case table the shape."""
        expected = vs.case_array_layout(name, self.params.store.dtype, tuple(entry["crop_shape"]))
        problem = vs.layout_problem(np.dtype(array.dtype), tuple(array.shape), *expected)
        if problem is None and self.format == "zarr":
            problem = _transpose_problem(array)
        if problem is None and self.format == "zarr" and not _direct_layout(array):
            # every volume store brainprep writes has it; zarr, reading another, would give a missing
            # chunk as its fill value
            problem = (
                "codecs are not brainprep's shard layout (transpose, bytes, blosc, crc32c, a bytes, crc32c "
                "index at the end, whole shards)"
            )
        if problem is None and self.format == "hdf5":
            import h5py

            # a flipped bit in an HDF5 float type (its exponent size, say) can keep numpy's dtype but
            # convert every value: the file's type must be the native one of the dtype, field by field
            if array.id.get_type() != h5py.h5t.py_create(expected[0]):
                problem = f"datatype is not the native {expected[0]} (a damaged datatype message)"
        return problem

    @staticmethod
    def _hdf5_problem(dataset: Any) -> str | None:
        expected = math.prod(math.ceil(s / c) for s, c in zip(dataset.shape, dataset.chunks, strict=True))
        stored = dataset.id.get_num_chunks()
        return None if stored == expected else f"{expected - stored} of {expected} chunks missing"

    def source(self, key: str) -> Any:
        """Ranged reads of the files of array ``key`` (a :class:`~brainprep.store.shards.LocalFiles` or
        :class:`~brainprep.store.shards.StoreBytes`), for a Zarr store."""
        from brainprep.store.shards import LocalFiles, StoreBytes

        if self.kind == locations.LOCAL:
            return LocalFiles(Path(self.location, key))
        return StoreBytes(self._handle.store, key, self.location)

    def _direct(self, name: str, index: int) -> Any:
        """The :class:`~brainprep.store.volume_chunks.VolumeArrayReader` of a Zarr case array (``None`` for
        HDF5, which h5py reads; :meth:`_array` refuses a Zarr array laid out otherwise)."""
        from brainprep.store.volume_chunks import VolumeArrayReader

        key = vs.case_key(name, index)
        if key not in self._readers:
            array = self._array(name, index)
            reader = None
            if self.format == "zarr":
                what = f"{name} of case {self._case(index)['case_id']}"
                reader = VolumeArrayReader(array, self.source(key), what)
            self._readers[key] = reader
        return self._readers[key]

    def _read(
        self, name: str, index: int, selection: tuple[slice, ...], out: np.ndarray | None = None
    ) -> np.ndarray:
        """A block of case ``index``'s array ``name`` (written into ``out`` when given): every chunk it
        meets checked (crc32c or fletcher32); a Zarr store's chunks read directly
        (:mod:`brainprep.store.volume_chunks`), HDF5 through h5py."""
        reader = self._direct(name, index)
        if reader is not None:
            bounds = [part.indices(n)[:2] for part, n in zip(selection, reader.shape, strict=True)]
            return reader.read(tuple(a for a, _ in bounds), tuple(b for _, b in bounds), out)
        array = self._array(name, index)
        try:
            block = np.asarray(array[selection])
        except StoreError:
            raise  # an unreachable server is not damage
        except DAMAGE_ERRORS as error:  # a chunk failing its fletcher32, or metadata that does not decode
            what = "a chunk fails its checksum or does not decode"
            raise corrupt_error(
                self.location, what, error, f"{name} of case {self._case(index)['case_id']}"
            ) from error
        if out is None:
            return block
        out[...] = block
        return out

    def read_volume(self, index: int, standardize: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The whole crop of case ``index``.

        Args:
            standardize: ``None`` (raw) or ``"volume-nonzero"`` (the case's stored brain statistics, as
                :meth:`read_window`). ``"patch-slice"`` is refused: it standardizes each window on its own,
                so a whole crop has no such standardization (read it raw and standardize the windows).

        Returns:
            (image (4, X, Y, Z): store dtype raw, float32 standardized; label uint8 (X, Y, Z)).
        """
        if standardize not in (None, "volume-nonzero"):
            raise StoreError(
                f"a whole crop reads raw or 'volume-nonzero', got {standardize!r} (patch-slice standardizes "
                "each window: read windows, or the raw crop and standardize its windows)"
            )
        every = (slice(None),) * 3
        image = self._read(vs.IMAGES, index, (slice(None), *every))
        label = self._read(vs.LABELS, index, every)
        if standardize is not None:
            image = self.standardize(index, image, standardize)
        return image, label

    def standardize(self, index: int, image: np.ndarray, method: str) -> np.ndarray:
        """A raw read of case ``index`` (a window or its whole crop, (4, X, Y, Z)) standardized by ``method``
        with the case's stored statistics: a new float32 array (:func:`standardize_window`)."""
        return standardize_window(image, method, self._case(index), np.empty(image.shape, np.float32))

    def read_window(
        self,
        index: int,
        corner: Any,
        size: tuple[int, int, int] | None = None,
        standardize: str | None = None,
        *,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The window of case ``index`` at ``corner`` (in the crop), raw or standardized.

        A window may leave the crop (a negative corner, or one past ``crop - size``): voxels outside it
        read as 0, as they are in the source (the crop holds every nonzero voxel), so any window of the
        source grid can be read at ``corner = source_corner - crop_offset``.

        Args:
            index: the case.
            corner: (x, y, z) in the crop.
            size: (px, py, pz); default: the build's patch size.
            standardize: ``None`` (raw, the store dtype), ``"patch-slice"`` (the course's: each channel of
                each z-slice of this window to mean 0 / std 1, a constant slice stays 0) or
                ``"volume-nonzero"`` (the case's stored brain mean / std per channel, background 0).
            out: (image, label) arrays to write into instead of new ones (a loader's batch memory):
                image (4, px, py, pz) in the store dtype when raw, float16 or float32 when standardized
                (float16 is the training samples' dtype); label uint8 (px, py, pz).

        Returns:
            (image (4, px, py, pz): store dtype raw, float32 standardized (or ``out``'s); label uint8
            (px, py, pz)).
        """
        size = self.patch_size if size is None else tuple(int(s) for s in size)  # type: ignore[assignment]
        if standardize is not None and standardize not in STANDARDIZE_METHODS:
            raise StoreError(f"standardize must be None or one of {STANDARDIZE_METHODS}, got {standardize!r}")
        image_out, label = out if out is not None else (None, np.empty(size, dtype=np.uint8))
        if standardize is None and image_out is not None:
            raw = image_out
        else:  # a raw window only this call sees, standardized into the result
            raw = _scratch_window((schema.N_CHANNELS, *size), self.params.store.dtype)  # type: ignore[misc]
        parts = window_parts(self.crop(index).shape, corner, size)  # type: ignore[arg-type]
        if parts is None or any(t.stop - t.start != n for t, n in zip(parts[1], size, strict=True)):
            raw[...] = 0  # the window leaves the crop: zeros there, as in the source
            label[...] = 0
        if parts is not None:
            source, target = parts
            self._read(vs.IMAGES, index, (slice(None), *source), raw[(slice(None), *target)])
            self._read(vs.LABELS, index, source, label[target])
        if standardize is None:
            # raw is this thread's scratch buffer unless it is the caller's: always hand back a copy (even
            # when ascontiguousarray would not copy, e.g. a (1, 1, n) window), or a later read changes it
            return (raw if image_out is not None else raw.copy(order="C")), label
        image_out = np.empty(raw.shape, np.float32) if image_out is None else image_out
        return standardize_window(raw, standardize, self._case(index), image_out), label

    def close(self) -> None:
        self._readers, self._checked = {}, set()  # they read through the handle closed here
        super().close()

    def __len__(self) -> int:
        return len(self.metadata["cases"])

    def __repr__(self) -> str:
        return f"VolumeStore({self.location!r}, format={self.format!r})"


#: per-thread raw window buffers of :meth:`VolumeStore.read_window`, slice-major like the store's chunks
#: (reused: no page faults per window)
_WINDOWS = threading.local()


def _scratch_window(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """This thread's raw window buffer of ``shape`` and ``dtype`` (contents arbitrary; never returned to
    callers, who get a copy or a standardized result)."""
    key = (shape, dtype)
    if getattr(_WINDOWS, "key", None) != key:
        _WINDOWS.key, _WINDOWS.array = key, vs.slice_major(shape, dtype)
    return _WINDOWS.array


def standardize_window(image: np.ndarray, method: str, case: dict[str, Any], out: np.ndarray) -> np.ndarray:
    """``image`` (a raw window (4, px, py, pz)) standardized by ``method`` (see
    :meth:`VolumeStore.read_window`) into ``out`` (float16 or float32, same shape); ``case`` is the case's
    metadata entry (its float64 statistics). The course's exact float64 formulas; the training loop
    applies the same ones to raw windows in torch on its device (:mod:`brainnet.data.standardize`)."""
    from brainprep.standardize import (
        brain_mask,
        resolved_std,
        standardize_patch_slices,
        standardize_with_statistics,
    )

    if method == "patch-slice":
        return standardize_patch_slices(image, out)
    # A channel flat over the brain (std 0, or below what the stored dtype resolves: a store built before
    # the statistics were taken of the float16 values) reads as 0, the course's rule for a slice of std 0,
    # instead of its rounding errors divided by max(std, 1e-8).
    std = resolved_std(case["mean"], case["std"], image.dtype)
    flat = std == 0
    # the store keeps each crop relative to the case's background (volume_schema), so the brain is the
    # nonzero voxels here, as it was when the build took the statistics
    mask = brain_mask(image, 0.0)
    out[...] = standardize_with_statistics(image, case["mean"], np.where(flat, 1.0, std), mask=mask)
    out[flat] = 0
    return out
