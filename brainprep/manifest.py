"""Manifest stage: a JSON record of what a store holds, and verification of a store against it.

A manifest holds the build parameters, the tool version, one row per case, the split, the schema of every
array (shape, dtype, chunks, shards, codecs; for HDF5 also its datatype message) and a sha256 of every
stored byte: for Zarr every chunk or shard file of every array plus the ``zarr.json`` metadata documents
(those of a volume store's groups too, since manifest version 2); for HDF5 every chunk's raw (still
compressed) bytes, read with ``read_direct_chunk``, plus the attributes. Zarr shards are also hashed per
inner chunk (one patch each), so a changed byte is traced to the exact patch slot and case.

A manifest seals a whole store: :func:`build_manifest` first runs the store's own checks
(:func:`brainprep.verify.check_open_store`, every chunk's checksum) and refuses a damaged store, and
:func:`verify_against_manifest` runs them too before comparing the hashes.

Hashing walks the chunk grid computed from each array's metadata instead of listing folders, so the same
code hashes a local folder, a packed ``.zarr.zip`` and a store served over plain HTTP (no listing there).

Without a manifest, :func:`brainprep.verify.check_store_consistency` checks what a store says about
itself (checksums, digests, the patch table against its labels).

Versions: 2 adds the volume store's group documents (``images/zarr.json``...); a version 1 manifest still
verifies, over what it holds (a warning says its groups are not covered).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.errors import ConfigError, StoreCorruptError, StoreError, StoreIncompleteError
from brainprep.files import write_text_atomic
from brainprep.spec import spec_from_metadata
from brainprep.store import schema
from brainprep.store.locations import HDF5, store_format
from brainprep.store.reader import PATCHES, VOLUMES, resume_hint, store_kind, unreadable_as_corrupt
from brainprep.store.remote import close_h5_file, open_h5_file, open_zarr_store
from brainprep.store.shards import chunk_ranges

logger = logging.getLogger(__name__)

MANIFEST_KIND = "brainprep-manifest"
#: 2: a volume store's group documents are hashed too (see the module docstring)
MANIFEST_VERSION = 2
#: the versions :func:`load_manifest` reads
READABLE_VERSIONS = (1, 2)
#: Arrays of the schema, hashed in this order (reached by name: HTTP stores cannot list).
ARRAY_NAMES: tuple[str, ...] = (
    schema.IMAGES,
    schema.LABELS,
    *schema.PATCH_TABLE_ARRAYS,
    schema.CASE_MEAN,
    schema.CASE_STD,
)
#: Arrays whose first axis is the case index; every other array's first axis is the patch slot.
CASE_AXIS_ARRAYS: tuple[str, ...] = (schema.CASE_MEAN, schema.CASE_STD)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Difference:
    """One way a store differs from its manifest (or from itself).

    Attributes:
        array: array name, ``"metadata"`` for documents / attributes, or ``"table"`` for consistency checks.
        key: chunk/shard key (``c/1/0/0/0/0``), document name (``images/zarr.json``) or slot (``slot 7``).
        problem: what differs, expected versus found.
        slots: ``(first, last)`` patch slots held by the chunk, when it holds patches.
        case_ids: cases those slots (or case rows) belong to.
    """

    array: str
    key: str
    problem: str
    slots: tuple[int, int] | None = None
    case_ids: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.array} {self.key}"
        held = []
        if self.slots is not None:
            first, last = self.slots
            held.append(f"slot {first}" if first == last else f"slots {first}-{last}")
        if self.case_ids:
            held.append(("case " if len(self.case_ids) == 1 else "cases ") + ", ".join(self.case_ids))
        suffix = f" [{'; '.join(held)}]" if held else ""
        return f"{where}: {self.problem}{suffix}"


# ---------------------------------------------------------------------------------------------------------
# Pure pieces: chunk keys, shard indexes, fractions.


def chunk_key(coords: tuple[int, ...], encoding: dict[str, Any]) -> str:
    """Zarr v3 key of the chunk (or shard) at grid ``coords`` under a ``chunk_key_encoding`` object."""
    name = encoding.get("name", "default")
    separator = encoding.get("configuration", {}).get("separator", "/" if name == "default" else ".")
    if name == "default":
        return separator.join(["c", *map(str, coords)])
    if name == "v2":
        return separator.join(map(str, coords)) if coords else "0"
    raise StoreError(f"unknown Zarr chunk_key_encoding {name!r}; expected 'default' or 'v2'")


def grid_shape(shape: tuple[int, ...], chunk_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks along each axis: ``ceil(shape / chunk_shape)``."""
    return tuple(math.ceil(s / c) for s, c in zip(shape, chunk_shape, strict=True))


