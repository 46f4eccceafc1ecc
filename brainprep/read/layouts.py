"""Find the cases of a BraTS data folder and say which files make each case.

Known layouts (auto-detected by :func:`discover_cases`):

- ``msd``: Medical Segmentation Decathlon Task01 -- ``imagesTr/BRATS_NNN.nii.gz`` (4D, channels FLAIR,
  T1w, T1gd, T2w), ``labelsTr/BRATS_NNN.nii.gz``, optional ``imagesTs/`` (no labels) and ``dataset.json``.
- ``brats2021``: one folder per case, ``<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz`` (labels 0,1,2,4).
- ``brats2023``: one folder per case, ``<id>/<id>-{t2f,t1n,t1c,t2w,seg}.nii.gz`` (labels 0,1,2,3).

A folder that itself holds the channel files of one case (``t1c.nii.gz``, ..., ``segmentation.nii.gz``)
is read as a one-case dataset named after the folder.

Files are matched by name without their suffix, so a folder may mix ``.nii`` and ``.nii.gz`` (an
uncompressed image with a compressed label). Two files of one name (``BRATS_001.nii`` and
``BRATS_001.nii.gz``, or one case id in ``imagesTr`` and ``imagesTs``) would make two cases of one id, or
leave it to chance which file is read: :func:`discover_cases` refuses them, naming both files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from brainprep.errors import LayoutError
from brainprep.read.labels import LabelConvention

#: MSD channel order, the canonical one.
CHANNEL_NAMES: tuple[str, ...] = ("FLAIR", "T1w", "T1gd", "T2w")

#: per-file channel keys of the per-case-folder layouts, in MSD channel order.
CHANNEL_KEYS: dict[str, tuple[str, ...]] = {
    "brats2021": ("flair", "t1", "t1ce", "t2"),
    "brats2023": ("t2f", "t1n", "t1c", "t2w"),
}
LABEL_KEYS: tuple[str, ...] = ("seg", "segmentation", "label")
LABEL_CONVENTIONS: dict[str, LabelConvention] = {
    "msd": LabelConvention.MSD,
    "brats2021": LabelConvention.BRATS2021,
    "brats2023": LabelConvention.BRATS2023,
}
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case, whether or not they exist yet (existence is checked on reading).

    Attributes:
        case_id: e.g. ``BRATS_001`` or ``BraTS-GLI-00001-000``.
        layout: ``msd``, ``brats2021`` or ``brats2023``.
        image_paths: one 4D file (msd) or four 3D files in MSD channel order (FLAIR, T1w, T1gd, T2w).
        label_path: the label file, or ``None`` for a case that has no label by design.
        label_convention: the convention the label file is written in.
    """

    case_id: str
    layout: str
    image_paths: tuple[Path, ...]
    label_path: Path | None
    label_convention: LabelConvention

    @property
    def all_paths(self) -> tuple[Path, ...]:
        return self.image_paths + ((self.label_path,) if self.label_path is not None else ())


@dataclass(frozen=True)
class Dataset:
    """All cases found in a data folder, with the names its ``dataset.json`` gives (if any)."""

    root: Path
    layout: str
    cases: tuple[CaseFiles, ...]
    channel_names: tuple[str, ...] = CHANNEL_NAMES
    label_names: tuple[str, ...] = ("background", "edema", "non-enhancing tumour", "enhancing tumour")
    description: dict = field(default_factory=dict, compare=False)

    def case(self, case_id: str) -> CaseFiles:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        known = ", ".join(c.case_id for c in self.cases[:5])
        raise LayoutError(f"no case {case_id!r} in {self.root} (cases: {known}, ...)")

    @property
    def case_ids(self) -> tuple[str, ...]:
        return tuple(c.case_id for c in self.cases)


