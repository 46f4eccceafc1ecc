"""The dataset spec: conventions, dataset.json (MSD, nnU-Net v2 raw), id prefixes, spec round trips."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA, orient_from_ras, ras_affine, small_case, write_brats_case, write_nifti_file

from brainprep.cli import main as brainprep_main
from brainprep.errors import ConfigError, InvalidValueError, LayoutError
from brainprep.read import CONVENTIONS, CaseFiles, convention_spec, discover_cases, read_case
from brainprep.read.case import read_label
from brainprep.spec import MSD_SPEC, DatasetSpec, spec_from_metadata

MSD_LABEL = SHARED_DATA / "msd-labels" / "labelsTr" / "BRATS_002.nii.gz"

#: source value of each canonical class (background, edema, non-enhancing, enhancing[, 4th]), by hand
#: from the public descriptions cited in brainprep/read/labels.py (not from the code under test).
HAND_TABLES: dict[str, tuple[int, ...]] = {
    "msd": (0, 1, 2, 3),
    "brats2021": (0, 2, 1, 4),  # NCR/NET 1, ED 2, ET 4
    "brats2023": (0, 2, 1, 3),  # NETC 1, SNFH 2, ET 3
    "brats2023-gli": (0, 2, 1, 3),
    "brats2023-men": (0, 2, 1, 3),
    "brats2023-met": (0, 2, 1, 3),
    "brats2023-ssa": (0, 2, 1, 3),
    "brats2023-ped": (0, 2, 1, 3),
    "brats2024-gli": (0, 2, 1, 3, 4),  # NETC 1, SNFH 2, ET 3, RC 4
    "brats2024-ped": (0, 4, 2, 1, 3),  # ET 1, NET 2, CC 3, ED 4
}


def real_msd_crop() -> np.ndarray:
    """A 40x40x24 crop of BRATS_002's real MSD label map around its tumour (classes 1, 2, 3 present)."""
    if not MSD_LABEL.is_file():
        pytest.skip(f"real label {MSD_LABEL} not present (see ../shared/data/README.md)")
    label = np.asarray(nib.load(MSD_LABEL).dataobj).astype(np.uint8)
    centre = np.rint(np.argwhere(label == 3).mean(axis=0)).astype(int)
    box = tuple(slice(c - h, c + h) for c, h in zip(centre, (20, 20, 12), strict=True))
    crop = np.ascontiguousarray(label[box])
    assert set(np.unique(crop)) == {0, 1, 2, 3}
    return crop


def test_every_convention_has_a_hand_table():
    assert set(CONVENTIONS) == set(HAND_TABLES)


@pytest.mark.parametrize("name", sorted(HAND_TABLES))
@pytest.mark.parametrize("axcodes", ["RAS", "LPS"])
def test_every_convention_round_trips_a_real_label_map(tmp_path, name, axcodes):
    """A real MSD map written in the convention's values (and orientation) reads back as the MSD map."""
    canonical = real_msd_crop()
    spec = convention_spec(name)
    if spec.n_classes == 4:  # give the 4th class (cavity, cyst) a block of its own
        canonical[:4, :4, :4] = 4
    hand = np.array(HAND_TABLES[name], dtype=np.uint8)
    source, affine = orient_from_ras(hand[canonical], ras_affine(), axcodes)
    path = write_nifti_file(tmp_path / "seg.nii.gz", source, affine, "uint8")
    files = CaseFiles("case", "brats2023", (), path, spec)
    np.testing.assert_array_equal(read_label(files).label, canonical)
    np.testing.assert_array_equal(spec.to_source(canonical), hand[canonical])  # what predict writes


def test_spec_round_trips_through_its_dict_and_older_metadata_reads_as_msd():
    spec = convention_spec("brats2024-ped")
    again = DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.region_classes["tumour_core"] == (2, 3, 4)
    assert spec_from_metadata({"params": {}}) == MSD_SPEC  # a store written before the spec
    assert spec_from_metadata({"spec": spec.to_dict()}) == spec
    assert spec.targets == (
        "edema",
        "non_enhancing",
        "enhancing",
        "cystic_component",
        "whole_tumour",
        "tumour_core",
        "enhancing_tumour",
    )


