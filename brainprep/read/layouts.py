"""Find the cases of a BraTS data folder and say which files make each case.

Known layouts (auto-detected by :func:`discover_cases`):

- ``msd``: Medical Segmentation Decathlon Task01 -- ``imagesTr/BRATS_NNN.nii.gz`` (4D, channels FLAIR,
  T1w, T1gd, T2w), ``labelsTr/BRATS_NNN.nii.gz``, optional ``imagesTs/`` (no labels) and ``dataset.json``.
- ``nnunet``: nnU-Net v2 raw -- ``imagesTr/<id>_0000<file_ending>`` .. ``_0003`` (one file per channel, the
  channel of each index named by ``dataset.json``'s ``channel_names``), ``labelsTr/<id><file_ending>``,
  optional ``imagesTs/``; the dataset.json is required (without it the channels have no names).
- ``brats2021``: one folder per case, ``<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz`` (labels 0,1,2,4).
- ``brats2023``: one folder per case, ``<id>/<id>-{t2f,t1n,t1c,t2w,seg}.nii.gz``: the BraTS 2023-2025
  releases, whose label convention the case id prefix settles (``BraTS-GLI-``, ``-MEN-``, ``-MET-``,
  ``-SSA-``: brats2023; ``BraTS-PED-``: ambiguous, refused without ``--labels``).

The label convention and channel order of a dataset make its :class:`~brainprep.spec.DatasetSpec`
(:attr:`Dataset.spec`): from ``--labels`` (``labels=``) when given, else from the layout, the ids or the
dataset.json; where none of them settles it, :func:`discover_cases` refuses, naming ``--labels``.

A folder that itself holds the channel files of one case (``t1c.nii.gz``, ..., ``segmentation.nii.gz``)
is read as a one-case dataset named after the folder.

Files are matched by name without their suffix, so a folder may mix ``.nii`` and ``.nii.gz`` (an
uncompressed image with a compressed label). Two files of one name (``BRATS_001.nii`` and
``BRATS_001.nii.gz``, or one case id in ``imagesTr`` and ``imagesTs``) would make two cases of one id, or
leave it to chance which file is read: :func:`discover_cases` refuses them, naming both files. So it does
two label files in one case folder (``-seg`` and ``-label``), and the files of one case folder whose names
carry two case ids (another case's scan copied in). A case folder holding its label and no channel file
is a case whose channel files are missing, as a label without its image is in ``imagesTr``/``labelsTr``.
MSD and nnU-Net raw (v1) both name their dataset.json's channels ``modality``: image files of one channel
each are nnU-Net's, 4D files MSD's (whose ids may end in ``_NNNN`` too).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from brainprep.errors import CaseError, LayoutError
from brainprep.read.dataset_json import channel_order, spec_from_dataset_json
from brainprep.read.labels import AMBIGUOUS_PREFIXES, ID_PREFIXES, convention_spec
from brainprep.read.nifti import read_nifti_header
from brainprep.spec import MSD_SPEC, DatasetSpec

#: per-file channel keys of the per-case-folder layouts, in MSD channel order.
CHANNEL_KEYS: dict[str, tuple[str, ...]] = {
    "brats2021": ("flair", "t1", "t1ce", "t2"),
    "brats2023": ("t2f", "t1n", "t1c", "t2w"),
}
LABEL_KEYS: tuple[str, ...] = ("seg", "segmentation", "label")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case, whether or not they exist yet (existence is checked on reading).

    Attributes:
        case_id: e.g. ``BRATS_001`` or ``BraTS-GLI-00001-000``.
        layout: ``msd``, ``nnunet``, ``brats2021`` or ``brats2023``.
        image_paths: one 4D file (msd) or four 3D files in canonical channel order (FLAIR, T1w, T1gd, T2w).
        label_path: the label file, or ``None`` for a case that has no label by design.
        spec: the dataset's spec (label convention of the label file, channel names).
        channel_index: for one 4D file, the file's channel of each canonical channel (a dataset.json
            that lists the modalities in another order).
    """

    case_id: str
    layout: str
    image_paths: tuple[Path, ...]
    label_path: Path | None
    spec: DatasetSpec = MSD_SPEC
    channel_index: tuple[int, ...] = (0, 1, 2, 3)

    @property
    def all_paths(self) -> tuple[Path, ...]:
        return self.image_paths + ((self.label_path,) if self.label_path is not None else ())

    def channel_path(self, channel: int) -> Path:
        """The file holding canonical channel ``channel`` (0 FLAIR .. 3 T2w): the one 4D file, or its own."""
        return self.image_paths[0] if len(self.image_paths) == 1 else self.image_paths[channel]


