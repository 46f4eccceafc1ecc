"""Store stage: the patch store schema, its writers (Zarr v3, HDF5) and its reader.

Readers need only :func:`open_store`; the writers are used by :mod:`brainprep.builder`.
"""

from brainprep.store.reader import PatchStore, PatchTable, open_store

__all__ = ["PatchStore", "PatchTable", "open_store"]