def strip_nifti_suffix(name: str) -> str | None:
    """``BRATS_001.nii.gz`` -> ``BRATS_001``; ``None`` for a name that is not NIfTI."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _is_visible_nifti(path: Path) -> bool:
    # The MSD tarball ships macOS resource forks (``._BRATS_001.nii.gz``) beside the real files.
    return not path.name.startswith(".") and strip_nifti_suffix(path.name) is not None


def _file_key(path: Path) -> str:
    """Last ``-``/``_``-separated token of the file stem, lower case: ``..._t1ce.nii.gz`` -> ``t1ce``."""
    stem = strip_nifti_suffix(path.name) or path.name
    return re.split(r"[-_.]", stem)[-1].lower()


def _unique(named: Iterable[tuple[str, Path]], what: str) -> dict[str, Path]:
    """``{name: path}``; two paths of one name are a :class:`LayoutError` naming both.

    Args:
        named: (name, path) pairs, e.g. (case id, image file).
        what: the message's words for a name, ``{name}`` where it goes, e.g. ``"case id {name}"``.
    """
    found: dict[str, Path] = {}
    for name, path in named:
        if name in found:
            where = what.format(name=repr(name))
            raise LayoutError(f"duplicate {where}: {found[name]} and {path}; keep one of them")
        found[name] = path
    return found


def _nifti_by_name(folder: Path) -> dict[str, Path]:
    """The visible NIfTI files of ``folder`` by name without suffix (``{}`` when it does not exist)."""
    if not folder.is_dir():
        return {}
    files = sorted(p for p in folder.iterdir() if _is_visible_nifti(p))
    return _unique(
        ((strip_nifti_suffix(p.name) or p.name, p) for p in files), f"file name {{name}} in {folder}"
    )


def _folder_layout(files: list[Path]) -> str | None:
    keys = {_file_key(p) for p in files}
    scores = {layout: len(keys & set(k)) for layout, k in CHANNEL_KEYS.items()}
    best = max(scores, key=lambda layout: scores[layout])
    return best if scores[best] > 0 else None


def _case_from_folder(folder: Path, layout: str, case_id: str, labelled: bool) -> CaseFiles:
    files = sorted(p for p in folder.iterdir() if _is_visible_nifti(p))
    wanted = {*CHANNEL_KEYS[layout], *LABEL_KEYS}
    by_key = _unique(
        ((_file_key(p), p) for p in files if _file_key(p) in wanted), f"{{name}} file in case {case_id}"
    )
    separator = "-" if layout == "brats2023" else "_"
    images = tuple(
        by_key.get(key, folder / f"{case_id}{separator}{key}.nii.gz") for key in CHANNEL_KEYS[layout]
    )
    label = next((by_key[k] for k in LABEL_KEYS if k in by_key), None)
    if label is None and labelled:
        label = folder / f"{case_id}{separator}seg.nii.gz"
    return CaseFiles(case_id, layout, images, label, LABEL_CONVENTIONS[layout])


def _read_dataset_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LayoutError(f"cannot read {path}: {err}") from err


def _discover_msd(root: Path) -> Dataset:
    description = _read_dataset_json(root / "dataset.json") if (root / "dataset.json").exists() else {}
    images = {name: _nifti_by_name(root / name) for name in ("imagesTr", "imagesTs")}
    # one id in imagesTr and imagesTs would be two cases of one id in the store
    _unique(((i, p) for folder in images.values() for i, p in folder.items()), "case id {name}")
    labels = _nifti_by_name(root / "labelsTr")
    cases = [
        CaseFiles(i, "msd", (image,), labels.get(i, root / "labelsTr" / image.name), LabelConvention.MSD)
        for i, image in images["imagesTr"].items()
    ]
    cases += [
        CaseFiles(i, "msd", (image,), None, LabelConvention.MSD) for i, image in images["imagesTs"].items()
    ]
    # A label without its image is a broken case too: list it so check reports the missing image.
    for case_id, label in labels.items():
        if case_id not in images["imagesTr"] and case_id not in images["imagesTs"]:
            image = root / "imagesTr" / label.name
            cases.append(CaseFiles(case_id, "msd", (image,), label, LabelConvention.MSD))
    cases.sort(key=lambda c: c.case_id)
    channel_names = CHANNEL_NAMES
    label_names: tuple[str, ...] = Dataset.__dataclass_fields__["label_names"].default
    if "modality" in description:
        modality = description["modality"]
        channel_names = tuple(str(modality[k]) for k in sorted(modality, key=int))
    if "labels" in description:
        labels = description["labels"]
        label_names = tuple(str(labels[k]) for k in sorted(labels, key=int))
    return Dataset(root, "msd", tuple(cases), channel_names, label_names, description)


def discover_cases(data_dir: Path | str) -> Dataset:
    """Detect the layout of ``data_dir`` and list its cases.

    Raises:
        LayoutError: when the folder does not exist or matches no known layout.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise LayoutError(f"data folder {root} does not exist or is not a folder")
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir() or (root / "labelsTr").is_dir():
        return _discover_msd(root)
    own_files = [p for p in root.iterdir() if p.is_file() and _is_visible_nifti(p)]
    own_layout = _folder_layout(own_files)
    if own_layout is not None:
        labelled = any(_file_key(p) in LABEL_KEYS for p in own_files)
        case = _case_from_folder(root, own_layout, root.name, labelled)
        return Dataset(root, own_layout, (case,))
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    layouts: dict[Path, str] = {}
    for folder in folders:
        files = [p for p in folder.iterdir() if p.is_file() and _is_visible_nifti(p)]
        layout = _folder_layout(files)
        if layout is not None:
            layouts[folder] = layout
    if not layouts:
        raise LayoutError(
            f"{root} matches no known layout: expected imagesTr/ + labelsTr/ (MSD), or one folder per "
            "case with <id>_{flair,t1,t1ce,t2,seg}.nii.gz (BraTS 2017-2021) or "
            "<id>-{t2f,t1n,t1c,t2w,seg}.nii.gz (BraTS 2023)"
        )
    kinds = sorted(set(layouts.values()))
    if len(kinds) > 1:
        raise LayoutError(f"{root} mixes case folders of several layouts: {', '.join(kinds)}")
    layout = kinds[0]
    # Validation releases have no segmentation at all; then a missing seg is by design, not an error.
    # (Visible NIfTI files only: a macOS ``._<id>_seg.nii.gz`` fork does not make a dataset labelled.)
    labelled = any(
        _file_key(p) in LABEL_KEYS
        for folder in layouts
        for p in folder.iterdir()
        if p.is_file() and _is_visible_nifti(p)
    )
    cases = tuple(_case_from_folder(f, layout, f.name, labelled) for f in layouts)
    return Dataset(root, layout, cases)