def grid_coords(shape: tuple[int, ...], chunk_shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Every chunk coordinate of the grid, C order."""
    return itertools.product(*(range(n) for n in grid_shape(shape, chunk_shape)))


def _zarr_get(store: Any, key: str, location: str | Path) -> bytes | None:
    """All bytes of ``key`` (``None`` when absent); a packed member failing its CRC-32 is a
    :class:`StoreCorruptError` naming it."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    with unreadable_as_corrupt(str(location), f"{key} unreadable"):
        buffer = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buffer is None else buffer.to_bytes()


def zarr_array_schema(meta: dict[str, Any]) -> dict[str, Any]:
    """Shape, dtype, chunks, shards and codecs from an array's ``zarr.json`` (shards ``None`` unsharded)."""
    grid = list(meta["chunk_grid"]["configuration"]["chunk_shape"])
    codecs = list(meta["codecs"])
    if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
        config = codecs[0]["configuration"]
        return {
            "shape": list(meta["shape"]),
            "dtype": meta["data_type"],
            "chunks": list(config["chunk_shape"]),
            "shards": grid,
            "codecs": list(config["codecs"]),
            "index_codecs": list(config.get("index_codecs", [])),
            "index_location": config.get("index_location", "end"),
        }
    return {
        "shape": list(meta["shape"]),
        "dtype": meta["data_type"],
        "chunks": grid,
        "shards": None,
        "codecs": codecs,
    }


def _zarr_stored_keys(name: str, meta: dict[str, Any]) -> list[str]:
    shape = tuple(meta["shape"])
    grid = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    encoding = meta.get("chunk_key_encoding", {"name": "default"})
    return [f"{name}/{chunk_key(c, encoding)}" for c in grid_coords(shape, grid)]


def _inner_hashes(data: bytes, array: dict[str, Any]) -> dict[str, str | None] | None:
    shard_shape, inner_shape = array["shards"], array["chunks"]
    n_inner = math.prod(grid_shape(tuple(shard_shape), tuple(inner_shape)))
    index_names = [codec["name"] for codec in array["index_codecs"]]
    if index_names != ["bytes", "crc32c"] or array["index_location"] != "end":
        return None  # not a shard brainprep writes: hashed whole only
    ranges = chunk_ranges(data, n_inner)
    if ranges is None:
        return None
    return {str(i): None if r is None else sha256_hex(data[r[0] : r[0] + r[1]]) for i, r in enumerate(ranges)}


def hash_zarr(
    location: str | Path,
    *,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
    names: tuple[str, ...] = ARRAY_NAMES,
    groups: tuple[str, ...] = (),
    store: Any = None,
) -> dict[str, Any]:
    """Hash the metadata documents (the root's, each array's and each of ``groups``') and every stored
    shard/chunk of a Zarr v3 store.

    ``storage_options`` go to fsspec for a remote store (as everywhere below); ``store``: the zarr ``Store``
    of a store already open (left open), instead of opening ``location`` again.

    Returns:
        ``{"documents": {key: sha256}, "arrays": {name: schema + {"stored": {key: entry}}}}`` where an entry
        is ``{"sha256", "size"}`` (+ ``"inner"``: sha256 per inner chunk of a shard, C order). Chunks never
        written (all fill value) are absent from ``stored``; a missing array is absent from ``arrays``.

    Raises:
        StoreCorruptError: an array's ``zarr.json`` does not parse, or a packed member fails its CRC-32.
    """
    owned = store is None
    store = open_zarr_store(location, storage_options=storage_options) if owned else store
    try:
        documents, arrays, keys = _zarr_documents(store, location, names, groups)
        for name, key in _progress(keys, progress, "hashing shards"):
            data = _zarr_get(store, key, location)
            if data is None:
                continue
            entry: dict[str, Any] = {"sha256": sha256_hex(data), "size": len(data)}
            if arrays[name]["shards"] is not None:
                with unreadable_as_corrupt(str(location), f"array {name} metadata unreadable"):
                    entry["inner"] = _inner_hashes(data, arrays[name])
            arrays[name]["stored"][key[len(name) + 1 :]] = entry  # the key under the array (names may hold /)
    finally:
        if owned:
            store.close()
    return {"documents": documents, "arrays": arrays}


def _zarr_documents(
    store: Any, location: str | Path, names: tuple[str, ...], groups: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, Any], list[tuple[str, str]]]:
    """The documents' hashes, each array's schema (``stored`` still empty) and the chunk keys to hash."""
    root = _zarr_get(store, "zarr.json", location)
    if root is None:
        raise StoreError(f"{location} has no zarr.json: not a Zarr v3 store")
    documents = {"zarr.json": sha256_hex(root)}
    for group in groups:
        raw = _zarr_get(store, f"{group}/zarr.json", location)
        if raw is not None:
            documents[f"{group}/zarr.json"] = sha256_hex(raw)
    arrays: dict[str, Any] = {}
    keys: list[tuple[str, str]] = []
    for name in names:
        raw = _zarr_get(store, f"{name}/zarr.json", location)
        if raw is None:
            continue
        documents[f"{name}/zarr.json"] = sha256_hex(raw)
        with unreadable_as_corrupt(str(location), f"array {name} metadata unreadable"):
            meta = json.loads(raw)
            arrays[name] = {**zarr_array_schema(meta), "stored": {}}
            keys.extend((name, key) for key in _zarr_stored_keys(name, meta))
    return documents, arrays, keys


