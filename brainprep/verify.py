"""Verify a store without its manifest: everything a sealed store says about itself, checked.

:func:`check_store_consistency` reports, as :class:`~brainprep.manifest.Difference` rows naming the array,
shard or chunk, slot and case:

- an incomplete store (one row, saying how to resume it), and nothing else, since it has no tables yet;
- a store that does not even open for checking (an array's metadata that does not parse, a damaged
  file: one row), or whose ``images`` / ``labels`` metadata is not brainprep's (another shape, dtype or
  shard layout: one row, since its chunks cannot be read as written);
- metadata that fails its digest (a hand-edited parameter or split), a table that fails its digest;
- every chunk that is missing or fails its checksum (crc32c in Zarr, fletcher32 in HDF5), and every case
  whose stored chunks no longer give its recorded data digest (a chunk swapped for another valid one);
- the patch table against the stored labels (case, split, tumour and class fractions of every slot) and,
  with ``check_images``, that every image patch decodes to finite values.

A store built before checksums existed gets the table checks and the array shapes against its parameters
only; :func:`unverified_note` says so. A store whose chunks carry checksums but whose metadata has lost its
integrity block is damaged (only a sealing brainprep writes checksummed chunks).

:func:`check_open_store` runs the same checks on a store already open (:func:`open_to_check`), so that
:mod:`brainprep.manifest` checks a store and hashes it through one handle.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.errors import StoreCorruptError
from brainprep.manifest import Difference, _progress
from brainprep.sample import patch_fractions
from brainprep.store import integrity, schema
from brainprep.store.reader import PATCHES, open_store, resume_hint, store_kind
from brainprep.store.shards import checksum_digest

#: Tolerance of the recomputed tumour / class fractions (stored as float32).
FRACTION_ATOL = 1e-6


def open_to_check(location: str | Path, *, storage_options: dict[str, Any] | None = None) -> Any:
    """``location`` opened as the checks here need it: incomplete or failing its digests, to report it."""
    return open_store(
        location, require_complete=False, check_integrity=False, storage_options=storage_options
    )


def unverified_note(location: str | Path, *, storage_options: dict[str, Any] | None = None) -> str | None:
    """A one-line note when ``location`` is a complete store built without checksums (else ``None``)."""
    with open_to_check(location, storage_options=storage_options) as store:
        return store_note(store)


def store_note(store: Any) -> str | None:
    """:func:`unverified_note` of an open store (from :func:`open_to_check`)."""
    metadata = store.metadata
    if (
        metadata.get("complete")
        and not integrity.is_sealed(metadata)
        and not store.chunks_checksummed(metadata)
    ):
        return (
            f"{store.location} was built without checksums (brainprep {metadata.get('tool_version', '?')}): "
            "its chunks cannot be checked without a manifest; only its tables were checked"
        )
    return None


def short_problem(error: Exception, location: str) -> str:
    """The problem part of a reader's message, for a row that names the array, slot and case already while
    verify runs: without its ``"<what>: "`` prefix, `` in LOCATION/...`` and its advice to run verify."""
    text = re.split(r"; run `brainprep verify", str(error), maxsplit=1)[0]
    text = re.sub(f" in {re.escape(str(location))}\\S*", "", text)
    return text.split(": ", 1)[-1]


def check_table_slot(
    label: np.ndarray, tumour_fraction: float, class_fractions: np.ndarray, n_classes: int
) -> list[str]:
    """Problems of one valid slot's table row against its label patch (``[]`` when consistent).

    Args:
        n_classes: foreground classes of the store's dataset spec.
    """
    problems = []
    values = np.unique(label)
    if values.size and int(values.max()) > n_classes:
        problems.append(f"label values must be in 0..{n_classes}, found {values}")
    want_tumour, want_classes = patch_fractions(label, n_classes)
    if not np.isclose(tumour_fraction, want_tumour, rtol=0.0, atol=FRACTION_ATOL):
        problems.append(f"tumour fraction {tumour_fraction:.6f} in the table, labels give {want_tumour:.6f}")
    if not np.allclose(class_fractions, want_classes, rtol=0.0, atol=FRACTION_ATOL):
        problems.append(
            f"class fractions {np.round(class_fractions, 6).tolist()} in the table, labels give "
            f"{np.round(want_classes, 6).tolist()}"
        )
    return problems


def check_store_consistency(
    location: str | Path,
    *,
    check_images: bool = True,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> list[Difference]:
    """Every way the store at ``location`` disagrees with itself (``[]`` when it is whole); see the module
    docstring for what is checked. ``storage_options``: fsspec options of a remote store."""
    found = check_store(
        location, check_images=check_images, progress=progress, storage_options=storage_options
    )
    return found[0]


def check_store(
    location: str | Path,
    *,
    check_images: bool = True,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[Difference], str | None]:
    """:func:`check_store_consistency` and, when it finds nothing, :func:`unverified_note`, from one open
    of the store (``brainprep verify``)."""
    try:
        store = open_to_check(location, storage_options=storage_options)
    except StoreCorruptError as error:  # an array's metadata that does not read, a damaged file
        return [open_problem(error, location)], None
    with store:
        differences = check_open_store(store, check_images=check_images, progress=progress)
        return differences, None if differences else store_note(store)


def open_problem(error: StoreCorruptError, location: str | Path) -> Difference:
    """The row of a store that does not open for checking (damaged array metadata, a damaged file)."""
    return Difference("metadata", "(open)", short_problem(error, str(location)))


def check_open_store(store: Any, *, check_images: bool = True, progress: bool = False) -> list[Difference]:
    """:func:`check_store_consistency` of a store opened by :func:`open_to_check` (left open: the manifest
    hashes the same handle)."""
    metadata = store.metadata
    if metadata.get("complete") is not True:
        return [Difference("metadata", "complete", f"store is not complete: {resume_hint(store.location)}")]
    out = _metadata_differences(metadata, store.chunks_checksummed(metadata))
    if store_kind(metadata) != PATCHES:
        from brainprep.verify_volumes import check_volume_store

        return out + check_volume_store(store, progress)
    shape = store.shape_problem()
    if shape is not None:
        return [*out, Difference("metadata", "params", shape)]
    layout = store.layout_problem()
    if layout is not None:  # its chunks cannot be located: nothing below could be read as it reads
        return [*out, Difference("metadata", "layout", layout)]
    tables, table_differences = _read_tables(store, metadata)
    out.extend(table_differences)
    if tables is None:
        return out
    store.use_table(tables)  # the tables as read, even where they fail their digests (reported above)
    damaged, data_differences = _data_differences(store, tables, progress)
    out.extend(data_differences)
    out.extend(_table_differences(store, tables, damaged, check_images, progress))
    return out


def _metadata_differences(metadata: dict[str, Any], checksummed: bool) -> list[Difference]:
    if not integrity.is_sealed(metadata):
        missing = Difference("metadata", integrity.INTEGRITY_KEY, integrity.MISSING_SEAL)
        return [missing] if checksummed else []
    problem = integrity.metadata_problem(metadata)
    return [] if problem is None else [Difference("metadata", schema.ATTRS_KEY, problem)]


def _read_tables(
    store: Any, metadata: dict[str, Any]
) -> tuple[dict[str, np.ndarray] | None, list[Difference]]:
    """The table arrays (without their digest check) and a row for each that fails its digest; ``None``
    when one cannot be read at all, or has another shape than the store's (its rows would not line up
    with the slots)."""
    tables, out = {}, []
    shapes = _table_shapes(store)
    for name in (*schema.PATCH_TABLE_ARRAYS, schema.CASE_MEAN, schema.CASE_STD):
        try:
            tables[name] = store.read_table_array(name, check=False)
        except StoreCorruptError as error:
            out.append(Difference(name, "(table)", short_problem(error, store.location)))
            return None, out
        if tables[name].shape != shapes[name]:
            problem = f"shape {tables[name].shape}, the store's slots, cases and classes give {shapes[name]}"
            return None, [*out, Difference(name, "(table)", problem)]
        try:
            integrity.check_table(store.location, metadata, name, tables[name])
        except StoreCorruptError:
            out.append(Difference(name, "(table)", "does not match its recorded digest (edited or damaged)"))
    return tables, out


def _table_shapes(store: Any) -> dict[str, tuple[int, ...]]:
    """The shape of each table of a patch store (:func:`~brainprep.store.schema.table_shapes` of its
    slots, cases and spec)."""
    n_cases = len(store.metadata.get("cases", []))
    return schema.table_shapes(int(store.n_slots), n_cases, store.spec.n_classes, len(store.spec.channels))


def _data_differences(
    store: Any, tables: dict[str, np.ndarray], progress: bool
) -> tuple[set[int], list[Difference]]:
    """Missing or damaged chunks and changed case digests; returns the damaged slots too."""
    metadata = store.metadata
    per_case = int(store.params.sampling.patches_per_case)
    valid = np.asarray(tables[schema.PATCH_VALID], dtype=bool)
    damaged: set[int] = set()
    out: list[Difference] = []
    for index, record in enumerate(_progress(metadata.get("cases", []), progress, "checking chunks", "case")):
        slots = range(index * per_case, (index + 1) * per_case)
        if not valid[slots.start : slots.stop].any():
            continue  # a case without patches has no chunks to check
        for which, name in enumerate((schema.IMAGES, schema.LABELS)):
            found = _case_chunks(store, which, name, slots, valid, record["case_id"])
            out.extend(found.problems)
            damaged.update(found.damaged)
            want = (record.get("data_digest") or {}).get(name) if integrity.is_sealed(metadata) else None
            if want is not None and not found.problems and checksum_digest(found.chunks) != want:
                out.append(
                    Difference(
                        name,
                        found.key,
                        "stored chunks no longer give the case's recorded data digest (a chunk was replaced)",
                        (slots.start, slots.stop - 1),
                        (record["case_id"],),
                    )
                )
    return damaged, out


class _CaseChunks:
    """What reading one case's chunks of one array found."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.chunks: list[bytes] = []
        self.problems: list[Difference] = []
        self.damaged: list[int] = []


