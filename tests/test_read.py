"""The case reader: label conventions, orientation, layouts, and writing labels back in source space."""

from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import (
    BOX_COUNTS,
    SMALL_SPACING,
    orient_from_ras,
    ras_affine,
    small_case,
    write_brats_case,
    write_nifti_file,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from brainprep.errors import CaseError, InvalidValueError, LayoutError, UnreadableFileError
from brainprep.read import (
    CaseFiles,
    convention_spec,
    discover_cases,
    read_case,
    write_label_in_source_space,
)
from brainprep.read.nifti import read_nifti_voxels, to_ras


def to_msd_labels(labels, convention, **where):
    """Labels of ``convention`` as canonical (for the glioma family, MSD) classes."""
    return convention_spec(convention).to_canonical(labels, **where)


def from_msd_labels(labels, convention):
    return convention_spec(convention).to_source(labels)


# ---------------------------------------------------------------------------------------------------------
# label conventions, on hand-made arrays


@pytest.mark.parametrize(
    ("convention", "source", "expected"),
    [
        # MSD is the canonical convention: the identity.
        ("msd", [0, 1, 2, 3, 1, 0], [0, 1, 2, 3, 1, 0]),
        # BraTS 2017-2021: 1 core -> 2 non-enhancing, 2 edema -> 1, 4 enhancing -> 3.
        ("brats2021", [0, 1, 2, 4, 2, 0], [0, 2, 1, 3, 1, 0]),
        # BraTS 2023: 1 core -> 2, 2 edema -> 1, 3 enhancing stays 3.
        ("brats2023", [0, 1, 2, 3, 2, 0], [0, 2, 1, 3, 1, 0]),
    ],
)
def test_to_msd_labels_maps_each_convention_exactly(convention, source, expected):
    for dtype in (np.uint8, np.int16, np.float32):
        out = to_msd_labels(np.array(source, dtype=dtype).reshape(2, 3), convention)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, np.array(expected, dtype=np.uint8).reshape(2, 3))


@pytest.mark.parametrize(
    ("convention", "expected"),
    [("msd", [0, 1, 2, 3]), ("brats2021", [0, 2, 1, 4]), ("brats2023", [0, 2, 1, 3])],
)
def test_from_msd_labels_is_the_inverse(convention, expected):
    msd = np.array([0, 1, 2, 3], dtype=np.uint8)
    out = from_msd_labels(msd, convention)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(to_msd_labels(out, convention), msd)


@pytest.mark.parametrize(
    ("convention", "values", "found"),
    [
        ("brats2021", [0, 1, 3], "{3}"),  # 3 is unused in 2017-2021: a 2023 file read as 2021
        ("brats2023", [0, 4, 2], "{4}"),  # 4 is the 2021 enhancing label
        ("msd", [0, 1, 7, 5], "{5,7}"),
        ("msd", [0.0, 1.5, 2.0], "{1.5}"),  # the value found, not its truncation to 1
    ],
)
def test_unknown_label_value_names_value_and_file(convention, values, found):
    with pytest.raises(InvalidValueError) as info:
        to_msd_labels(np.array(values), convention, case_id="BRATS_012", path="labelsTr/BRATS_012.nii.gz")
    message = str(info.value)
    assert f"found {found}" in message
    assert "labelsTr/BRATS_012.nii.gz" in message
    assert "case BRATS_012" in message
    assert "\n" not in message


def test_unknown_label_value_in_a_file_names_the_file(tmp_path):
    image, label = small_case()
    written = write_brats_case(tmp_path, "BraTS-GLI-00009-000", image, label, layout="brats2023")
    bad = np.asarray(nib.load(written.label_path).dataobj).copy()
    bad[0, 0, 0] = 5
    write_nifti_file(written.label_path, bad, written.source_affine)
    files = discover_cases(tmp_path).cases[0]
    with pytest.raises(InvalidValueError, match=r"found \{5\}") as info:
        read_case(files)
    assert str(written.label_path) in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# round trip of a real MSD label map through the BraTS layouts (LPS on disk, own label convention)