# ---------------------------------------------------------------------------------------------------------
# Hashing: HDF5.


def _attribute_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return np.asarray(value).tobytes()


def hdf5_array_schema(dataset: Any) -> dict[str, Any]:
    """Shape, dtype, chunks and filters (``codecs``) of an h5py dataset; ``shards`` is always ``None``;
    ``datatype``: the HDF5 datatype message as encoded by HDF5 (hex), since numpy's dtype does not show
    all of it (an exponent size or bias changed in a file without header checksums reads as the same
    ``float16`` with every value wrong)."""
    codecs = []
    if dataset.shuffle:
        codecs.append({"name": "shuffle"})
    if dataset.compression is not None:
        codecs.append(
            {"name": str(dataset.compression), "configuration": {"level": dataset.compression_opts}}
        )
    if dataset.fletcher32:
        codecs.append({"name": "fletcher32"})
    if dataset.scaleoffset is not None:
        codecs.append({"name": "scaleoffset", "configuration": {"value": dataset.scaleoffset}})
    return {
        "shape": list(dataset.shape),
        "dtype": str(dataset.dtype),
        "chunks": list(dataset.chunks) if dataset.chunks is not None else None,
        "shards": None,
        "codecs": codecs,
        "datatype": dataset.id.get_type().encode().hex(),
    }


