"""Store stage: the patch and volume store schemas, their writers (Zarr v3, HDF5) and their readers.

Readers need only :func:`open_store` (a :class:`PatchStore` or a :class:`VolumeStore`); the writers are
used by :mod:`brainprep.builder`.
"""

from brainprep.store.reader import PatchStore, PatchTable, open_store
from brainprep.store.volume_reader import VolumeStore

__all__ = ["PatchStore", "PatchTable", "VolumeStore", "open_store"]
