"""brainprep: offline preprocessing of BraTS MRI into shareable patch stores."""

from brainprep.read import (
    CHANNEL_NAMES,
    Case,
    CaseFiles,
    Dataset,
    DatasetSpec,
    convention_spec,
    discover_cases,
    read_case,
    write_label_in_source_space,
)

__version__ = "0.1.0"

__all__ = [
    "CHANNEL_NAMES",
    "Case",
    "CaseFiles",
    "Dataset",
    "DatasetSpec",
    "__version__",
    "convention_spec",
    "discover_cases",
    "read_case",
    "write_label_in_source_space",
]