def hash_hdf5(
    location: str | Path,
    *,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
    names: tuple[str, ...] = ARRAY_NAMES,
    groups: tuple[str, ...] = (),
    handle: Any = None,
) -> dict[str, Any]:
    """Hash the attributes and every chunk's raw bytes of an HDF5 store.

    ``handle``: the ``h5py.File`` of a store already open (left open), instead of opening ``location``.

    Returns:
        Same layout as :func:`hash_zarr`; documents are ``attrs/NAME`` (file), ``GROUP/attrs/NAME`` and
        ``ARRAY/attrs/NAME``; chunk keys are ``c/i/j/...`` chunk-grid coordinates (offset / chunk shape);
        a contiguous dataset has the single key ``contiguous`` (its bytes, which carry no filter).
    """
    owned = handle is None
    handle = open_h5_file(location, storage_options=storage_options) if owned else handle
    try:
        documents = {f"attrs/{k}": sha256_hex(_attribute_bytes(v)) for k, v in sorted(handle.attrs.items())}
        for group in (g for g in groups if g in handle):
            for key, value in sorted(handle[group].attrs.items()):
                documents[f"{group}/attrs/{key}"] = sha256_hex(_attribute_bytes(value))
        arrays: dict[str, Any] = {}
        work: list[tuple[str, int | None]] = []
        for name in names:
            if name not in handle:
                continue
            dataset = handle[name]
            for key, value in sorted(dataset.attrs.items()):
                documents[f"{name}/attrs/{key}"] = sha256_hex(_attribute_bytes(value))
            arrays[name] = {**hdf5_array_schema(dataset), "stored": {}}
            if dataset.chunks is None:
                work.append((name, None))
            else:
                work.extend((name, i) for i in range(dataset.id.get_num_chunks()))
        for name, index in _progress(work, progress, "hashing chunks"):
            dataset = handle[name]
            if index is None:
                data = np.ascontiguousarray(dataset[()]).tobytes()
                arrays[name]["stored"]["contiguous"] = {"sha256": sha256_hex(data), "size": len(data)}
                continue
            info = dataset.id.get_chunk_info(index)
            _, data = dataset.id.read_direct_chunk(info.chunk_offset)
            coords = tuple(o // c for o, c in zip(info.chunk_offset, dataset.chunks, strict=True))
            key = "/".join(["c", *map(str, coords)])
            arrays[name]["stored"][key] = {"sha256": sha256_hex(bytes(data)), "size": len(data)}
    except (
        KeyError,
        RuntimeError,
    ) as err:  # h5py's errors of an object header or chunk index failing its checksum
        raise StoreCorruptError(
            f"{location} is a damaged HDF5 file ({err}); restore it or rebuild the store"
        ) from err
    finally:
        if owned:
            close_h5_file(handle)
    return {"documents": documents, "arrays": arrays}


def hash_store(
    location: str | Path,
    *,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
    names: tuple[str, ...] = ARRAY_NAMES,
    groups: tuple[str, ...] = (),
    opened: Any = None,
) -> dict[str, Any]:
    """:func:`hash_zarr` or :func:`hash_hdf5` (of the arrays ``names`` and the groups ``groups``) depending
    on the location's format; ``opened``: the open store of ``location`` to hash through (not reopened)."""
    common = {"progress": progress, "storage_options": storage_options, "names": names, "groups": groups}
    if store_format(location) == HDF5:
        return hash_hdf5(location, handle=None if opened is None else opened.handle, **common)
    return hash_zarr(location, store=None if opened is None else opened.handle.store, **common)


def volume_array_names(metadata: dict[str, Any]) -> tuple[str, ...]:
    """The arrays of a volume store (:mod:`~brainprep.store.volume_schema`): those of every case that holds
    a volume, then the case tables; reached by name, as for a patch store."""
    from brainprep.store import volume_schema as vs

    cases = [c["index"] for c in metadata.get("cases", []) if c.get("crop_shape") is not None]
    return (*(vs.case_key(name, i) for i in cases for name in volume_group_names()), *vs.CASE_TABLE_ARRAYS)


def volume_group_names() -> tuple[str, ...]:
    """The groups of a volume store, one array per case in each (``images`` holds ``images/000003``)."""
    from brainprep.store import volume_schema as vs

    return (vs.IMAGES, vs.LABELS, *vs.SAMPLING_TABLES)


def _progress(items: list, enabled: bool, desc: str, unit: str = "chunk"):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit)


# ---------------------------------------------------------------------------------------------------------
# Manifest: build, write, load.


