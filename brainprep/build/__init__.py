"""Build stage: data folder -> patch store, in parallel with dask, resumable (see :mod:`.driver`)."""

from brainprep.build.driver import build_patches
from brainprep.build.plan import BadCasesError, CasePlan
from brainprep.build.summary import BuildSummary

__all__ = ["BadCasesError", "BuildSummary", "CasePlan", "build_patches"]