@dataclass(frozen=True)
class Dataset:
    """All cases found in a data folder, its spec, and its ``dataset.json`` (if any) as read."""

    root: Path
    layout: str
    cases: tuple[CaseFiles, ...]
    spec: DatasetSpec = MSD_SPEC
    description: dict = field(default_factory=dict, compare=False)
    #: the source channel (a 4D file's channel, or a ``_000N`` file) of each canonical channel, as the
    #: dataset.json orders them (``(0, 1, 2, 3)``: the canonical order, or no dataset.json)
    channel_order: tuple[int, ...] = (0, 1, 2, 3)

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


def _stem_parts(path: Path) -> tuple[str | None, str]:
    """(what precedes the last ``-``/``_``/``.`` of the file stem, its last token):
    ``BraTS-PED-00001-000-t2f.nii.gz`` -> ``("BraTS-PED-00001-000", "t2f")``; ``(None, stem)`` without one."""
    stem = strip_nifti_suffix(path.name) or path.name
    parts = re.split(r"[-_.](?=[^-_.]*$)", stem, maxsplit=1)
    return (parts[0], parts[1]) if len(parts) == 2 else (None, stem)


def _file_key(path: Path) -> str:
    """Last ``-``/``_``-separated token of the file stem, lower case: ``..._t1ce.nii.gz`` -> ``t1ce``."""
    return _stem_parts(path)[1].lower()


def _file_case_ids(files: Iterable[Path]) -> set[str]:
    """The case ids the channel and label files of a case folder carry: each stem less its last
    ``-``/``_`` token (``BraTS-PED-00001-000-t2f.nii.gz`` -> ``BraTS-PED-00001-000``). A folder may have
    been renamed (``input/`` of a container); its files still say which release they come from."""
    return {head for head, _ in map(_stem_parts, files) if head is not None}


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
    """The per-case-folder layout whose channel keys ``files`` carry most, ``None`` for none."""
    keys = {_file_key(p) for p in files}
    scores = {layout: len(keys & set(k)) for layout, k in CHANNEL_KEYS.items()}
    best = max(scores, key=lambda layout: scores[layout])
    return best if scores[best] > 0 else None


def _label_only_layout(files: list[Path]) -> str | None:
    """The layout of a case folder holding a label file and no channel file (an incomplete download or
    copy), by the separator before its key (``..._seg``: brats2021, else brats2023); ``None`` when
    ``files`` hold no label file. Such a folder is a case whose channel files are missing, as MSD's and
    nnU-Net's label without its image is, never silently no case."""
    label = next((p for p in files if _file_key(p) in LABEL_KEYS), None)
    if label is None:
        return None
    head = _stem_parts(label)[0]
    stem = strip_nifti_suffix(label.name) or label.name
    return "brats2021" if head is not None and stem[len(head)] == "_" else "brats2023"


def _one_case_id(files: Iterable[Path], case_id: str) -> None:
    """Refuse the files of a case folder that name two cases (``BraTS-GLI-00002-000-t2w.nii.gz`` copied
    into ``BraTS-GLI-00001-000/``): read by its key alone, the other case's scan would be this case's.
    A file without a case id in its name (``t2w.nii.gz``) beside one with an id counts as another case.
    The folder's own name may differ from the files' id (a renamed folder)."""
    by_id: dict[str | None, list[Path]] = {}
    for path in files:
        by_id.setdefault(_stem_parts(path)[0], []).append(path)
    if len(by_id) > 1:
        # the id most files carry first: the message then names the odd file second
        (id_a, (path_a, *_)), (id_b, (path_b, *_)) = sorted(by_id.items(), key=lambda kv: -len(kv[1]))[:2]

        def named(head: str | None, path: Path) -> str:
            return f"{path} ({'no case id' if head is None else f'case {head}'})"

        raise LayoutError(
            f"the files of case {case_id} name two cases: {named(id_a, path_a)} and "
            f"{named(id_b, path_b)}; keep the files of one case in each folder"
        )