def case_rows(metadata: dict[str, Any], table: Any, patches_per_case: int) -> list[dict[str, Any]]:
    """One row per case: the store's case record plus its slot range and patch statistics from the table.

    Args:
        metadata: the store's ``brainprep`` attribute dict.
        table: the patch table (``valid`` bool (N,), ``case`` int32 (N,), ``tumour_fraction`` float32 (N,)).
        patches_per_case: K, slots per case.
    """
    rows = []
    for index, record in enumerate(metadata.get("cases", [])):
        first = index * patches_per_case
        slots = slice(first, first + patches_per_case)
        valid = np.asarray(table.valid[slots], dtype=bool)
        fractions = np.asarray(table.tumour_fraction[slots])[valid]
        rows.append(
            {
                **record,
                "index": index,
                "first_slot": first,
                "valid_patches": int(valid.sum()),
                "mean_tumour_fraction": float(fractions.mean()) if fractions.size else None,
            }
        )
    return rows


def build_manifest(
    location: str | Path, *, progress: bool = False, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest of a complete, whole store (see the module docstring); a JSON-able dict, deterministic.

    The store is opened once: its own checks (:func:`brainprep.verify.check_open_store`: every chunk's
    checksum, the digests, the tables against the labels; not the images' finiteness) and the hashing
    read it through the same handle.

    Raises:
        StoreIncompleteError: the store's build has not finished.
        StoreCorruptError: the store fails its own checks (a manifest would seal the damage); the message
            gives the first problem and how many there are.
    """
    from brainprep.verify import check_open_store, open_to_check

    with open_to_check(location, storage_options=storage_options) as store:
        metadata = store.metadata
        if not metadata.get("complete"):
            raise StoreIncompleteError(f"{location} is not complete: {resume_hint(location)}")
        _refuse_damaged(location, check_open_store(store, check_images=False, progress=progress))
        if store_kind(metadata) == VOLUMES:
            return _volume_manifest(location, store, progress, storage_options)
        patches_per_case = int(store.params.sampling.patches_per_case)
        rows = case_rows(metadata, store.table, patches_per_case)
        store_fields = {
            "format": store.format,
            "patch_size": list(store.patch_size),
            "n_slots": int(store.n_slots),
            "patches_per_case": patches_per_case,
        }
        hashes = hash_store(location, progress=progress, storage_options=storage_options, opened=store)
    return _manifest(location, metadata, store_fields, rows, rows, hashes)


def _refuse_damaged(location: str | Path, differences: list[Difference]) -> None:
    """Raise, in one line, when a store about to get a manifest fails its own checks."""
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise StoreCorruptError(
            f"{location} fails its own checks, so no manifest was written: {differences[0]}{more}; "
            f"run `brainprep verify {location}` for every problem, then restore or rebuild the store"
        )


def _volume_manifest(
    location: str | Path, store: Any, progress: bool, storage_options: dict[str, Any] | None
) -> dict[str, Any]:
    """:func:`build_manifest` of an open, checked volume store: its case rows as stored, every array and
    group document hashed."""
    metadata = store.metadata
    store_fields = {"format": store.format, "kind": VOLUMES, "patch_size": list(store.patch_size)}
    rows = [dict(record) for record in metadata.get("cases", [])]
    built = [row for row in rows if row.get("crop_shape") is not None]  # skipped cases have no volume
    names, groups = volume_array_names(metadata), volume_group_names()
    hashes = hash_store(
        location, progress=progress, storage_options=storage_options, names=names, groups=groups, opened=store
    )
    return _manifest(location, metadata, store_fields, rows, built, hashes)


def _manifest(
    location: str | Path,
    metadata: dict[str, Any],
    store_fields: dict[str, Any],
    rows: list[dict[str, Any]],
    split_rows: list[dict[str, Any]],
    hashes: dict[str, Any],
) -> dict[str, Any]:
    """The manifest dict of either store kind: ``store_fields`` (the kind's own store entries), the case
    ``rows``, the split of ``split_rows`` by case id, and the store's ``hashes``."""
    from brainprep import __version__

    split: dict[str, list[str]] = {name: [] for name in schema.SPLIT_NAMES}
    for row in split_rows:
        split.setdefault(row.get("split", "train"), []).append(row["case_id"])
    return {
        "kind": MANIFEST_KIND,
        "version": MANIFEST_VERSION,
        "tool_version": __version__,
        "store": {
            "name": Path(str(location).rstrip("/")).name,
            **store_fields,
            "schema_version": metadata.get("schema_version"),
            "tool_version": metadata.get("tool_version"),
        },
        "params": metadata.get("params"),
        "spec": spec_from_metadata(metadata).to_dict(),  # a store from before the spec: MSD's
        "source": metadata.get("source"),
        "summary": metadata.get("summary"),
        "cases": rows,
        "split": split,
        **hashes,
    }


def write_manifest(
    location: str | Path,
    output: Path,
    *,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the manifest of ``location`` and write it to ``output`` (indented, sorted JSON)."""
    manifest = build_manifest(location, progress=progress, storage_options=storage_options)
    write_text_atomic(output, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    logger.info("wrote manifest of %s to %s", location, output)
    return manifest


def load_manifest(path: Path) -> dict[str, Any]:
    """Read a manifest written by :func:`write_manifest`.

    Raises:
        ConfigError: not JSON, or not a brainprep manifest of a known version.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read manifest {path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise ConfigError(f"{path} is not a brainprep manifest (expected kind {MANIFEST_KIND!r})")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise ConfigError(
            f"manifest {path} has version {manifest.get('version')}, this brainprep reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: write it again with `brainprep manifest`"
        )
    for key in ("arrays", "documents", "cases", "store"):
        if key not in manifest:
            raise ConfigError(f"manifest {path} has no {key!r} section")
    return manifest


# ---------------------------------------------------------------------------------------------------------
# Verification against a manifest.


def _held(manifest: dict[str, Any], array: str, key: str) -> tuple[tuple[int, int] | None, tuple[str, ...]]:
    """Slots and cases held by chunk ``key`` of ``array``, from the manifest's schema and case rows."""
    info = manifest["arrays"][array]
    grid = info["shards"] or info["chunks"]
    ids = [row["case_id"] for row in manifest["cases"]]
    if manifest["store"].get("kind") == VOLUMES:  # images/000003: an array per case
        _, _, index = array.rpartition("/")
        return None, (ids[int(index)],) if index.isdigit() and int(index) < len(ids) else ()
    if key == "contiguous" or not grid:
        return None, ()
    parts = key.replace(".", "/").split("/")  # "c/3/0", "c.3.0" (default encoding) or "3.0" (v2)
    first_coord = int(parts[1] if parts[0] == "c" else parts[0])
    first, stop = first_coord * grid[0], min((first_coord + 1) * grid[0], info["shape"][0])
    if array in CASE_AXIS_ARRAYS:
        return None, tuple(ids[first:stop])
    per_case = manifest["store"]["patches_per_case"]
    return (first, stop - 1), tuple(
        dict.fromkeys(ids[s // per_case] for s in range(first, stop) if s // per_case < len(ids))
    )


def _inner_differences(array: str, key: str, want: dict, got: dict, manifest: dict) -> list[Difference]:
    """Inner chunks (one patch each) of a shard whose hash changed; empty when the index is unreadable."""
    inner_want, inner_got = want.get("inner"), got.get("inner")
    if not inner_want or not inner_got:
        return []
    info = manifest["arrays"][array]
    inner_grid = grid_shape(tuple(info["shards"]), tuple(info["chunks"]))
    slots, cases = _held(manifest, array, key)
    out = []
    for flat, digest in inner_want.items():
        if inner_got.get(flat) == digest:
            continue
        coords = np.unravel_index(int(flat), inner_grid)
        slot = slots[0] + int(coords[0]) * info["chunks"][0] if slots else None
        case = (
            (manifest["cases"][slot // manifest["store"]["patches_per_case"]]["case_id"],)
            if slot is not None
            else cases
        )
        out.append(
            Difference(
                array,
                f"{key} inner chunk {flat}",
                "inner chunk bytes changed",
                (slot, slot) if slot is not None else None,
                case,
            )
        )
    return out


def compare_hashes(manifest: dict[str, Any], actual: dict[str, Any]) -> list[Difference]:
    """Every difference between a manifest's hashes and schema and freshly computed ``actual`` hashes."""
    out: list[Difference] = []
    want_docs, got_docs = manifest["documents"], actual["documents"]
    for key in sorted(set(want_docs) | set(got_docs)):
        if key not in got_docs:
            out.append(Difference("metadata", key, "missing from the store"))
        elif key not in want_docs:
            out.append(Difference("metadata", key, "not in the manifest"))
        elif want_docs[key] != got_docs[key]:
            out.append(
                Difference("metadata", key, f"sha256 {got_docs[key][:12]} != manifest {want_docs[key][:12]}")
            )
    for array in manifest["arrays"]:
        if array not in actual["arrays"]:
            out.append(Difference(array, "(array)", "array missing from the store"))
            continue
        want, got = manifest["arrays"][array], actual["arrays"][array]
        for field in ("shape", "dtype", "datatype", "chunks", "shards", "codecs"):
            if field == "datatype" and field not in want:
                continue  # a manifest from before HDF5 datatypes were recorded
            if want.get(field) != got.get(field):
                out.append(
                    Difference(
                        array, "(schema)", f"{field} is {got.get(field)}, manifest says {want.get(field)}"
                    )
                )
        for key in sorted(set(want["stored"]) | set(got["stored"])):
            slots, cases = _held(manifest, array, key)
            if key not in got["stored"]:
                out.append(Difference(array, key, "chunk missing from the store", slots, cases))
            elif key not in want["stored"]:
                out.append(Difference(array, key, "chunk not in the manifest", slots, cases))
            elif want["stored"][key]["sha256"] != got["stored"][key]["sha256"]:
                w, g = want["stored"][key], got["stored"][key]
                out.append(
                    Difference(
                        array,
                        key,
                        f"sha256 {g['sha256'][:12]} != manifest {w['sha256'][:12]} "
                        f"({g['size']} vs {w['size']} bytes)",
                        slots,
                        cases,
                    )
                )
                out.extend(_inner_differences(array, key, w, g, manifest))
    for array in sorted(set(actual["arrays"]) - set(manifest["arrays"])):
        out.append(Difference(array, "(array)", "array not in the manifest"))
    return out


def verify_against_manifest(
    location: str | Path,
    manifest: dict[str, Any],
    *,
    check_images: bool = True,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> list[Difference]:
    """The store's own checks (:func:`brainprep.verify.check_open_store`, ``check_images`` as there), then
    every hash of ``location`` recomputed and compared with ``manifest``; ``[]`` when all pass. The store
    is opened once for both.

    Raises:
        ConfigError: the manifest is of another store kind (a patch store's manifest for a volume store,
            or the reverse): nothing to compare array by array.
    """
    from brainprep.verify import check_open_store, open_problem, open_to_check, short_problem

    wanted = manifest["store"].get("kind", PATCHES)
    try:
        opened = open_to_check(location, storage_options=storage_options)
    except StoreCorruptError as error:  # an array's metadata that does not read, a damaged file
        return [open_problem(error, location)]
    with opened as store:
        found = store_kind(store.metadata)
        if found != wanted:
            raise ConfigError(
                f"the manifest is of a {wanted} store, {location} is a {found} store: verify it with its own"
            )
        out = check_open_store(store, check_images=check_images, progress=progress)
        names, groups = ARRAY_NAMES, ()
        if wanted == VOLUMES:
            names, groups = tuple(manifest["arrays"]), volume_group_names()
            if manifest.get("version") == 1:
                groups = ()  # not recorded then
                logger.warning("manifest of %s is version 1: its group documents are not covered", location)
        try:
            hashes = hash_store(
                location,
                progress=progress,
                storage_options=storage_options,
                names=names,
                groups=groups,
                opened=store,
            )
        except StoreCorruptError as error:  # metadata that does not parse: its rows are above
            problem = f"not compared: {short_problem(error, str(location))}"
            return [*out, Difference("metadata", "(sha256)", problem)]
    return out + compare_hashes(manifest, hashes)
