"""Pack a complete Zarr store folder into one ``.zarr.zip`` file for sharing.

The zip holds the store's files under their Zarr keys (``zarr.json``, ``images/c/0/0/0/0/0``, ...) with
``ZIP_STORED``: shards are already compressed, and stored members can be read by byte range without
inflating, which is what zarr's ``ZipStore`` (and an HTTP range reader) needs. The zip is written under a
temporary name next to the output and renamed at the end, so ``OUT.zarr.zip`` only ever exists whole.
``open_store("OUT.zarr.zip")`` reads it like the folder.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from brainprep.errors import StoreError
from brainprep.files import replacing
from brainprep.store import locations

logger = logging.getLogger(__name__)


def store_files(store: Path) -> list[Path]:
    """Every file of a store folder, root ``zarr.json`` first, then sorted by key (deterministic zips)."""
    files = sorted(p for p in Path(store).rglob("*") if p.is_file())
    return sorted(
        files, key=lambda p: (p.relative_to(store).as_posix() != "zarr.json", p.relative_to(store).as_posix())
    )


def pack_store(store: Path, output: Path, *, progress: bool = False, overwrite: bool = False) -> Path:
    """Zip a complete Zarr store folder into ``output`` (``*.zip``).

    Args:
        store: a complete ``STORE.zarr`` folder.
        output: the ``.zarr.zip`` to write.
        progress: tqdm bar over files.
        overwrite: replace an existing ``output``.

    Returns:
        ``output``.

    Raises:
        StoreError: ``store`` is not a Zarr store folder, ``output`` exists (without ``overwrite``) or does
            not end in ``.zip``.
        StoreIncompleteError: the store's build has not finished.
    """
    from brainprep.store.reader import open_store

    store, output = Path(store), Path(output)
    if not store.is_dir() or not (store / "zarr.json").is_file():
        raise StoreError(f"pack needs a Zarr store folder with a zarr.json, found {store}")
    if not locations.is_packed(output):
        suffix = locations.ZIP_SUFFIX
        raise StoreError(f"packed store must end in {suffix} (e.g. {store.name}{suffix}), got {output}")
    if output.exists() and not overwrite:
        raise StoreError(f"{output} exists; remove it or pass --overwrite (overwrite=True in Python)")
    open_store(store, require_complete=True).close()  # refuses an incomplete or foreign store
    files = store_files(store)
    iterator = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="packing", unit="file")
    with (
        replacing(output) as temporary,
        zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        for path in iterator:
            archive.write(path, arcname=path.relative_to(store).as_posix())
    logger.info("packed %d files of %s into %s (%d bytes)", len(files), store, output, output.stat().st_size)
    return output