@pytest.mark.parametrize(
    "change",
    [
        {"classes": ("edema", "enhancing")},  # no background
        {"source_values": (0, 1, 1, 3)},  # two classes of one value
        {"source_values": (0, 1, 2)},  # a class without a value
        {"regions": (("whole_tumour", (1, 5)),)},  # a region of a class that does not exist
    ],
)
def test_spec_refuses_inconsistent_tables(change):
    with pytest.raises(ConfigError):
        MSD_SPEC.replace(**change)


def test_unknown_convention_names_the_known_ones():
    with pytest.raises(ConfigError, match="brats2024-gli"):
        convention_spec("brats2099")


def test_value_outside_the_convention_names_labels_option():
    with pytest.raises(InvalidValueError, match=r"found \{4\}.*--labels"):
        convention_spec("brats2023").to_canonical(np.array([0, 1, 4], dtype=np.uint8))


def test_a_value_just_off_an_integer_is_shown_as_found():
    """Review r11: ``:g`` printed the float32 just below 1 as 1, refusing "{1}" where 1 is allowed."""
    below_one = float(np.nextafter(np.float32(1), np.float32(0)))
    labels = np.array([0, below_one, 2.5, 3], dtype=np.float64)
    with pytest.raises(InvalidValueError, match=r"found \{0\.99999994,2\.5\}"):
        convention_spec("msd").to_canonical(labels)
    with pytest.raises(InvalidValueError, match=r"found \{1e-12\}"):
        convention_spec("msd").to_canonical(np.array([1e-12]))
    # even where 9 digits round to an integer, the value does not read as one
    with pytest.raises(InvalidValueError, match=r"found \{0\.999999999999\}"):
        convention_spec("msd").to_canonical(np.array([0.999999999999]))
    with pytest.raises(InvalidValueError, match=r"found \{3\.00000024,40000\}"):
        MSD_SPEC.to_source(np.array([float(np.nextafter(np.float32(3), np.float32(4))), 40000.0]))


# -- per-case-folder layouts: id prefixes ---------------------------------------------------------------


def _brats_folder(root: Path, case_id: str, values: dict[int, int] | None = None) -> Path:
    image, label = small_case()
    if values is not None:
        table = np.arange(256, dtype=np.uint8)
        for msd, value in values.items():
            table[msd] = value
        label = table[label]
    # written as MSD values: the test only cares about discovery here
    write_brats_case(root, case_id, image, label, layout="brats2023")
    return root


def test_ped_without_labels_is_refused_naming_the_option(tmp_path):
    _brats_folder(tmp_path, "BraTS-PED-00001-000")
    with pytest.raises(LayoutError, match="--labels") as info:
        discover_cases(tmp_path)
    assert "brats2024-ped" in str(info.value) and "\n" not in str(info.value)
    result = CliRunner().invoke(brainprep_main, ["check", str(tmp_path)])
    assert result.exit_code == 2 and "--labels" in result.output
    assert discover_cases(tmp_path, "brats2024-ped").spec == convention_spec("brats2024-ped")


@pytest.mark.parametrize("one_case_folder", [False, True])
def test_ped_files_in_a_renamed_folder_are_refused_too(tmp_path, one_case_folder):
    """A container's ``input/`` or renamed case folders: the file names still carry BraTS-PED-."""
    _brats_folder(tmp_path / "data", "BraTS-PED-00001-000")
    _brats_folder(tmp_path / "data", "BraTS-PED-00002-000")
    for k in (1, 2):
        (tmp_path / "data" / f"BraTS-PED-0000{k}-000").rename(tmp_path / "data" / f"case{k}")
    root = tmp_path / "data" / "case1" if one_case_folder else tmp_path / "data"
    with pytest.raises(LayoutError, match=r"BraTS-PED-.*--labels"):
        discover_cases(root)
    result = CliRunner().invoke(brainprep_main, ["check", str(root)])
    assert result.exit_code == 2 and "--labels" in result.output
    assert discover_cases(root, "brats2023-ped").spec == convention_spec("brats2023-ped")


