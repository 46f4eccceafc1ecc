"""Build stage: data folder -> patch store, in parallel with dask, resumable (see :mod:`.driver`)."""

from brainprep.builder.driver import build_patches
from brainprep.builder.plan import BadCasesError, CasePlan
from brainprep.builder.summary import BuildSummary

__all__ = ["BadCasesError", "BuildSummary", "CasePlan", "build_patches"]
