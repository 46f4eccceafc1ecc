"""Label conventions of the BraTS releases and the exact maps into the MSD convention.

Canonical (MSD Task01) labels: 0 background, 1 edema, 2 non-enhancing tumour, 3 enhancing tumour.

- BraTS 2017-2021: 1 necrotic / non-enhancing core, 2 edema, 4 enhancing (3 is unused).
- BraTS 2023: 1 necrotic / non-enhancing core, 2 edema, 3 enhancing.

So both BraTS conventions swap 1 and 2 relative to MSD, and 2017-2021 writes enhancing as 4.
"""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType

import numpy as np

from brainprep.errors import InvalidValueError

MSD_CLASS_NAMES: tuple[str, ...] = ("background", "edema", "non-enhancing tumour", "enhancing tumour")
TUMOUR_CLASS_NAMES: tuple[str, ...] = MSD_CLASS_NAMES[1:]


class LabelConvention(str, Enum):
    """Which integer means which tissue in a label file."""

    MSD = "msd"
    BRATS2021 = "brats2021"
    BRATS2023 = "brats2023"


#: source value -> MSD value, one explicit table per convention.
LABEL_MAPS: MappingProxyType[LabelConvention, MappingProxyType[int, int]] = MappingProxyType(
    {
        LabelConvention.MSD: MappingProxyType({0: 0, 1: 1, 2: 2, 3: 3}),
        LabelConvention.BRATS2021: MappingProxyType({0: 0, 1: 2, 2: 1, 4: 3}),
        LabelConvention.BRATS2023: MappingProxyType({0: 0, 1: 2, 2: 1, 3: 3}),
    }
)


def _lookup_table(mapping: MappingProxyType[int, int]) -> np.ndarray:
    """256-entry uint8 table; 255 marks values outside the convention."""
    table = np.full(256, 255, dtype=np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table


def unexpected_label_values(labels: np.ndarray, convention: LabelConvention | str) -> list[int | float]:
    """Sorted values of ``labels`` that the convention does not define (empty when all are valid).

    Integer-valued entries come back as ``int``, others (``1.5``, NaN) as ``float``, so a message shows
    the value actually found rather than its truncation.
    """
    allowed = set(LABEL_MAPS[LabelConvention(convention)])
    bad: list[int | float] = []
    for value in np.unique(labels).tolist():
        if isinstance(value, float) and not value.is_integer():
            bad.append(value)
        elif int(value) not in allowed:
            bad.append(int(value))
    return bad


def to_msd_labels(
    labels: np.ndarray,
    convention: LabelConvention | str,
    *,
    case_id: str | None = None,
    path: str | None = None,
) -> np.ndarray:
    """Map a label array of ``convention`` into the MSD convention.

    Args:
        labels: integer-valued array of any shape and numeric dtype.
        convention: the convention ``labels`` is written in.

    Returns:
        uint8 array of the same shape with values in {0, 1, 2, 3}.

    Raises:
        InvalidValueError: when ``labels`` holds a value the convention does not define.
    """
    convention = LabelConvention(convention)
    bad = unexpected_label_values(labels, convention)
    if bad:
        allowed = ",".join(str(v) for v in LABEL_MAPS[convention])
        found = ",".join(f"{v:g}" for v in bad[:8]) + (",..." if len(bad) > 8 else "")
        raise InvalidValueError(
            f"label values must be in {{{allowed}}} ({convention.value} convention), found {{{found}}}",
            case_id=case_id,
            path=path,
        )
    table = _lookup_table(LABEL_MAPS[convention])
    return table[labels.astype(np.uint8, copy=False)]


def from_msd_labels(labels: np.ndarray, convention: LabelConvention | str) -> np.ndarray:
    """Inverse of :func:`to_msd_labels`: MSD uint8 labels -> ``convention`` (uint8, same shape)."""
    convention = LabelConvention(convention)
    inverse = MappingProxyType({v: k for k, v in LABEL_MAPS[convention].items()})
    bad = unexpected_label_values(labels, LabelConvention.MSD)
    if bad:
        found = ",".join(f"{v:g}" for v in bad[:8])
        raise InvalidValueError(f"MSD label values must be in {{0,1,2,3}}, found {{{found}}}")
    return _lookup_table(inverse)[labels.astype(np.uint8, copy=False)]
