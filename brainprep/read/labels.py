"""The label conventions of the public brain-tumour releases, one :class:`~brainprep.spec.DatasetSpec` each.

Canonical classes (see :mod:`brainprep.spec`): 1 edema, 2 non_enhancing, 3 enhancing (MSD Task01), then
the classes a release adds. Source value of each class, per convention:

==============  ====================================  =====  =====  =====  ======  ====================
convention      releases                              edema  non-   enh.   4th     sources
                                                             enh.          class
==============  ====================================  =====  =====  =====  ======  ====================
msd             MSD Task01 BrainTumour                1      2      3      --      [msd]
brats2021       BraTS 2017-2021 (``_seg``)            2      1      4      --      [b21] [nnu137]
brats2023       BraTS 2023 GLI (adult glioma), also   2      1      3      --      [b23] [men] [ped23]
                MEN, MET, SSA and the 2023 PED release
brats2024-gli   BraTS 2024+ GLI post-treatment        2      1      3      4 RC    [gli24] [ukan]
brats2024-ped   BraTS-PEDs 2024+                      4      2      1      3 CC    [ped24] [nnu3042]
==============  ====================================  =====  =====  =====  ======  ====================

(RC resection cavity, CC cystic component.) ``brats2023-gli``, ``-men``, ``-met``, ``-ssa`` and
``brats2023-ped`` are names of the ``brats2023`` table (one convention, several tumour types).
Regions: WT = every tumour class, TC = WT without edema, ET = enhancing; the resection cavity is no
tumour and in no region ([gli24]); the cystic component is part of the pediatric tumour core ([ped24],
[nnu3042]).

Sources (checked 2026-12; the BraTS pages themselves sit behind Synapse logins):

- [msd] MSD Task01 ``dataset.json``: ``{"0": "background", "1": "edema", "2": "non-enhancing tumor",
  "3": "enhancing tumour"}``; modality ``{"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}``.
- [b21] https://www.med.upenn.edu/cbica/brats2020/data.html: "ET -- label 4, ED -- label 2,
  NCR/NET -- label 1"; the same in BraTS 2021 (Synapse syn27046444).
- [nnu137] nnU-Net v2 ``nnunetv2/dataset_conversion/Dataset137_BraTS21.py``: BraTS 0,1,2,4 -> nnU-Net
  0,2,1,3 (1 edema, 2 necrosis, 3 enhancing), regions whole tumor (1,2,3), tumor core (2,3),
  enhancing (3,) -- MSD's values.
- [b23] BraTS 2023 GLI: NETC 1, SNFH 2, ET 3 (enhancing as 3 instead of 4); [men] LaBella et al.,
  "BraTS 2023 Intracranial Meningioma Segmentation Challenge" (arXiv:2405.09787): the same three
  compartments; MET and SSA use the 2023 GLI labels.
- [ped23] BraTS 2023 PED labels span 0..3 (github.com/shaohao011/BrainMVP issue 8).
- [gli24] de Verdier et al., "The 2024 BraTS Challenge: Glioma Segmentation on Post-treatment MRI"
  (arXiv:2405.18368): ET, SNFH, NETC and RC; [ukan] github.com/TianzeTang0504/UKAN-EP README:
  "ET -- label 3, SNFH -- label 2, NETC -- label 1, RC -- label 4".
- [ped24] Kazerooni et al., "BraTS-PEDs: Focus on Pediatrics" (arXiv:2404.15009); [nnu3042]
  github.com/MIC-DKFZ/nnUNet issue 3042: BraTS-PED ``{"ET": 1, "NonEnh": 2, "Cystic": 3, "Edema": 4}``,
  WT = 1+2+3+4, TC = 1+2+3, ET = 1.

Adding a convention: one entry in :data:`CONVENTIONS` (and its round-trip test in tests/test_spec.py).
"""

from __future__ import annotations

from types import MappingProxyType

from brainprep.errors import ConfigError
from brainprep.spec import GLIOMA_CLASSES, GLIOMA_REGIONS, MSD_SPEC, DatasetSpec

_BRATS2023 = DatasetSpec("brats2023", source_values=(0, 2, 1, 3))
_PED_CORE = (2, 3, 4)  # non-enhancing, enhancing, cystic component

#: every known convention by name (aliases share a table).
CONVENTIONS: MappingProxyType[str, DatasetSpec] = MappingProxyType(
    {
        "msd": MSD_SPEC,
        "brats2021": DatasetSpec("brats2021", source_values=(0, 2, 1, 4)),
        "brats2023": _BRATS2023,
        **{f"brats2023-{kind}": _BRATS2023 for kind in ("gli", "men", "met", "ssa", "ped")},
        "brats2024-gli": DatasetSpec(
            "brats2024-gli",
            classes=(*GLIOMA_CLASSES, "resection_cavity"),
            source_values=(0, 2, 1, 3, 4),
            regions=GLIOMA_REGIONS,
        ),
        "brats2024-ped": DatasetSpec(
            "brats2024-ped",
            classes=(*GLIOMA_CLASSES, "cystic_component"),
            source_values=(0, 4, 2, 1, 3),
            regions=(
                ("whole_tumour", (1, *_PED_CORE)),
                ("tumour_core", _PED_CORE),
                ("enhancing_tumour", (3,)),
            ),
        ),
    }
)

#: BraTS 2023+ case id prefixes and the convention they settle. 2024+ post-treatment gliomas share
#: ``BraTS-GLI-`` and the values 1-3 with 2023; only they write a 4 (resection cavity), which the 2023
#: table refuses with a message naming ``--labels`` (brats2024-gli).
ID_PREFIXES: MappingProxyType[str, str] = MappingProxyType(
    {
        "BraTS-GLI-": "brats2023",
        "BraTS-MEN-": "brats2023",
        "BraTS-MET-": "brats2023",
        "BraTS-SSA-": "brats2023",
    }
)
#: prefixes that do not settle the convention (releases of them write different values for the same
#: classes), with what they write.
AMBIGUOUS_PREFIXES: MappingProxyType[str, str] = MappingProxyType(
    {"BraTS-PED-": "1 NETC, 2 SNFH, 3 ET (brats2023-ped) or 1 ET, 2 NET, 3 CC, 4 ED (brats2024-ped)"}
)


def convention_spec(name: str) -> DatasetSpec:
    """The spec of convention ``name`` (case-insensitive).

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    spec = CONVENTIONS.get(name.strip().lower())
    if spec is None:
        raise ConfigError(f"unknown label convention {name!r}; known: {', '.join(CONVENTIONS)}")
    return spec
