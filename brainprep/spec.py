"""The dataset spec: which channels, which classes, which label values and which evaluation regions.

One frozen :class:`DatasetSpec` describes a dataset for every stage: the reader maps each label file's
values to the spec's canonical classes with it, the sampler counts its classes, the store, the manifest
and every checkpoint carry its :meth:`~brainprep.config.Params.to_dict`, the loader one-hot encodes its
classes, the model has one output channel per foreground class, the metrics score its classes and
regions, and ``predict`` writes labels back in its source values. No other module knows how many classes
there are or what they are called: it asks the spec.

Canonical classes: ``classes[c]`` is canonical label ``c`` (``0`` background). The glioma family shares
the first three (MSD Task01's ``1 edema, 2 non_enhancing, 3 enhancing``), so a BraTS 2021 or 2023 label
map reads as the very array an MSD label map gives; further classes (a resection cavity, a cystic
component) come after them. Each class has one source value (``source_values[c]``), the integer the label
files of the convention write for it. The order of the classes is also the precedence of the label map
``predict`` writes (a later class wins where several sigmoid channels fire, see
:func:`brainnet.metrics.probabilities_to_labels`).

The conventions of the public releases, each with the sources it was checked against, are the entries of
:mod:`brainprep.read.labels`; a store written before the spec existed holds none and reads as
:data:`MSD_SPEC` (:func:`spec_from_metadata`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.config import Params
from brainprep.errors import ConfigError, InvalidValueError

#: Canonical channel order (MSD Task01's): every reader hands the channels over in this order.
CHANNEL_NAMES: tuple[str, ...] = ("FLAIR", "T1w", "T1gd", "T2w")
#: The classes of the glioma family, canonical labels 0..3.
GLIOMA_CLASSES: tuple[str, ...] = ("background", "edema", "non_enhancing", "enhancing")
#: BraTS evaluation regions of the glioma family as unions of canonical classes.
GLIOMA_REGIONS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("whole_tumour", (1, 2, 3)),
    ("tumour_core", (2, 3)),
    ("enhancing_tumour", (3,)),
)
#: marks a value a convention does not define in :meth:`DatasetSpec.label_table`.
UNDEFINED = 255


def format_value(value: int | float) -> str:
    """A label value for a message: an integer as itself, any other value so that it cannot read as an
    integer (``0.99999994``, the float32 just below 1, which ``:g`` prints as ``1``)."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    text = f"{value:.9g}"  # enough digits for every float32
    return text if not float(text).is_integer() else repr(float(value))