MSD_LABEL = "msd-labels/labelsTr/BRATS_001.nii.gz"
#: LPS affine of a 240x240x155 1 mm grid whose RAS equivalent is the identity: voxel i of the flipped
#: x axis sits at world x = 239 - i (and likewise y), so reading it must give back the identity affine.
LPS_240 = np.array(
    [[-1.0, 0.0, 0.0, 239.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
#: MSD label -> BraTS labels, by hand: 1 and 2 swap, enhancing is 4 in 2017-2021 and 3 in 2023.
HAND_TABLES = {"brats2021": {0: 0, 1: 2, 2: 1, 3: 4}, "brats2023": {0: 0, 1: 2, 2: 1, 3: 3}}
BRATS_FILES = {
    "brats2021": ("BraTS2021_00001", "_", ("flair", "t1", "t1ce", "t2", "seg")),
    "brats2023": ("BraTS-GLI-00001-000", "-", ("t2f", "t1n", "t1c", "t2w", "seg")),
}


def _made_up_image(shape: tuple[int, int, int]) -> np.ndarray:
    """int16 (4, X, Y, Z): a ramp along every axis, different per channel (compresses well)."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.int32) for n in shape), indexing="ij")
    return np.stack([(3 * x + 5 * y + 7 * z + 101 * c) % 1000 for c in range(4)]).astype(np.int16)


@pytest.mark.parametrize("layout", ["brats2021", "brats2023"])
def test_real_msd_label_round_trips_through_brats_layout(shared_data, tmp_path, layout):
    source = nib.load(shared_data / MSD_LABEL)
    np.testing.assert_array_equal(source.affine, np.eye(4))  # MSD labels are RAS, 1 mm, identity
    label = np.asarray(source.dataobj).astype(np.uint8)
    image = _made_up_image(label.shape)

    table = np.zeros(256, dtype=np.uint8)
    for msd, value in HAND_TABLES[layout].items():
        table[msd] = value
    label_brats = table[label]
    # The test means something only if the remap and the flips change the arrays.
    assert not np.array_equal(label_brats, label)
    assert not np.array_equal(label[::-1, ::-1], label)
    assert not np.array_equal(image[:, ::-1, ::-1], image)

    case_id, sep, keys = BRATS_FILES[layout]
    folder = tmp_path / layout / case_id
    folder.mkdir(parents=True)
    for channel, key in enumerate(keys[:4]):
        nib.save(
            nib.Nifti1Image(image[channel][::-1, ::-1, :], LPS_240), folder / f"{case_id}{sep}{key}.nii.gz"
        )
    nib.save(nib.Nifti1Image(label_brats[::-1, ::-1, :], LPS_240), folder / f"{case_id}{sep}seg.nii.gz")

    dataset = discover_cases(tmp_path / layout)
    assert dataset.layout == layout
    assert dataset.case_ids == (case_id,)
    case = read_case(dataset.cases[0])
    assert case.label is not None and case.label.dtype == np.uint8
    np.testing.assert_array_equal(case.label, label)
    assert case.image.dtype == np.float32
    np.testing.assert_array_equal(case.image, image.astype(np.float32))
    np.testing.assert_allclose(case.affine, np.eye(4), atol=1e-6)
    np.testing.assert_allclose(case.source_affine, LPS_240, atol=1e-6)

    # Negative controls: data written unflipped under the same LPS affine does not come back equal.
    unflipped_label, _ = to_ras(label_brats, LPS_240)
    assert not np.array_equal(to_msd_labels(unflipped_label, layout), label)
    unflipped_flair, _ = to_ras(image[0], LPS_240)
    assert not np.array_equal(unflipped_flair, image[0])


# ---------------------------------------------------------------------------------------------------------
# orientation: any permutation/flip of the axes comes back on the RAS grid


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "LAI", "ASL", "PIR"])
def test_read_case_reorients_to_ras(tmp_path, axcodes):
    image, label = small_case(seed=3)
    written = write_brats_case(tmp_path, "BraTS-GLI-00003-000", image, label, axcodes=axcodes)
    assert "".join(nib.aff2axcodes(written.source_affine)) == axcodes
    case = read_case(discover_cases(tmp_path).cases[0])
    np.testing.assert_array_equal(case.image, image)
    np.testing.assert_array_equal(case.label, label)
    np.testing.assert_allclose(case.affine, ras_affine(), atol=1e-6)
    assert case.spacing == pytest.approx(SMALL_SPACING)
    # nibabel's own canonical reorientation of the written file agrees with ours.
    canonical = nib.as_closest_canonical(nib.load(written.image_paths[0]))
    np.testing.assert_array_equal(canonical.get_fdata(dtype=np.float32), image[0])
    np.testing.assert_allclose(canonical.affine, ras_affine(), atol=1e-6)


def test_channel_files_of_shape_xyz1_read_as_their_volume(tmp_path):
    """Some writers save a 3D volume as (X, Y, Z, 1): such channel files (and label) read as the 3D ones,
    through both readers and the build plan's header check; (X, Y, Z, 2) stays refused."""
    from brainprep.read.case import check_image_headers, read_case_arrays
    from brainprep.read.nifti import read_nifti_header

    image, label = small_case(seed=4)
    written = write_brats_case(tmp_path, "BraTS-GLI-00004-000", image, label, axcodes="LPS")
    for path in (*written.image_paths, written.label_path):
        source = nib.load(path)
        write_nifti_file(path, np.asarray(source.dataobj)[..., None], source.affine)
        assert nib.load(path).shape[3:] == (1,)
    files = discover_cases(tmp_path).cases[0]
    case = read_case(files)
    np.testing.assert_array_equal(case.image, image)
    np.testing.assert_array_equal(case.label, label)
    arrays = read_case_arrays(files)
    np.testing.assert_array_equal(np.stack(arrays.channels), image)
    headers = [read_nifti_header(p, files.case_id) for p in files.image_paths]
    assert check_image_headers(files, headers)[0] == image.shape[1:]
    source = nib.load(files.image_paths[2])
    write_nifti_file(files.image_paths[2], np.concatenate([source.dataobj] * 2, axis=-1), source.affine)
    with pytest.raises(CaseError, match=r"expected a 3D channel image, found shape \(48, 48, 20, 2\)"):
        read_case(files)


def test_lps_fixture_matches_a_hand_flip():
    """The conftest writer's LPS is a flip of x and y with the matching affine, nothing else."""
    _, label = small_case()
    source, affine = orient_from_ras(label, ras_affine(), "LPS")
    np.testing.assert_array_equal(source, label[::-1, ::-1, :])
    nx, ny = label.shape[0] - 1, label.shape[1] - 1
    sx, sy, sz = SMALL_SPACING
    expected = np.array(
        [
            [-sx, 0.0, 0.0, -20.0 + nx * sx],
            [0.0, -sy, 0.0, -30.0 + ny * sy],
            [0.0, 0.0, sz, -10.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(affine, expected)


# ---------------------------------------------------------------------------------------------------------
# layouts


def test_msd_layout_reads_cases_and_dataset_json_names(msd_dataset):
    dataset = discover_cases(msd_dataset.root)
    assert dataset.layout == "msd"
    assert dataset.case_ids == ("BRATS_001", "BRATS_002")
    assert dataset.spec == convention_spec("msd")  # the dataset.json's names are MSD's classes
    assert dataset.description["name"] == "BRATS"
    for files in dataset.cases:
        case = read_case(files)
        written = msd_dataset.cases[files.case_id]
        np.testing.assert_array_equal(case.image, written.image)
        np.testing.assert_array_equal(case.label, written.label)
        np.testing.assert_allclose(case.affine, ras_affine(), atol=1e-6)
        assert np.bincount(case.label.ravel(), minlength=4).tolist() == list(BOX_COUNTS)


def test_macos_resource_forks_are_ignored(msd_dataset):
    root = msd_dataset.root
    for folder in ("imagesTr", "labelsTr"):
        (root / folder / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    (root / "imagesTr" / "._BRATS_777.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    dataset = discover_cases(root)
    assert dataset.case_ids == ("BRATS_001", "BRATS_002")
    assert all(not p.name.startswith("._") for c in dataset.cases for p in c.all_paths)
    read_case(dataset.case("BRATS_001"))  # reads the real file, not the fork


def test_macos_fork_of_a_seg_file_does_not_make_a_dataset_labelled(tmp_path):
    image, _ = small_case()
    written = write_brats_case(tmp_path, "BraTS-GLI-00004-000", image, None, layout="brats2023")
    (written.image_paths[0].parent / "._BraTS-GLI-00004-000-seg.nii.gz").write_bytes(b"\x00\x05")
    files = discover_cases(tmp_path).cases[0]
    assert files.label_path is None
    assert not read_case(files).has_label


def test_brats2021_layout_finds_every_file(brats2021_dataset):
    dataset = discover_cases(brats2021_dataset.root)
    assert dataset.layout == "brats2021"
    files = dataset.case("BraTS2021_00000")
    assert [p.name for p in files.image_paths] == [
        f"BraTS2021_00000_{key}.nii.gz" for key in ("flair", "t1", "t1ce", "t2")
    ]
    assert files.label_path is not None and files.label_path.name == "BraTS2021_00000_seg.nii.gz"
    assert files.spec.convention == "brats2021"
    case = read_case(files)
    np.testing.assert_array_equal(case.label, brats2021_dataset.cases["BraTS2021_00000"].label)


def _gunzip(path: Path) -> Path:
    """``x.nii.gz`` -> ``x.nii`` beside it (the compressed file removed)."""
    plain = path.with_name(path.name[: -len(".gz")])
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
    return plain


def test_a_folder_mixing_nii_and_nii_gz_is_found_per_file(msd_dataset, brats2023_dataset):
    root = msd_dataset.root
    image = _gunzip(root / "imagesTr" / "BRATS_001.nii.gz")  # uncompressed image, compressed label
    label = _gunzip(root / "labelsTr" / "BRATS_002.nii.gz")  # compressed image, uncompressed label
    dataset = discover_cases(root)
    assert dataset.case_ids == ("BRATS_001", "BRATS_002")
    first, second = dataset.cases
    assert first.image_paths == (image,) and first.label_path == root / "labelsTr" / "BRATS_001.nii.gz"
    assert second.label_path == label
    for files in dataset.cases:
        np.testing.assert_array_equal(read_case(files).label, msd_dataset.cases[files.case_id].label)
    # a case folder too: one channel uncompressed
    case_id = "BraTS-GLI-00000-000"
    t1c = _gunzip(brats2023_dataset.root / case_id / f"{case_id}-t1c.nii.gz")
    files = discover_cases(brats2023_dataset.root).case(case_id)
    assert files.image_paths[2] == t1c
    np.testing.assert_array_equal(read_case(files).image, brats2023_dataset.cases[case_id].image)


def _duplicate(kind: str, msd: Path, brats: Path) -> tuple[Path, Path, Path]:
    """Make two files of one name in a copy of a fixture: (data folder, first file, second file)."""
    if kind == "image .nii and .nii.gz":
        first = msd / "imagesTr" / "BRATS_001.nii"
        first.write_bytes(gzip.decompress((msd / "imagesTr" / "BRATS_001.nii.gz").read_bytes()))
        return msd, first, msd / "imagesTr" / "BRATS_001.nii.gz"
    if kind == "label .nii and .nii.gz":
        first = msd / "labelsTr" / "BRATS_002.nii"
        first.write_bytes(gzip.decompress((msd / "labelsTr" / "BRATS_002.nii.gz").read_bytes()))
        return msd, first, msd / "labelsTr" / "BRATS_002.nii.gz"
    if kind == "imagesTr and imagesTs":
        (msd / "imagesTs").mkdir()
        second = msd / "imagesTs" / "BRATS_002.nii.gz"
        second.write_bytes((msd / "imagesTr" / "BRATS_002.nii.gz").read_bytes())
        return msd, msd / "imagesTr" / "BRATS_002.nii.gz", second
    folder = brats / "BraTS-GLI-00002-000"
    second = folder / "BraTS-GLI-00002-000-t2w.nii.gz"
    first = folder / "BraTS-GLI-00002-000-t2w.nii"
    first.write_bytes(gzip.decompress(second.read_bytes()))
    return brats, first, second


DUPLICATES = (
    "image .nii and .nii.gz",
    "label .nii and .nii.gz",
    "imagesTr and imagesTs",
    "case folder channel",
)


@pytest.mark.parametrize("kind", DUPLICATES)
def test_duplicate_case_files_are_refused_naming_both(msd_dataset, brats2023_dataset, kind):
    root, first, second = _duplicate(kind, msd_dataset.root, brats2023_dataset.root)
    with pytest.raises(LayoutError) as caught:
        discover_cases(root)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("duplicate ")
    assert str(first) in message and str(second) in message


def test_a_case_folder_holding_another_cases_file_is_refused_naming_both(tmp_path):
    """Review r1: matched by its key alone, case 2's T2w copied into case 1's folder was read as case
    1's T2w. The files of one folder must name one case; the folder's own name may differ."""
    image_a, label = small_case(seed=0)
    image_b, _ = small_case(seed=1)
    write_brats_case(tmp_path, "BraTS-GLI-00001-000", image_a, label)
    other = write_brats_case(tmp_path, "BraTS-GLI-00002-000", image_b, label)
    folder = tmp_path / "BraTS-GLI-00001-000"
    (folder / "BraTS-GLI-00001-000-t2w.nii.gz").unlink()
    foreign = folder / "BraTS-GLI-00002-000-t2w.nii.gz"
    foreign.write_bytes(other.image_paths[3].read_bytes())
    with pytest.raises(LayoutError) as caught:
        discover_cases(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "name two cases" in message
    assert str(foreign) in message and str(folder / "BraTS-GLI-00001-000-seg.nii.gz") in message
    # a file without an id beside files with one is another case too (a one-case folder's t2w.nii.gz)
    foreign.rename(folder / "t2w.nii.gz")
    with pytest.raises(LayoutError, match=r"t2w\.nii\.gz \(no case id\)"):
        discover_cases(tmp_path)
    # a renamed folder whose files agree on their id is still read (the folder names the case)
    (folder / "t2w.nii.gz").unlink()
    write_brats_case(tmp_path, "BraTS-GLI-00003-000", image_a, label)
    (tmp_path / "BraTS-GLI-00003-000").rename(tmp_path / "renamed")
    files = discover_cases(tmp_path).case("renamed")
    np.testing.assert_array_equal(read_case(files).image, image_a)


@pytest.mark.parametrize("second", ["label", "segmentation"])
def test_two_label_files_in_a_case_folder_are_refused_naming_both(tmp_path, second):
    """Review r3: ``-seg`` beside ``-label`` (a model's prediction, say): one was picked silently."""
    image, label = small_case()
    written = write_brats_case(tmp_path, "BraTS-GLI-00001-000", image, label)
    assert written.label_path is not None
    other = written.label_path.with_name(f"BraTS-GLI-00001-000-{second}.nii.gz")
    source, affine = orient_from_ras(np.zeros_like(label), written.affine, "LPS")
    write_nifti_file(other, source, affine, "uint8")
    with pytest.raises(LayoutError) as caught:
        discover_cases(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("two label files in case BraTS-GLI-00001-000")
    assert str(written.label_path) in message and str(other) in message


def _rotated_about_z(degrees: float) -> np.ndarray:
    theta = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    return rotation @ ras_affine(spacing=(1.0, 1.0, 2.5))


def test_label_is_reoriented_as_its_image_near_45_degrees_of_obliquity(tmp_path):
    """Review r12: image and label affines within the 1e-3 tolerance, either side of 45 degrees about z:
    reoriented each by its own affine, the label came out transposed against the image. Image and label
    here hold the same source voxels, so the label must land where the image's voxels do."""
    from brainprep.read.case import read_case_arrays
    from brainprep.read.nifti import ras_transform

    image, label = small_case(shape=(40, 40, 20))
    image_affine, label_affine = _rotated_about_z(45.0 + 2e-5), _rotated_about_z(45.0 - 2e-5)
    assert np.allclose(image_affine, label_affine, atol=1e-3)
    assert not np.array_equal(ras_transform(image_affine), ras_transform(label_affine))  # the trap
    folder = tmp_path / "case1"
    for channel, key in enumerate(("t2f", "t1n", "t1c", "t2w")):
        write_nifti_file(folder / f"case1-{key}.nii.gz", image[channel], image_affine, "int16")
    brats2023 = np.array([0, 2, 1, 3], dtype=np.uint8)[label]  # MSD -> BraTS 2023 values, by hand
    write_nifti_file(folder / "case1-seg.nii.gz", brats2023, label_affine, "uint8")
    files = discover_cases(tmp_path).cases[0]
    case = read_case(files)

    # the image's source axis 1 runs -R, its axis 0 +A: RAS voxel (a, b, c) is source voxel
    # (b, 39 - a, c), for the label as for the image
    def on_ras_grid(source):
        return np.flip(source.transpose(1, 0, 2), axis=0)

    expected = on_ras_grid(label)
    np.testing.assert_array_equal(case.image[0], on_ras_grid(image[0]))
    np.testing.assert_array_equal(case.label, expected)
    np.testing.assert_array_equal(read_case_arrays(files).label, expected)


def _rgb(volume: np.ndarray) -> np.ndarray:
    rgb = np.zeros(volume.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = volume.astype(np.uint8)
    return rgb


@pytest.mark.parametrize(("which", "kind"), [(1, "RGB24"), (1, "complex64"), (None, "complex64")])
def test_voxels_that_are_not_real_numbers_are_refused_naming_the_file(tmp_path, which, kind):
    """Review r9/r10: an RGB24 channel failed in numpy's min (a traceback); a complex64 channel read
    with its imaginary part dropped (an all-zero T1w from a pure imaginary file). ``which``: the channel
    file made so, ``None`` the label."""
    from brainprep.read.case import check_image_headers, read_case_arrays, read_label
    from brainprep.read.nifti import read_nifti_header

    image, label = small_case()
    written = write_brats_case(tmp_path, "BraTS-GLI-00001-000", image, label, axcodes="RAS")
    assert written.label_path is not None
    path = written.label_path if which is None else written.image_paths[which]
    volume = label if which is None else image[which]
    voxels = _rgb(volume) if kind == "RGB24" else (volume * 1j).astype(np.complex64)
    nib.save(nib.Nifti1Image(voxels, written.source_affine), path)
    files = discover_cases(tmp_path).cases[0]
    what = "label" if which is None else "image"
    expected = f"{what} voxels must be real numbers (an integer or float dtype), found {kind}"
    readers = [read_case, read_case_arrays]
    if which is None:
        readers.append(read_label)
    else:  # the build plan checks the headers alone
        readers.append(lambda f: check_image_headers(f, [read_nifti_header(p) for p in f.image_paths]))
    for reader in readers:
        with pytest.raises(InvalidValueError) as caught:
            reader(files)
        assert str(caught.value) == f"{expected} in case BraTS-GLI-00001-000 ({path})"


# ---------------------------------------------------------------------------------------------------------
# real BraTS 2023 data


def test_real_brats2023_case_without_label(shared_data):
    dataset = discover_cases(shared_data / "brats2023")
    assert dataset.layout == "brats2023"
    assert dataset.case_ids == ("BraTS-GLI-00001-000",)
    files = dataset.cases[0]
    assert files.label_path is None
    assert [p.name.rsplit("-", 1)[1] for p in files.image_paths] == [
        "t2f.nii.gz",
        "t1n.nii.gz",
        "t1c.nii.gz",
        "t2w.nii.gz",
    ]
    case = read_case(files)
    assert not case.has_label
    assert case.image.shape == (4, 240, 240, 155) and case.image.dtype == np.float32
    # The files are LPS: reading flips x and y, by hand here.
    flair = np.asarray(nib.load(files.image_paths[0]).dataobj)
    np.testing.assert_array_equal(case.image[0], flair[::-1, ::-1, :].astype(np.float32))
    assert case.affine[:3, :3].tolist() == np.eye(3).tolist()


def test_real_brats2023_with_seg_counts_in_msd_convention(shared_data):
    dataset = discover_cases(shared_data / "brats2023-with-seg")
    assert dataset.layout == "brats2023"
    assert dataset.case_ids == ("brats2023-with-seg",)
    files = dataset.cases[0]
    assert files.label_path is not None and files.label_path.name == "segmentation.nii.gz"
    case = read_case(files)
    # BraTS 2023 counts 0/1/2/3: 8783268/14300/108566/21866; in MSD 1 (edema) and 2 (non-enh) swap.
    assert np.bincount(case.label.ravel(), minlength=4).tolist() == [8783268, 108566, 14300, 21866]
    seg = np.asarray(nib.load(files.label_path).dataobj)
    expected = np.array([0, 2, 1, 3], dtype=np.uint8)[seg[::-1, ::-1, :]]
    np.testing.assert_array_equal(case.label, expected)


# ---------------------------------------------------------------------------------------------------------
# writing labels back in the source space


def test_write_label_in_source_space_reproduces_real_seg_file(shared_data, tmp_path):
    files = discover_cases(shared_data / "brats2023-with-seg").cases[0]
    case = read_case(files)
    out = write_label_in_source_space(case.label, case, tmp_path / "seg.nii.gz", files.spec)
    source, written = nib.load(files.label_path), nib.load(out)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(source.dataobj))
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)


@pytest.mark.parametrize("axcodes", ["LPS", "PIL"])
def test_write_label_in_source_space_synthetic(tmp_path, axcodes):
    image, label = small_case()
    written = write_brats_case(tmp_path / "in", "BraTS2021_00005", image, label, "brats2021", axcodes=axcodes)
    case = read_case(discover_cases(tmp_path / "in").cases[0])
    out = write_label_in_source_space(case.label, case, tmp_path / "out.nii.gz", convention_spec("brats2021"))
    source, back = nib.load(written.label_path), nib.load(out)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(source.dataobj))
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-6)
    # In the default MSD convention the values stay canonical, on the source grid.
    msd = nib.load(write_label_in_source_space(case.label, case, tmp_path / "msd.nii.gz"))
    np.testing.assert_array_equal(np.asarray(msd.dataobj), orient_from_ras(label, ras_affine(), axcodes)[0])


# ---------------------------------------------------------------------------------------------------------
# robustness: a damaged file is a CaseError naming it, never another exception


@functools.cache
def _clean_nifti_bytes() -> dict[str, bytes]:
    """Uncompressed NIfTI bytes of a tiny LPS MSD case: image (12, 10, 6, 4) float32, label uint8."""
    image, label = small_case(shape=(12, 10, 6))
    source, affine = orient_from_ras(np.moveaxis(image, 0, -1), ras_affine(), "LPS")
    source_label, _ = orient_from_ras(label, ras_affine(), "LPS")
    return {
        "image": nib.Nifti1Image(source, affine).to_bytes(),
        "label": nib.Nifti1Image(source_label, affine).to_bytes(),
    }


def _write_cut_case(tmp_path: Path, which: str, cut: float, gz: bool) -> tuple[CaseFiles, Path]:
    """An MSD case whose ``which`` file ("image" or "label") is cut to ``cut`` of its bytes.

    Returns the case's files and the path of the cut file.
    """
    root = tmp_path / f"case-{which}-{cut}-{gz}"
    for kind, folder in (("image", "imagesTr"), ("label", "labelsTr")):
        data = _clean_nifti_bytes()[kind]
        data = gzip.compress(data) if gz else data
        if kind == which:
            data = data[: int(len(data) * cut)]
        path = root / folder / ("BRATS_900.nii.gz" if gz else "BRATS_900.nii")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    files = discover_cases(root).cases[0]
    return files, files.image_paths[0] if which == "image" else files.label_path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["image", "label"]), cut=st.floats(0.0, 0.999), gz=st.booleans())
@example(which="label", cut=0.97, gz=True)  # 104-byte gzip cut to 100: inside the trailer only
@example(which="image", cut=0.5, gz=True)
@example(which="image", cut=0.5, gz=False)
def test_truncated_file_never_reads(tmp_path, which, cut, gz):
    """Cut a file anywhere, even inside the 8-byte gzip trailer after the last voxel (which nibabel
    never reads): read_case raises a one-line CaseError naming it."""
    files, broken = _write_cut_case(tmp_path, which, cut, gz)
    with pytest.raises(CaseError) as info:
        read_case(files)
    assert str(broken) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_bad_gzip_crc_is_an_error(tmp_path):
    path = tmp_path / "whole.nii.gz"
    path.write_bytes(gzip.compress(_clean_nifti_bytes()["label"]))
    read_nifti_voxels(path)
    corrupt = bytearray(path.read_bytes())
    corrupt[-8] ^= 0xFF  # first byte of the CRC32 in the trailer
    path.write_bytes(bytes(corrupt))
    with pytest.raises(UnreadableFileError, match="corrupt or not gzip data") as info:
        read_nifti_voxels(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# the build's fast path: read_case_arrays / read_label give the plain reader's arrays and errors


def _assert_same_as_read_case(files) -> None:
    from brainprep.read.case import read_case_arrays
    from brainprep.sample import extract_patch

    fast, plain = read_case_arrays(files), read_case(files)
    np.testing.assert_array_equal(fast.volume(), plain.image)
    assert fast.volume().dtype == np.float32
    corner, size = (1, 2, 1), (5, 4, 3)
    np.testing.assert_array_equal(fast.patch(corner, size), extract_patch(plain.image, corner, size))
    np.testing.assert_array_equal(fast.label, plain.label)
    np.testing.assert_allclose(fast.affine, plain.affine)
    np.testing.assert_allclose(fast.source_affine, plain.source_affine)
    assert fast.source_shape == plain.source_shape
    for path in files.all_paths:
        size, digest = fast.digests[path]
        assert (size, digest) == (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PIL"])
def test_read_case_arrays_equals_read_case_msd(tmp_path, axcodes):
    from conftest import write_msd_case

    image, label = small_case()
    write_msd_case(tmp_path, "BRATS_007", image, label, axcodes=axcodes)
    _assert_same_as_read_case(discover_cases(tmp_path).cases[0])


@pytest.mark.parametrize("layout", ["brats2021", "brats2023"])
def test_read_case_arrays_equals_read_case_brats_int16(tmp_path, layout):
    # int16 channel files in LPS, labels in the BraTS conventions.
    image, label = small_case()
    case_id = "BraTS2021_00005" if layout == "brats2021" else "BraTS-GLI-00005-000"
    write_brats_case(tmp_path, case_id, image * 100, label, layout)
    _assert_same_as_read_case(discover_cases(tmp_path).cases[0])


def test_read_case_arrays_applies_nifti_scaling_like_nibabel(tmp_path):
    image, label = small_case(shape=(8, 6, 4))
    root = tmp_path / "scaled"
    source = (image * 50).astype(np.int16)
    nifti = nib.Nifti1Image(np.moveaxis(source, 0, -1), ras_affine())
    nifti.header.set_slope_inter(0.37, -12.5)
    (root / "imagesTr").mkdir(parents=True)
    nib.save(nifti, root / "imagesTr" / "BRATS_001.nii.gz")
    write_nifti_file(root / "labelsTr" / "BRATS_001.nii.gz", label, ras_affine(), "uint8")
    from brainprep.read.case import read_case_arrays

    fast = read_case_arrays(discover_cases(root).cases[0])
    assert fast.scaling[0] == pytest.approx((0.37, -12.5))
    expected = nib.load(root / "imagesTr" / "BRATS_001.nii.gz").get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(fast.volume(), np.moveaxis(expected, -1, 0))


def test_read_case_arrays_names_the_nan_channel_like_read_case(tmp_path):
    from brainprep.read.case import read_case_arrays

    image, label = small_case()
    image[2, 3, 4, 1] = np.nan
    image[2, 0, 0, 0] = np.inf
    root = tmp_path / "nan"
    write_nifti_file(root / "imagesTr" / "BRATS_001.nii.gz", np.moveaxis(image, 0, -1), ras_affine())
    write_nifti_file(root / "labelsTr" / "BRATS_001.nii.gz", label, ras_affine(), "uint8")
    files = discover_cases(root).cases[0]
    with pytest.raises(InvalidValueError) as plain:
        read_case(files)
    with pytest.raises(InvalidValueError) as fast:
        read_case_arrays(files)
    assert str(fast.value) == str(plain.value)
    assert "2 NaN/Inf voxels in channel T1gd" in str(fast.value)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["image", "label"]), cut=st.floats(0.0, 0.999), gz=st.booleans())
@example(which="label", cut=0.97, gz=True)  # cut inside the gzip trailer: the fast path refuses it
@example(which="image", cut=0.5, gz=False)
def test_read_case_arrays_refuses_every_truncated_file(tmp_path, which, cut, gz):
    """Cut a file anywhere: the fast reader raises a one-line CaseError naming it (it inflates the whole
    gzip stream, so a cut trailer is caught too), and a cut voxel block says "truncated" as nibabel does."""
    from brainprep.read.case import read_case_arrays

    files, broken = _write_cut_case(tmp_path, which, cut, gz)
    with pytest.raises(CaseError) as info:
        read_case_arrays(files)
    assert str(broken) in str(info.value)
    assert "\n" not in str(info.value)


def test_fast_reader_says_truncated_for_a_cut_gzip_and_a_cut_voxel_block(tmp_path):
    from brainprep.read.nifti import read_nifti_voxels

    data = _clean_nifti_bytes()["image"]
    cut_gz = tmp_path / "cut.nii.gz"
    cut_gz.write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(UnreadableFileError, match="truncated file"):
        read_nifti_voxels(cut_gz)
    cut_raw = tmp_path / "cut.nii"
    cut_raw.write_bytes(data[:-100])
    with pytest.raises(UnreadableFileError, match=r"truncated file \(Expected \d+ bytes, got \d+ bytes\)"):
        read_nifti_voxels(cut_raw)
    corrupt = bytearray(gzip.compress(data))
    corrupt[-8] ^= 0xFF  # the CRC32 in the trailer: nibabel would not notice
    bad_crc = tmp_path / "crc.nii.gz"
    bad_crc.write_bytes(bytes(corrupt))
    with pytest.raises(UnreadableFileError, match="corrupt or not gzip"):
        read_nifti_voxels(bad_crc)


@pytest.mark.parametrize("bad_value", [7, 3])  # 7: above every 2021 value; 3: the gap below 4
def test_read_label_checks_values_like_to_msd_labels(tmp_path, bad_value):
    from brainprep.read.case import read_label

    image, label = small_case()
    written = write_brats_case(tmp_path, "BraTS2021_00009", image, label, "brats2021")
    assert written.label_path is not None
    source = nib.load(written.label_path)
    bad = np.asarray(source.dataobj).copy()
    bad[0, 0, 0] = bad_value
    write_nifti_file(written.label_path, bad, source.affine, "uint8")
    files = discover_cases(tmp_path).cases[0]
    with pytest.raises(
        InvalidValueError, match=r"\{0,1,2,4\} \(brats2021 convention: .*\), found \{.*\}"
    ) as fast:
        read_label(files)
    with pytest.raises(InvalidValueError) as plain:
        read_case(files)
    assert str(fast.value) == str(plain.value)
    assert f"found {{{bad_value}}}" in str(fast.value)


def test_inflate_reads_every_member_into_a_reused_buffer():
    import gzip

    from brainprep.read.nifti import INFLATE_SLICE, ReadBuffers, inflate

    rng = np.random.default_rng(0)
    first = rng.integers(0, 4, size=INFLATE_SLICE + 12345, dtype=np.uint8).tobytes()
    second = rng.integers(0, 255, size=777, dtype=np.uint8).tobytes()
    # two gzip members: the trailer's size (777) understates the whole, so the output must grow
    data = gzip.compress(first) + gzip.compress(second)
    assert inflate(data).tobytes() == first + second
    buffers = ReadBuffers()
    out = inflate(data, buffers.for_file(0, data))
    assert out.tobytes() == first + second
    single = gzip.compress(first)
    reused = buffers.for_file(0, single)
    again = inflate(single, reused)
    assert again.tobytes() == first and np.shares_memory(again, reused)
    with pytest.raises(EOFError):
        inflate(single[: len(single) // 2], reused)
