"""What makes a sealed store checkable without its manifest: digests of its metadata and tables, and its id.

A store's bytes carry their own checksums (a crc32c per Zarr chunk, fletcher32 per HDF5 chunk, checked by
every read). What the metadata says about them is sealed here, at the end of a build, into the block
``metadata["integrity"]``:

- ``tables``: the sha256 of every table array (patch table, case statistics), checked whenever a reader
  loads one, so an edited split or tumour fraction is refused instead of trained on;
- ``content_id``: sha256 over what the store holds (format, schema version, build parameters, each case's
  id, split and data digest, the table digests); the same data, parameters and seed give the same id;
  checkpoints record it, so a resumed run can tell it is fed another store;
- ``metadata_sha256``: the sha256 of the whole ``brainprep`` attribute except this one field, checked
  when the store is opened, so a hand-edited parameter (``standardize.method``, a split) is refused.

A case's data digest (``cases[i].data_digest``) is :func:`brainprep.store.shards.checksum_digest` of its
stored chunks. These digests name content and catch accidents; they are no seal against a deliberate
forger who rewrites digests too: a manifest (sha256 of every byte, kept elsewhere) is that seal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from brainprep.errors import StoreCorruptError

INTEGRITY_KEY = "integrity"
INTEGRITY_VERSION = 1
#: characters of the content id shown in messages and logs (the full sha256 is stored)
SHORT_ID = 16


def canonical_json(value: Any) -> bytes:
    """Sorted, compact JSON bytes: the form every digest here is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def normalized(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` as a reader gets it back from JSON (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(metadata))


def array_digest(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{list(array.shape)}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def metadata_digest(metadata: Mapping[str, Any]) -> str:
    """sha256 of the ``brainprep`` attribute without ``integrity.metadata_sha256`` itself."""
    copy = dict(metadata)
    block = dict(copy.get(INTEGRITY_KEY) or {})
    block.pop("metadata_sha256", None)
    if INTEGRITY_KEY in copy:
        copy[INTEGRITY_KEY] = block
    return hashlib.sha256(canonical_json(copy)).hexdigest()


def content_id(metadata: Mapping[str, Any], table_digests: Mapping[str, str]) -> str:
    """sha256 over what the store holds (not how long it took to build): see the module docstring."""
    held = {
        "format": metadata.get("params", {}).get("store", {}).get("format"),
        "schema_version": metadata.get("schema_version"),
        "params": metadata.get("params"),
        "cases": [
            [c.get("case_id"), c.get("split"), c.get("data_digest")] for c in metadata.get("cases", [])
        ],
        "tables": dict(table_digests),
    }
    return hashlib.sha256(canonical_json(held)).hexdigest()


def seal(metadata: Mapping[str, Any], tables: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``metadata`` with its ``integrity`` block (table digests, content id, metadata digest) added."""
    sealed = normalized({k: v for k, v in metadata.items() if k != INTEGRITY_KEY})
    digests = {name: array_digest(array) for name, array in sorted(tables.items())}
    sealed[INTEGRITY_KEY] = {
        "version": INTEGRITY_VERSION,
        "tables": digests,
        "content_id": content_id(sealed, digests),
    }
    sealed[INTEGRITY_KEY]["metadata_sha256"] = metadata_digest(sealed)
    return sealed


def is_sealed(metadata: Mapping[str, Any]) -> bool:
    """True when the metadata carries an integrity block (stores built before it exist)."""
    return isinstance(metadata.get(INTEGRITY_KEY), Mapping)


def store_id(metadata: Mapping[str, Any]) -> str | None:
    """The store's content id (full sha256 hex), ``None`` for a store without an integrity block."""
    block = metadata.get(INTEGRITY_KEY)
    return block.get("content_id") if isinstance(block, Mapping) else None


def short_id(identifier: str | None) -> str:
    """The first :data:`SHORT_ID` characters of a content id, or ``unknown``."""
    return identifier[:SHORT_ID] if identifier else "unknown"


#: The problem of a store whose chunks carry checksums but whose metadata has no integrity block.
MISSING_SEAL = (
    "its integrity block is missing, yet its chunks carry checksums (only a brainprep that seals its "
    "stores writes them): its metadata was edited or damaged"
)


def metadata_problem(metadata: Mapping[str, Any]) -> str | None:
    """Why a sealed store's metadata cannot be trusted (``None`` when its digests match)."""
    block = metadata.get(INTEGRITY_KEY)
    if not isinstance(block, Mapping) or "metadata_sha256" not in block:
        return "its integrity block is damaged"
    if metadata_digest(metadata) != block["metadata_sha256"]:
        return "its brainprep metadata does not match the recorded digest (edited or damaged)"
    recomputed = content_id(metadata, block.get("tables", {}))
    if recomputed != block.get("content_id"):
        return "its content id does not match its parameters and case table (edited or damaged)"
    return None


def check_table(location: str, metadata: Mapping[str, Any], name: str, array: np.ndarray) -> None:
    """Raise unless table array ``name`` matches its digest (a store without digests passes).

    Raises:
        StoreCorruptError: the array was edited or damaged since the store was sealed.
    """
    block = metadata.get(INTEGRITY_KEY)
    if not isinstance(block, Mapping):
        return
    want = block.get("tables", {}).get(name)
    if want is None:
        raise StoreCorruptError(f"{location}: table {name} has no recorded digest (damaged metadata)")
    if array_digest(array) != want:
        raise StoreCorruptError(
            f"{location}: table {name} does not match its recorded digest (edited or damaged); "
            f"run `brainprep verify {location}`"
        )