@dataclass(frozen=True)
class DatasetSpec(Params):
    """Channels, classes, label values and regions of one dataset.

    Attributes:
        convention: name of the label convention of the source files (``msd``, ``brats2021``, ...,
            ``nnunet`` for one read from a ``dataset.json``).
        channels: the channel names, in the canonical order the readers deliver.
        classes: canonical class names; ``classes[0]`` is ``background``.
        source_values: the value the source label files write for each class (same length as
            ``classes``, ``0`` for background, distinct, 0..254).
        regions: ``(name, canonical classes)`` of each evaluation region (BraTS WT/TC/ET).
    """

    convention: str = "msd"
    channels: tuple[str, ...] = CHANNEL_NAMES
    classes: tuple[str, ...] = GLIOMA_CLASSES
    source_values: tuple[int, ...] = (0, 1, 2, 3)
    regions: tuple[tuple[str, tuple[int, ...]], ...] = GLIOMA_REGIONS

    def __post_init__(self) -> None:
        problems = []
        if len(self.classes) < 2 or self.classes[0] != "background":
            problems.append(f"classes must start with 'background' and name a class, found {self.classes}")
        if len(set(self.classes)) != len(self.classes):
            problems.append(f"class names must be distinct, found {self.classes}")
        values = tuple(int(v) for v in self.source_values)
        if len(values) != len(self.classes) or (values and values[0] != 0):
            problems.append(f"source_values {values} must give one value per class, 0 for background")
        if len(set(values)) != len(values) or any(not 0 <= v < UNDEFINED for v in values):
            problems.append(f"source_values must be distinct integers in 0..254, found {values}")
        if len(set(self.channels)) != len(self.channels) or not self.channels:
            problems.append(f"channel names must be distinct, found {self.channels}")
        names = [name for name, _ in self.regions]
        if len(set(names) | set(self.classes)) != len(names) + len(self.classes):
            problems.append(f"region names {names} must be distinct from each other and from the classes")
        for name, members in self.regions:
            if not members or any(not 1 <= int(c) < len(self.classes) for c in members):
                problems.append(f"region {name} must list foreground classes 1..{len(self.classes) - 1}")
        if problems:
            raise ConfigError(f"dataset spec {self.convention!r}: " + "; ".join(problems))

    # -- classes and regions -----------------------------------------------------------------------

    @property
    def n_classes(self) -> int:
        """Foreground classes: the model's output channels and the one-hot's length."""
        return len(self.classes) - 1

    @property
    def foreground(self) -> tuple[str, ...]:
        """Names of classes 1..n (one-hot channel ``k`` is class ``k + 1``)."""
        return self.classes[1:]

    @property
    def region_classes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(int(c) for c in members) for name, members in self.regions}

    @property
    def groups(self) -> dict[str, tuple[int, ...]]:
        """Canonical classes of each scored target: every foreground class alone, then each region."""
        return {**{name: (c,) for c, name in enumerate(self.classes) if c}, **self.region_classes}

    @property
    def targets(self) -> tuple[str, ...]:
        """Names of the scored targets: classes, then regions (rows of the metric tables)."""
        return tuple(self.groups)

    def describe(self) -> str:
        """``"brats2021 convention: 1 non_enhancing, 2 edema, 4 enhancing"``: the convention in a phrase."""
        pairs = sorted((v, name) for v, name in zip(self.source_values, self.classes, strict=True) if v)
        return f"{self.convention} convention: {', '.join(f'{v} {name}' for v, name in pairs)}"

    # -- label values ------------------------------------------------------------------------------

    def label_table(self) -> np.ndarray:
        """uint8 (256,) source value -> canonical class; :data:`UNDEFINED` for the values not defined."""
        table = np.full(256, UNDEFINED, dtype=np.uint8)
        table[list(self.source_values)] = np.arange(len(self.classes), dtype=np.uint8)
        return table

    def unexpected_values(self, labels: np.ndarray, canonical: bool = False) -> list[int | float]:
        """Sorted values of ``labels`` outside the convention (``canonical``: outside 0..n_classes).

        Integer-valued entries come back as ``int``, others (``1.5``, NaN) as ``float``, so a message
        shows the value found rather than its truncation.
        """
        allowed = set(range(len(self.classes))) if canonical else set(self.source_values)
        bad: list[int | float] = []
        for value in np.unique(labels).tolist():
            if isinstance(value, float) and not value.is_integer():
                bad.append(value)
            elif int(value) not in allowed:
                bad.append(int(value))
        return bad

    def values_error(
        self, bad: list[int | float], *, case_id: str | None = None, path: Path | str | None = None
    ) -> InvalidValueError:
        """The one-line error for label values ``bad`` that the convention does not define."""
        allowed = ",".join(str(v) for v in sorted(self.source_values))
        found = ",".join(format_value(v) for v in bad[:8]) + (",..." if len(bad) > 8 else "")
        return InvalidValueError(
            f"label values must be in {{{allowed}}} ({self.describe()}), found {{{found}}}; "
            "another convention: --labels NAME",
            case_id=case_id,
            path=path,
        )

    def to_canonical(
        self, labels: np.ndarray, *, case_id: str | None = None, path: Path | str | None = None
    ) -> np.ndarray:
        """Source label values -> canonical classes.

        Args:
            labels: integer-valued array of any shape and numeric dtype.

        Returns:
            uint8 array of the same shape with values in 0..n_classes.

        Raises:
            InvalidValueError: ``labels`` holds a value the convention does not define.
        """
        bad = self.unexpected_values(labels)
        if bad:
            raise self.values_error(bad, case_id=case_id, path=path)
        return self.label_table()[labels.astype(np.uint8, copy=False)]

    def to_source(self, labels: np.ndarray) -> np.ndarray:
        """Canonical classes -> the convention's source values (uint8, same shape): what predict writes."""
        bad = self.unexpected_values(labels, canonical=True)
        if bad:
            found = ",".join(format_value(v) for v in bad[:8])
            raise InvalidValueError(f"canonical labels must be in 0..{self.n_classes}, found {{{found}}}")
        table = np.zeros(256, dtype=np.uint8)
        table[: len(self.classes)] = self.source_values
        return table[labels.astype(np.uint8, copy=False)]

    def with_convention(self, other: DatasetSpec) -> DatasetSpec:
        """``other``'s classes, values and regions with this spec's channels (a dataset.json's names)."""
        return other.replace(channels=self.channels)


#: The spec of MSD Task01 (and of every store written before stores carried a spec).
MSD_SPEC = DatasetSpec()


def spec_from_metadata(metadata: Mapping[str, Any] | None) -> DatasetSpec:
    """The spec a store, manifest or checkpoint recorded under ``"spec"``; :data:`MSD_SPEC` when it has
    none (written before the spec existed, when every dataset was read as MSD glioma classes)."""
    data = (metadata or {}).get("spec")
    return MSD_SPEC if data is None else DatasetSpec.from_dict(dict(data))