def _case_from_folder(folder: Path, layout: str, case_id: str, spec: DatasetSpec) -> CaseFiles:
    """The case of one folder; a folder without a label file is an unlabelled case (``label_path``
    ``None``), even next to labelled ones: ``check`` reports it as such and a build leaves it out.

    Raises:
        LayoutError: two files of one key, two label files (``-seg`` and ``-label``), or files that
            name two case ids.
    """
    files = sorted(p for p in folder.iterdir() if _is_visible_nifti(p))
    wanted = {*CHANNEL_KEYS[layout], *LABEL_KEYS}
    matched = [p for p in files if _file_key(p) in wanted]
    by_key = _unique(((_file_key(p), p) for p in matched), f"{{name}} file in case {case_id}")
    _one_case_id(matched, case_id)
    separator = "-" if layout == "brats2023" else "_"
    images = tuple(
        by_key.get(key, folder / f"{case_id}{separator}{key}.nii.gz") for key in CHANNEL_KEYS[layout]
    )
    labels = [by_key[k] for k in LABEL_KEYS if k in by_key]
    if len(labels) > 1:  # e.g. a model's prediction beside the reference: which one is the truth?
        raise LayoutError(f"two label files in case {case_id}: {labels[0]} and {labels[1]}; keep one of them")
    return CaseFiles(case_id, layout, images, labels[0] if labels else None, spec)


def _read_dataset_json(path: Path) -> dict:
    try:
        description = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LayoutError(f"cannot read {path}: {err}") from err
    if not isinstance(description, dict):
        raise LayoutError(f"{path}: a dataset.json is a JSON object, found a {type(description).__name__}")
    return description


def _is_nnunet(root: Path, description: dict) -> bool:
    """nnU-Net raw: its dataset.json has ``channel_names`` (v2), or its images are ``<id>_0000`` files
    holding one 3D channel each (v1, whose dataset.json has MSD's ``modality``).

    The name alone does not settle it: MSD ids may end in four digits too (``BRATS_0000.nii.gz``), and
    their files are 4D. The first such file whose header reads decides; when none reads, the names do
    (the reader then reports the broken file)."""
    if "channel_names" in description:
        return True
    folders = [root / "imagesTr", root / "imagesTs"]
    numbered = [
        path
        for folder in folders
        for name, path in _nifti_by_name(folder).items()
        if re.search(r"_\d{4}$", name)
    ]
    for path in numbered:
        try:
            shape = read_nifti_header(path).shape
        except (CaseError, OSError):  # e.g. permission denied
            continue
        return len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)  # one channel, not MSD's four
    return bool(numbered)


def _nnunet_images(folder: Path, n_channels: int) -> dict[str, tuple[Path, ...]]:
    """``{case id: channel files _0000.._000N}`` of an nnU-Net images folder; a missing one is refused."""
    by_case: dict[str, dict[int, Path]] = {}
    for name, path in _nifti_by_name(folder).items():
        match = re.fullmatch(r"(.+)_(\d{4})", name)
        if match is None:
            raise LayoutError(
                f"{path}: nnU-Net image files are named <case id>_<4-digit channel>, e.g. _0000"
            )
        by_case.setdefault(match[1], {})[int(match[2])] = path
    for case_id, channels in by_case.items():
        if sorted(channels) != list(range(n_channels)):
            found = ", ".join(f"_{c:04d}" for c in sorted(channels))
            raise LayoutError(
                f"case {case_id} in {folder}: expected channel files _0000.._{n_channels - 1:04d}, "
                f"found {found}"
            )
    return {case_id: tuple(channels[c] for c in range(n_channels)) for case_id, channels in by_case.items()}


