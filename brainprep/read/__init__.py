"""Read stage: find cases in any BraTS layout and load them in canonical form."""

from brainprep.read.case import Case, read_case, write_label_in_source_space
from brainprep.read.labels import LabelConvention, from_msd_labels, to_msd_labels
from brainprep.read.layouts import CHANNEL_NAMES, CaseFiles, Dataset, discover_cases

__all__ = [
    "CHANNEL_NAMES",
    "Case",
    "CaseFiles",
    "Dataset",
    "LabelConvention",
    "discover_cases",
    "from_msd_labels",
    "read_case",
    "to_msd_labels",
    "write_label_in_source_space",
]
