"""Read stage: find cases in any BraTS layout and load them in canonical form."""

from brainprep.read.case import Case, read_case, write_label_in_source_space
from brainprep.read.labels import CONVENTIONS, convention_spec
from brainprep.read.layouts import CaseFiles, Dataset, discover_cases
from brainprep.spec import CHANNEL_NAMES, MSD_SPEC, DatasetSpec

__all__ = [
    "CHANNEL_NAMES",
    "CONVENTIONS",
    "MSD_SPEC",
    "Case",
    "CaseFiles",
    "Dataset",
    "DatasetSpec",
    "convention_spec",
    "discover_cases",
    "read_case",
    "write_label_in_source_space",
]