def _discover_imagestr(root: Path, labels: str | None) -> Dataset:
    """The MSD and nnU-Net layouts: ``imagesTr/`` (+ ``labelsTr/``, optional ``imagesTs/``)."""
    json_path = root / "dataset.json"
    description = _read_dataset_json(json_path) if json_path.exists() else {}
    nnunet = _is_nnunet(root, description)
    # nnU-Net v2 names the channels in channel_names, v1 (Task folders) in modality, in the same format
    if nnunet and "channel_names" not in description and "modality" not in description:
        raise LayoutError(
            f"{root} holds nnU-Net raw images (<id>_0000...) but no dataset.json with channel_names (or "
            "nnU-Net v1's modality): without it the channels have no names"
        )
    ending = str(description.get("file_ending", ".nii.gz"))
    if ending not in NIFTI_SUFFIXES:
        raise LayoutError(f"{json_path}: file_ending {ending!r} is not NIfTI ({', '.join(NIFTI_SUFFIXES)})")
    spec = spec_from_dataset_json(description, json_path, labels)
    names = description.get("channel_names", description.get("modality"))
    order = channel_order(names, json_path) if names is not None else (0, 1, 2, 3)
    layout = "nnunet" if nnunet else "msd"
    if nnunet:
        images = {name: _nnunet_images(root / name, len(order)) for name in ("imagesTr", "imagesTs")}
        images = {n: {i: tuple(paths[c] for c in order) for i, paths in d.items()} for n, d in images.items()}
        index = (0, 1, 2, 3)  # the channel files are put in canonical order
    else:
        images = {
            name: {i: (p,) for i, p in _nifti_by_name(root / name).items()}
            for name in ("imagesTr", "imagesTs")
        }
        index = order
    # one id in imagesTr and imagesTs would be two cases of one id in the store
    _unique(((i, p[0]) for folder in images.values() for i, p in folder.items()), "case id {name}")
    label_files = _nifti_by_name(root / "labelsTr")
    cases = [
        # imagesTr holds labelled cases (unlabelled ones go in imagesTs): a missing label is a missing file
        CaseFiles(i, layout, paths, label_files.get(i, root / "labelsTr" / f"{i}{ending}"), spec, index)
        for i, paths in images["imagesTr"].items()
    ]
    cases += [CaseFiles(i, layout, paths, None, spec, index) for i, paths in images["imagesTs"].items()]
    # A label without its image is a broken case too: list it so check reports the missing image.
    for case_id, label in label_files.items():
        if case_id not in images["imagesTr"] and case_id not in images["imagesTs"]:
            image = root / "imagesTr" / (f"{case_id}_0000{ending}" if nnunet else label.name)
            cases.append(CaseFiles(case_id, layout, (image,), label, spec, index))
    cases.sort(key=lambda c: c.case_id)
    return Dataset(root, layout, tuple(cases), spec, description, order)


def spec_for_ids(case_ids: Iterable[str], layout: str, labels: str | None) -> DatasetSpec:
    """The spec of per-case-folder cases: ``--labels`` when given, BraTS 2017-2021's for that layout,
    else what the BraTS 2023+ id prefixes settle.

    Ids without a known prefix (a renamed case, ``t1c.nii.gz`` files in a folder) read as ``brainprep``
    has always read the BraTS 2023 file naming, with the 2023 values: every release with those names
    except the pediatric ones, whose ids carry ``BraTS-PED-``, agrees on values 1-3 (logged at info).

    Raises:
        LayoutError: a prefix that does not settle the convention (``BraTS-PED-``), or ids of releases
            with different conventions; the message names ``--labels``.
    """
    if labels is not None:
        return convention_spec(labels)
    if layout == "brats2021":
        return convention_spec("brats2021")
    ids = list(case_ids)
    for prefix, meaning in AMBIGUOUS_PREFIXES.items():
        if any(i.startswith(prefix) for i in ids):
            raise LayoutError(f"{prefix} cases write {meaning}: name the convention with --labels")
    found = {next((ID_PREFIXES[p] for p in ID_PREFIXES if i.startswith(p)), None) for i in ids}
    if None in found:
        logger.info("case ids without a known BraTS prefix: reading their labels as brats2023")
    names = sorted((found - {None}) or {"brats2023"})
    if len(names) > 1:
        raise LayoutError(
            f"the case ids mix releases of conventions {', '.join(names)}: name one with --labels"
        )
    return convention_spec(names[0])


