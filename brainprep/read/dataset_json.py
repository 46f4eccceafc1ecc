"""What a ``dataset.json`` says about channels and labels (MSD Task01 and nnU-Net v2 raw), as a spec.

Two formats (nnU-Net v2 ``documentation/dataset_format.md``, "dataset.json"; MSD Task01's own file):

- MSD: ``"modality": {"0": "FLAIR", ...}`` and ``"labels": {"0": "background", "1": "edema", ...}``
  (index -> name).
- nnU-Net v2: ``"channel_names": {"0": "FLAIR", ...}`` and ``"labels": {"background": 0, "edema": 1,
  ...}`` (name -> value), where a value may be a list: a region (``"whole tumor": [1, 2, 3]``) for
  region-based training, whose ``regions_class_order`` says which value each region's voxels get.

Channels are honoured: the four MRI modalities are read in the canonical order (FLAIR, T1w, T1gd, T2w)
whatever order the file lists them in; anything else (``{"0": "CT"}``, three channels) is refused.
Accepted channel names, case-insensitive (spaces, ``-`` and ``_`` ignored): see :data:`CHANNEL_ALIASES`.

Labels: each name is matched to a canonical class (:data:`CLASS_ALIASES`); the set of classes must be
that of a known convention (:mod:`brainprep.read.labels`), whose regions the spec takes. Region-based
labels (nnU-Net's Dataset137_BraTS21 writes ``whole tumor (1,2,3), tumor core (2,3), enhancing tumor
(3)``) name the classes by their nesting: a value only in the whole tumour is edema, in the core but not
the enhancing region non-enhancing, in the enhancing region enhancing. Where this does not settle every
value, the dataset needs ``--labels``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brainprep.errors import ConfigError, LayoutError
from brainprep.read.labels import CONVENTIONS, convention_spec
from brainprep.spec import CHANNEL_NAMES, DatasetSpec

#: canonical channel -> the names a dataset.json may give it (compared after :func:`_norm`).
CHANNEL_ALIASES: Mapping[str, tuple[str, ...]] = {
    "FLAIR": ("flair", "t2f", "t2flair", "fl"),
    "T1w": ("t1", "t1w", "t1n", "t1native", "nativet1"),
    "T1gd": ("t1gd", "t1ce", "t1c", "t1post", "t1contrast", "t1+c", "t1+gd"),
    "T2w": ("t2", "t2w"),
}
#: canonical class -> the label names a dataset.json may give it (compared after :func:`_norm`).
CLASS_ALIASES: Mapping[str, tuple[str, ...]] = {
    "background": ("background", "bg"),
    "edema": ("edema", "oedema", "ed", "peritumoraledema", "snfh"),
    "non_enhancing": (
        "nonenhancing",
        "nonenhancingtumor",
        "nonenhancingtumour",
        "nonenh",
        "net",
        "netc",
        "ncr",
        "ncrnet",
        "necrosis",
        "necrotic",
        "necrotictumorcore",
    ),
    "enhancing": ("enhancing", "enhancingtumor", "enhancingtumour", "et"),
    "resection_cavity": ("resectioncavity", "rc", "cavity"),
    "cystic_component": ("cysticcomponent", "cystic", "cc", "cyst"),
}
#: region names of region-based labels (compared after :func:`_norm`).
REGION_ALIASES: Mapping[str, tuple[str, ...]] = {
    "whole_tumour": ("wholetumor", "wholetumour", "wt"),
    "tumour_core": ("tumorcore", "tumourcore", "tc"),
    "enhancing_tumour": ("enhancingtumor", "enhancingtumour", "et"),
}


def _norm(name: Any) -> str:
    return re.sub(r"[\s_\-]", "", str(name)).lower()


def _lookup(aliases: Mapping[str, tuple[str, ...]], name: Any) -> str | None:
    key = _norm(name)
    return next((canonical for canonical, names in aliases.items() if key in names), None)


def channel_index(name: Any) -> int | None:
    """Canonical index (0 FLAIR .. 3 T2w) of a channel name in any release's spelling, ``None`` if none."""
    canonical = _lookup(CHANNEL_ALIASES, name)
    return None if canonical is None else CHANNEL_NAMES.index(canonical)