@pytest.mark.parametrize(
    ("case_id", "convention"), [("BraTS-GLI-00001-000", "brats2023"), ("BraTS-MEN-00001-000", "brats2023")]
)
def test_known_prefixes_settle_the_convention(tmp_path, case_id, convention):
    _brats_folder(tmp_path, case_id)
    assert discover_cases(tmp_path).spec == convention_spec(convention)


def test_post_treatment_cavity_reads_with_labels_option(tmp_path):
    """BraTS 2024 GLI post-treatment: label 4 (resection cavity) refused as 2023, read as brats2024-gli."""
    image, label = small_case()
    label[2:6, 2:6, 2:6] = 4  # MSD has no class 4: as canonical, the cavity
    source = np.array(HAND_TABLES["brats2024-gli"], dtype=np.uint8)[label]
    write_brats_case(tmp_path, "BraTS-GLI-02000-100", image, None, layout="brats2023")
    folder = tmp_path / "BraTS-GLI-02000-100"
    affine = nib.load(next(folder.glob("*t1c.nii.gz"))).affine
    source_lps = orient_from_ras(source, ras_affine(), "LPS")[0]
    write_nifti_file(folder / "BraTS-GLI-02000-100-seg.nii.gz", source_lps, affine, "uint8")
    with pytest.raises(InvalidValueError, match=r"found \{4\}.*--labels"):
        read_case(discover_cases(tmp_path).cases[0])
    case = read_case(discover_cases(tmp_path, "brats2024-gli").cases[0])
    np.testing.assert_array_equal(case.label, label)


# -- dataset.json: MSD and nnU-Net v2 raw ----------------------------------------------------------------

NNUNET_LABELS = {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}
#: nnU-Net's Dataset137_BraTS21: region-based labels over the MSD values.
NNUNET_REGIONS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


