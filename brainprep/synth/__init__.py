"""Synthetic BraTS-like data: plausible heads with gliomas, four MRI contrasts and MSD labels.

Stands in for the real (licence-restricted, large) images in tests and demos; real label geometry can be
borrowed with ``SynthParams(labels_from=...)``.
"""

from brainprep.synth.case import SynthCase, build_case, synth_case
from brainprep.synth.dataset import release_case_id, write_case, write_synthetic_dataset
from brainprep.synth.params import SYNTH_LAYOUTS, SynthParams

__all__ = [
    "SYNTH_LAYOUTS",
    "SynthCase",
    "SynthParams",
    "build_case",
    "release_case_id",
    "synth_case",
    "write_case",
    "write_synthetic_dataset",
]
