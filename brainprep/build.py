"""Old name of :mod:`brainprep.builder`, kept so that ``from brainprep.build import build_patches`` works.

The package was a folder named ``build/``, which the common Python ``.gitignore`` templates ignore anywhere
in a tree (an unanchored ``build/``): a contributor adding such a template silently dropped it from their
commits. It is :mod:`brainprep.builder` now; this module only re-exports its API.
"""

from __future__ import annotations

import warnings

from brainprep.builder import *  # noqa: F403
from brainprep.builder import __all__  # noqa: F401

warnings.warn(
    "brainprep.build is now brainprep.builder; import build_patches from there",
    DeprecationWarning,
    stacklevel=2,
)