def channel_order(names: Mapping[str, Any], path: Path) -> tuple[int, ...]:
    """Source channel index of each canonical channel, from ``{"0": "T1", "1": "FLAIR", ...}``.

    Raises:
        LayoutError: the channels are not an object of indices 0..3 naming the four MRI modalities, each
            once.
    """
    if not isinstance(names, Mapping):
        raise LayoutError(f'{path}: channel names must be an object {{"0": "FLAIR", ...}}, found {names!r}')
    indices = [str(index) for index in names]
    if len(indices) == len(CHANNEL_NAMES) and sorted(indices) != [str(i) for i in range(len(CHANNEL_NAMES))]:
        raise LayoutError(
            f"{path}: channel indices {', '.join(indices)} are not 0..{len(CHANNEL_NAMES) - 1} (the file "
            f"suffixes _0000.._{len(CHANNEL_NAMES) - 1:04d}, or the 4th axis of an MSD image)"
        )
    found = {str(index): _lookup(CHANNEL_ALIASES, str(name)) for index, name in names.items()}
    order = {canonical: index for index, canonical in found.items() if canonical is not None}
    if len(names) != len(CHANNEL_NAMES) or len(order) != len(CHANNEL_NAMES) or None in found.values():
        accepted = "; ".join(f"{c}: {', '.join(a)}" for c, a in CHANNEL_ALIASES.items())
        raise LayoutError(
            f"{path}: channels {dict(names)} are not the four MRI modalities {', '.join(CHANNEL_NAMES)} "
            f"(accepted names, case-insensitive: {accepted})"
        )
    return tuple(int(order[c]) for c in CHANNEL_NAMES)


def _refuse(path: Path, labels: Any, why: str) -> LayoutError:
    return LayoutError(
        f"{path}: labels {labels} {why}; name the convention with --labels ({', '.join(CONVENTIONS)})"
    )


def _is_int(value: Any) -> bool:
    """A label value as JSON writes one: an integer (``3.7`` or ``"3"`` is no value, and ``True`` is not
    an integer in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _values_by_class(labels: Mapping[str, Any], path: Path) -> dict[str, int]:
    """``{canonical class: source value}`` of plain (not region-based) labels, in either format."""
    if all(re.fullmatch(r"\d+", str(k)) for k in labels):  # MSD: index -> name
        pairs = [(name, int(index)) for index, name in labels.items()]
    else:  # nnU-Net v2: name -> value
        pairs = [(name, value) for name, value in labels.items()]
    classes: dict[str, int] = {}
    for name, value in pairs:
        canonical = _lookup(CLASS_ALIASES, name)
        if canonical is None or canonical in classes or not _is_int(value):
            raise _refuse(path, dict(labels), f"name a class it cannot place ({name!r})")
        classes[canonical] = value
    return classes


def _values_from_regions(labels: Mapping[str, Any], path: Path) -> dict[str, int]:
    """``{canonical class: source value}`` of region-based nnU-Net labels, by the regions' nesting."""
    regions: dict[str, set[int]] = {}
    for name, value in labels.items():
        if _lookup(CLASS_ALIASES, name) == "background":
            continue
        region = _lookup(REGION_ALIASES, name)
        if region is None:
            raise _refuse(path, dict(labels), f"name a region it cannot place ({name!r})")
        values = value if isinstance(value, list | tuple) else [value]
        bad = [v for v in values if not _is_int(v)]
        if bad or not values:
            found = f"the value {bad[0]!r}" if bad else "no value"
            raise _refuse(path, dict(labels), f"give region {name!r} {found} (its values are integers)")
        regions[region] = set(values)
    if set(regions) != set(REGION_ALIASES):
        raise _refuse(path, dict(labels), "are not the whole tumour / tumour core / enhancing regions")
    whole, core, enhancing = (regions[r] for r in REGION_ALIASES)
    parts = {"edema": whole - core, "non_enhancing": core - enhancing, "enhancing": enhancing}
    if any(len(values) != 1 for values in parts.values()) or not enhancing <= core <= whole:
        raise _refuse(path, dict(labels), "do not nest into one value per class")
    return {"background": 0, **{name: next(iter(values)) for name, values in parts.items()}}


def spec_from_dataset_json(description: Mapping[str, Any], path: Path, labels: str | None) -> DatasetSpec:
    """The spec of a dataset whose ``dataset.json`` is ``description``.

    Args:
        path: the file, for messages.
        labels: a convention name (``--labels``) that overrides the file's labels.

    Raises:
        LayoutError: channels or labels the file gives that cannot be placed.
    """
    names = description.get("channel_names", description.get("modality"))
    if names is not None:
        channel_order(names, path)  # refuses what is not the four modalities
    if labels is not None:
        return convention_spec(labels)
    if "labels" not in description:
        return convention_spec("msd")
    given = description["labels"]
    if not isinstance(given, Mapping) or not given:
        raise LayoutError(
            f'{path}: labels must be a non-empty object ({{"background": 0, ...}}), found {given!r}'
        )
    regional = any(isinstance(v, list | tuple) for v in given.values())
    classes = _values_from_regions(given, path) if regional else _values_by_class(given, path)
    for spec in CONVENTIONS.values():
        if set(spec.classes) == set(classes):
            values = tuple(classes[c] for c in spec.classes)
            if values == spec.source_values:
                return spec
            try:
                return spec.replace(convention="nnunet", source_values=values)
            except ConfigError as err:  # e.g. two classes of one value, a background other than 0
                raise _refuse(path, dict(given), f"cannot be read: {err}") from err
    raise _refuse(path, dict(given), "are not the classes of a known convention")