def _case_chunks(
    store: Any, which: int, name: str, slots: range, valid: np.ndarray, case_id: str
) -> _CaseChunks:
    """The stored chunks of one case of array ``name``: every slot of its Zarr shard (the layout is
    checked first, so a complete Zarr store has its shard readers), or its valid HDF5 slots; each missing
    or damaged one becomes a problem row."""
    if store.format == "hdf5":
        dataset = (store.images, store.labels)[which]
        found = _CaseChunks(f"slots {slots.start}-{slots.stop - 1}")
        read: Callable[[int], bytes] = lambda slot: _hdf5_chunk(dataset, slot)  # noqa: E731
        wanted = [s for s in slots if valid[s]]
    else:
        reader = store._shards[which]
        found = _CaseChunks(reader.layout.key(slots.start // reader.layout.per_shard))
        try:
            reader.index(slots.start // reader.layout.per_shard)
        except StoreCorruptError as error:
            problem = short_problem(error, store.location)
            found.problems.append(
                Difference(name, found.key, problem, (slots.start, slots.stop - 1), (case_id,))
            )
            found.damaged.extend(slots)
            return found
        read = reader.chunk
        wanted = list(slots)
    for slot in wanted:
        try:
            found.chunks.append(read(slot))
        except StoreCorruptError as error:
            problem = short_problem(error, store.location)
            found.problems.append(Difference(name, found.key, problem, (slot, slot), (case_id,)))
            found.damaged.append(slot)
    return found


def _hdf5_chunk(dataset: Any, slot: int) -> bytes:
    from brainprep.store.hdf5_store import stored_slot_chunk

    offset = stored_slot_chunk(dataset, slot)
    if offset is None:
        raise StoreCorruptError(f"chunk of slot {slot} missing")
    return bytes(dataset.id.read_direct_chunk(offset)[1])


def _table_differences(
    store: Any, tables: dict[str, np.ndarray], damaged: set[int], check_images: bool, progress: bool
) -> list[Difference]:
    """The patch table against the metadata and the stored labels (damaged slots are not decoded again)."""
    metadata = store.metadata
    per_case = int(store.params.sampling.patches_per_case)
    records = metadata.get("cases", [])
    ids = [record["case_id"] for record in records]
    valid = np.asarray(tables[schema.PATCH_VALID], dtype=bool)
    out: list[Difference] = []
    if len(ids) * per_case != store.n_slots:
        out.append(Difference("table", "(shape)", f"{store.n_slots} slots for {len(ids)} cases x {per_case}"))
    for index, record in enumerate(records):
        n_valid = int(valid[index * per_case : (index + 1) * per_case].sum())
        if record.get("n_patches") is not None and int(record["n_patches"]) != n_valid:
            out.append(
                Difference(
                    "table",
                    f"case {index}",
                    f"n_patches is {record['n_patches']} in the metadata, {n_valid} valid slots in the table",
                    None,
                    (record["case_id"],),
                )
            )
    for slot in _progress(list(range(store.n_slots)), progress, "checking slots", "slot"):
        if slot in damaged:
            continue
        found = _slot_problems(store, tables, slot, per_case, records, check_images)
        case = (ids[slot // per_case],) if slot // per_case < len(ids) else ()
        out.extend(Difference("table", f"slot {slot}", p, (slot, slot), case) for p in found)
    return out


def _slot_problems(
    store: Any, tables: dict[str, np.ndarray], slot: int, per_case: int, records: list, check_images: bool
) -> list[str]:
    case_index, case, split = slot // per_case, tables[schema.PATCH_CASE], tables[schema.PATCH_SPLIT]
    if not tables[schema.PATCH_VALID][slot]:
        if int(case[slot]) != schema.EMPTY_SLOT or int(split[slot]) != schema.EMPTY_SLOT:
            return [f"empty slot has case {int(case[slot])} and split {int(split[slot])}, expected -1"]
        return []
    problems = []
    if int(case[slot]) != case_index:
        problems.append(
            f"case index {int(case[slot])} in the table, slot {slot} belongs to case {case_index}"
        )
    if case_index < len(records):
        want_split = schema.SPLIT_CODES.get(records[case_index].get("split", ""), None)
        if want_split is not None and int(split[slot]) != want_split:
            problems.append(
                f"split code {int(split[slot])} in the table, case split is {records[case_index]['split']}"
            )
    try:
        label = store.read_label(slot)
        problems.extend(
            check_table_slot(
                label,
                float(tables[schema.PATCH_TUMOUR_FRACTION][slot]),
                np.asarray(tables[schema.PATCH_CLASS_FRACTIONS][slot]),
                store.spec.n_classes,
            )
        )
        if check_images and not np.isfinite(store.read_image(slot)).all():
            problems.append("image patch holds NaN or Inf")
    except StoreCorruptError as error:
        problems.append(f"cannot decode patch: {short_problem(error, store.location)}")
    return problems