def write_nnunet_copy(msd_root: Path, out: Path, order: tuple[int, ...], labels: dict) -> Path:
    """nnU-Net v2 raw copy of an MSD dataset: channel ``order[k]`` of the 4D file as ``_000k``."""
    names = ("FLAIR", "T1w", "T1gd", "T2w")
    for image_path in sorted((msd_root / "imagesTr").glob("*.nii.gz")):
        case_id = image_path.name[: -len(".nii.gz")]
        source = nib.load(image_path)
        data = np.asarray(source.dataobj)
        for k, channel in enumerate(order):
            write_nifti_file(
                out / "imagesTr" / f"{case_id}_{k:04d}.nii.gz", data[..., channel], source.affine
            )
        label = nib.load(msd_root / "labelsTr" / image_path.name)
        write_nifti_file(out / "labelsTr" / image_path.name, np.asarray(label.dataobj), label.affine, "uint8")
    description = {
        "channel_names": {str(k): names[c] for k, c in enumerate(order)},
        "labels": labels,
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    (out / "dataset.json").write_text(json.dumps(description))
    return out


def _same_cases(a: Path, b: Path, labels: str | None = None) -> None:
    first, second = discover_cases(a), discover_cases(b, labels)
    assert first.case_ids == second.case_ids
    for x, y in zip(first.cases, second.cases, strict=True):
        one, two = read_case(x), read_case(y)
        np.testing.assert_array_equal(one.image, two.image)
        np.testing.assert_array_equal(one.label, two.label)


@pytest.mark.parametrize(
    ("order", "labels"),
    [
        ((0, 1, 2, 3), NNUNET_LABELS),
        ((1, 3, 0, 2), NNUNET_LABELS),  # shuffled channel order: reordered to FLAIR, T1w, T1gd, T2w
        ((0, 1, 2, 3), NNUNET_REGIONS),  # region-based labels name the classes by their nesting
    ],
)
def test_nnunet_raw_copy_reads_identical_to_the_msd_case(msd_dataset, tmp_path, order, labels):
    out = write_nnunet_copy(msd_dataset.root, tmp_path / "Dataset001_BrainTumour", order, labels)
    dataset = discover_cases(out)
    assert dataset.layout == "nnunet" and dataset.spec == MSD_SPEC
    _same_cases(msd_dataset.root, out)


def test_brainprep_check_reads_nnunet_raw(msd_dataset, tmp_path):
    """It crashed with int('background') before: nnU-Net v2 labels map names to values."""
    out = write_nnunet_copy(msd_dataset.root, tmp_path / "raw", (0, 1, 2, 3), NNUNET_LABELS)
    result = CliRunner().invoke(brainprep_main, ["check", str(out), "--patch-size", "8", "8", "4"])
    assert result.exit_code == 0, result.output
    assert "2 cases: 2 ok" in result.output
    assert "channels reordered" not in result.output  # dataset.json lists them in the canonical order


def test_msd_dataset_json_channel_order_is_honoured(msd_dataset):
    """An MSD 4D file whose dataset.json lists T1w first reads as the canonical order."""
    root = msd_dataset.root
    order = (1, 3, 0, 2)  # file channel k holds canonical channel order[k]
    for path in (root / "imagesTr").glob("*.nii.gz"):
        source = nib.load(path)
        data = np.asarray(source.dataobj)
        write_nifti_file(path, data[..., list(order)], source.affine)
    names = ("FLAIR", "T1w", "T1gd", "T2w")
    description = json.loads((root / "dataset.json").read_text())
    description["modality"] = {str(k): names[c] for k, c in enumerate(order)}
    (root / "dataset.json").write_text(json.dumps(description))
    for files in discover_cases(root).cases:
        np.testing.assert_array_equal(read_case(files).image, msd_dataset.cases[files.case_id].image)
    # check says so: FLAIR is the file's channel 2 (order[2] == 0), T1w its 0, T1gd its 3, T2w its 1
    result = CliRunner().invoke(brainprep_main, ["check", str(root), "--patch-size", "8", "8", "4"])
    assert result.exit_code == 0, result.output
    assert "(canonical <- source channel): FLAIR <- 2, T1w <- 0, T1gd <- 3, T2w <- 1" in result.output


@pytest.mark.parametrize(
    ("channels", "labels", "message"),
    [
        ({"0": "CT"}, NNUNET_LABELS, "not the four MRI modalities"),
        ({"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "ADC"}, NNUNET_LABELS, "not the four MRI modalities"),
        ({"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "T2"}, {"background": 0, "liver": 1}, "--labels"),
        # 1-based channel keys: a bare IndexError before
        ({"1": "FLAIR", "2": "T1", "3": "T1CE", "4": "T2"}, NNUNET_LABELS, "are not 0..3"),
        (["FLAIR", "T1", "T1CE", "T2"], NNUNET_LABELS, "must be an object"),
        ({"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "T2"}, None, "labels must be a non-empty object"),
        ({"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "T2"}, ["background", "edema"], "must be a non-empty"),
        # region values that are not integers: int() raised a bare ValueError, 3.7 was read as 3
        (
            {"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "T2"},
            {**NNUNET_REGIONS, "tumor core": [2, "three"]},
            "give region 'tumor core' the value 'three'",
        ),
        (
            {"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "T2"},
            {**NNUNET_REGIONS, "enhancing tumor": None},
            "give region 'enhancing tumor' the value None",
        ),
        (
            {"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "T2"},
            {"background": 0, "whole tumor": [1, 2, 3.7], "tumor core": [2, 3.7], "enhancing tumor": 3.7},
            "give region 'whole tumor' the value 3.7",
        ),
        (
            {"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "T2"},
            {**NNUNET_REGIONS, "whole tumor": [1, 2, "3"]},
            "the value '3'",
        ),
        (
            {"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "T2"},
            {**NNUNET_REGIONS, "enhancing tumor": [True]},
            "the value True",
        ),
        # true is no label value either (isinstance(True, int) read it as 1)
        ({"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "T2"}, {**NNUNET_LABELS, "edema": True}, "'edema'"),
        # two classes of one value: the spec's refusal, naming the file
        (
            {"0": "FLAIR", "1": "T1", "2": "T1CE", "3": "T2"},
            {"background": 0, "edema": 1, "non-enhancing": 1, "enhancing": 3},
            "--labels",
        ),
    ],
)
def test_dataset_json_that_cannot_be_placed_is_refused(msd_dataset, tmp_path, channels, labels, message):
    out = write_nnunet_copy(msd_dataset.root, tmp_path / "raw", (0, 1, 2, 3), NNUNET_LABELS)
    description = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(
        json.dumps({**description, "channel_names": channels, "labels": labels})
    )
    with pytest.raises(LayoutError, match=message) as info:
        discover_cases(out)
    assert "dataset.json" in str(info.value) and "\n" not in str(info.value)
    result = CliRunner().invoke(brainprep_main, ["check", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output and "dataset.json" in result.output


def test_nnunet_v1_raw_reads_identical_to_the_msd_case(msd_dataset, tmp_path):
    """nnU-Net v1 (Task folders): _0000 files, channels named under ``modality``, MSD-style labels."""
    out = write_nnunet_copy(msd_dataset.root, tmp_path / "Task001_BrainTumour", (1, 3, 0, 2), NNUNET_LABELS)
    description = json.loads((out / "dataset.json").read_text())
    description["modality"] = description.pop("channel_names")
    description["labels"] = {
        "0": "background",
        "1": "edema",
        "2": "non-enhancing tumor",
        "3": "enhancing tumour",
    }
    description.pop("file_ending")
    (out / "dataset.json").write_text(json.dumps(description))
    dataset = discover_cases(out)
    assert dataset.layout == "nnunet" and dataset.spec == MSD_SPEC
    _same_cases(msd_dataset.root, out)


@pytest.mark.parametrize("with_json", [True, False])
def test_msd_ids_ending_in_four_digits_stay_msd(tmp_path, with_json):
    """Review r7: MSD 4D files named ``BRATS_0000.nii.gz`` were taken for nnU-Net's ``_0000`` channel
    files (one case ``BRATS`` of four 4D "channels", and four cases missing their images)."""
    from conftest import write_msd_case

    image, label = small_case()
    written = [write_msd_case(tmp_path, f"BRATS_{i:04d}", image, label, axcodes="LPS") for i in range(3)]
    if with_json:
        modality = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
        labels = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
        (tmp_path / "dataset.json").write_text(json.dumps({"modality": modality, "labels": labels}))
    dataset = discover_cases(tmp_path)
    assert dataset.layout == "msd" and dataset.case_ids == ("BRATS_0000", "BRATS_0001", "BRATS_0002")
    for files, case in zip(dataset.cases, written, strict=True):
        assert files.image_paths == case.image_paths and files.label_path == case.label_path
        read = read_case(files)
        np.testing.assert_array_equal(read.image, image)
        np.testing.assert_array_equal(read.label, label)


def test_nnunet_raw_without_dataset_json_is_refused(msd_dataset, tmp_path):
    out = write_nnunet_copy(msd_dataset.root, tmp_path / "raw", (0, 1, 2, 3), NNUNET_LABELS)
    (out / "dataset.json").unlink()
    with pytest.raises(LayoutError, match=r"no dataset\.json with channel_names"):
        discover_cases(out)


def test_channel_aliases_case_insensitive(msd_dataset, tmp_path):
    out = write_nnunet_copy(msd_dataset.root, tmp_path / "raw", (0, 1, 2, 3), NNUNET_LABELS)
    description = json.loads((out / "dataset.json").read_text())
    description["channel_names"] = {"0": "t2-FLAIR", "1": "T1", "2": "t1c", "3": "T2"}
    (out / "dataset.json").write_text(json.dumps(description))
    _same_cases(msd_dataset.root, out)