def listing_warnings(dataset: Dataset) -> tuple[str, ...]:
    """What a folder's dataset.json lists that the folder does not hold, one line each (an incomplete
    download or copy): MSD's ``training`` / ``test`` entries whose image is not there, and a
    ``numTraining`` other than the number of cases found with a label file; and a label in ``labelsTr/``
    whose image is in ``imagesTs/``, which is read as an unlabelled case.

    Args:
        dataset: from :func:`discover_cases` (its ``description``: the dataset.json as read).
    """
    description, json_path = dataset.description, dataset.root / "dataset.json"
    found = set(dataset.case_ids)
    lines = []
    for key in ("training", "test"):
        entries = description.get(key)
        missing = []
        for entry in entries if isinstance(entries, list) else []:
            image = entry.get("image") if isinstance(entry, dict) else entry
            case_id = strip_nifti_suffix(Path(image).name) if isinstance(image, str) else None
            if case_id is not None and case_id not in found:
                missing.append(f"{case_id} ({image})")
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            lines.append(f"{json_path}: lists {len(missing)} {key} case(s) the folder does not hold: {shown}")
    labels = set(_nifti_by_name(dataset.root / "labelsTr"))
    for case in dataset.cases:  # a label beside an image in imagesTs/: that case is read unlabelled
        if case.label_path is None and case.case_id in labels and dataset.layout in ("msd", "nnunet"):
            lines.append(
                f"{dataset.root / 'labelsTr'}: the label of {case.case_id} is not read, its image is in "
                "imagesTs/ (unlabelled cases); move the image to imagesTr/ to train on it"
            )
    expected = description.get("numTraining")
    labelled = sum(1 for c in dataset.cases if c.label_path is not None and c.label_path.is_file())
    if isinstance(expected, int) and not isinstance(expected, bool) and expected != labelled:
        lines.append(f"{json_path}: numTraining is {expected}, the folder holds {labelled} labelled case(s)")
    return tuple(lines)


def discover_cases(data_dir: Path | str, labels: str | None = None) -> Dataset:
    """Detect the layout and spec of ``data_dir`` and list its cases.

    Args:
        labels: the label convention (``--labels``, a name of :data:`brainprep.read.labels.CONVENTIONS`);
            ``None``: detected from the layout, the case ids or the dataset.json.

    Raises:
        LayoutError: when the folder does not exist, matches no known layout, or its convention is not
            settled without ``labels``.
        ConfigError: an unknown ``labels`` name.
    """
    root = Path(data_dir)
    if labels is not None:
        convention_spec(labels)  # an unknown name fails first, whatever the folder
    if not root.is_dir():
        raise LayoutError(f"data folder {root} does not exist or is not a folder")
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir() or (root / "labelsTr").is_dir():
        return _discover_imagestr(root, labels)
    own_files = [p for p in root.iterdir() if p.is_file() and _is_visible_nifti(p)]
    own_layout = _folder_layout(own_files)
    if own_layout is not None:
        spec = spec_for_ids([root.name, *sorted(_file_case_ids(own_files))], own_layout, labels)
        return Dataset(root, own_layout, (_case_from_folder(root, own_layout, root.name, spec),), spec)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    layouts: dict[Path, str] = {}
    label_only: dict[Path, str] = {}  # folders holding a label and no channel file
    file_ids: set[str] = set()
    for folder in folders:
        files = [p for p in folder.iterdir() if p.is_file() and _is_visible_nifti(p)]
        layout = _folder_layout(files)
        if layout is not None:
            layouts[folder] = layout
        elif (guess := _label_only_layout(files)) is not None:
            label_only[folder] = guess
        else:
            continue
        file_ids |= _file_case_ids(files)
    # a label-only folder takes the layout of the folders with channel files (its separator otherwise)
    kinds = sorted(set(layouts.values()) or set(label_only.values()))
    if len(kinds) == 1:
        layouts = dict(sorted({**layouts, **dict.fromkeys(label_only, kinds[0])}.items()))
    if not layouts and not label_only:
        raise LayoutError(
            f"{root} matches no known layout: expected imagesTr/ + labelsTr/ (MSD, nnU-Net raw), or one "
            "folder per case with <id>_{flair,t1,t1ce,t2,seg}.nii.gz (BraTS 2017-2021) or "
            "<id>-{t2f,t1n,t1c,t2w,seg}.nii.gz (BraTS 2023+)"
        )
    if len(kinds) > 1:
        raise LayoutError(f"{root} mixes case folders of several layouts: {', '.join(kinds)}")
    layout = kinds[0]
    spec = spec_for_ids([*(f.name for f in layouts), *sorted(file_ids)], layout, labels)
    cases = tuple(_case_from_folder(f, layout, f.name, spec) for f in layouts)
    return Dataset(root, layout, cases, spec)
