"""``brainprep check``: one row per case, a one-line problem per bad case, exit 1 on any problem."""

from __future__ import annotations

import gzip
import json
import re

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import (
    BOX_COUNTS,
    BOX_VALID_SHARE,
    SMALL_PATCH,
    SMALL_SHAPE,
    SMALL_SPACING,
    small_case,
    write_brats_case,
    write_msd_case,
    write_nifti_file,
)

from brainprep.check import (
    CaseReport,
    CheckParams,
    check_case,
    check_dataset,
    class_voxel_counts,
    format_table,
)
from brainprep.cli import main
from brainprep.errors import ConfigError, LayoutError
from brainprep.read import discover_cases

PATCH_ARGS = ["--patch-size", *(str(s) for s in SMALL_PATCH)]


def run_check(*args: str):
    return CliRunner().invoke(main, ["check", *[str(a) for a in args]])


def problem_lines(output: str) -> list[str]:
    """The lines listed under ``problems (N):`` at the end of the output."""
    if "problems (" not in output:
        return []
    tail = output.split("problems (", 1)[1].splitlines()[1:]
    return [line.strip() for line in tail if line.strip()]


def assert_one_problem(result, path, *fragments: str) -> str:
    """Exit 1, exactly one problem line, naming ``path`` and holding every fragment; returns the line."""
    assert result.exit_code == 1, result.output
    lines = problem_lines(result.stdout)
    assert len(lines) == 1, result.stdout
    line = lines[0]
    assert str(path) in line
    for fragment in fragments:
        assert fragment in line, line
    assert "1 with problems" in result.stdout
    return line


def table_row(output: str, case_id: str) -> list[str]:
    row = next(line for line in output.splitlines() if line.startswith(case_id + " "))
    return re.split(r"\s{2,}", row.strip())


# ---------------------------------------------------------------------------------------------------------
# a clean dataset


def test_class_voxel_counts_by_hand():
    label = np.array([[[0, 1], [1, 3]], [[3, 3], [0, 0]]], dtype=np.uint8)
    assert class_voxel_counts(label, 3) == (3, 2, 0, 3)


def test_check_case_reports_geometry_counts_and_share(brats2023_dataset):
    files = discover_cases(brats2023_dataset.root).cases[0]
    report = check_case(files, patch_size=SMALL_PATCH)
    assert isinstance(report, CaseReport)
    assert report.ok and report.status == "ok" and report.problem is None
    assert report.layout == "brats2023"
    assert report.shape == SMALL_SHAPE
    assert report.spacing == pytest.approx(SMALL_SPACING)
    assert report.orientation == "LPS"
    assert report.dtype == "int16"
    assert report.has_label
    assert report.voxel_counts == BOX_COUNTS
    assert report.tumour_voxels == (448, 48, 4)
    assert report.valid_corner_share == pytest.approx(BOX_VALID_SHARE)
    data = report.to_dict()
    assert data["voxel_counts"] == list(BOX_COUNTS) and data["status"] == "ok"
    json.dumps(data)
    # A stricter threshold (background share below 0.9, i.e. more than 819.2 tumour voxels) leaves none.
    assert check_case(files, patch_size=SMALL_PATCH, background_threshold=0.9).valid_corner_share == 0.0


def test_clean_dataset_exits_0_with_table(brats2023_dataset, tmp_path):
    out = tmp_path / "report.json"
    result = run_check(brats2023_dataset.root, *PATCH_ARGS, "--json", out)
    assert result.exit_code == 0, result.output
    for case_id in brats2023_dataset.cases:
        row = table_row(result.stdout, case_id)
        assert row == [
            case_id,
            "brats2023",
            "48x48x20",
            "1x1.25x2.5",
            "LPS",
            "int16",
            "448",
            "48",
            "4",
            "15.2%",  # 572 / 3757
            "ok",
        ]
    assert "2 cases: 2 ok (0 without label), 0 with problems" in result.stdout
    assert "s per case" in result.stdout
    assert problem_lines(result.stdout) == []
    assert "check" in result.stderr and "2/2" in result.stderr  # the tqdm bar, on stderr only
    report = json.loads(out.read_text())
    assert report["layout"] == "brats2023"
    assert report["params"]["patch_size"] == list(SMALL_PATCH)
    assert report["summary"]["cases"] == 2 and report["summary"]["problems"] == 0
    assert [c["voxel_counts"] for c in report["cases"]] == [list(BOX_COUNTS)] * 2


def test_msd_dataset_with_workers(msd_dataset):
    one = check_dataset(msd_dataset.root, CheckParams(patch_size=SMALL_PATCH), workers=1)
    two = check_dataset(msd_dataset.root, CheckParams(patch_size=SMALL_PATCH), workers=2)
    assert [c.case_id for c in two.cases] == ["BRATS_001", "BRATS_002"]
    strip = [{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in one.cases]
    assert strip == [{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in two.cases]
    assert all(c.ok and c.orientation == "LPS" and c.dtype == "float32" for c in two.cases)
    assert two.summary["workers"] == 2 and two.summary["ok"] == 2
    text = format_table(two)
    assert "BRATS_001" in text and "2 workers" in text


def test_cases_the_dataset_json_lists_but_the_folder_lacks_are_warned(msd_dataset):
    root = msd_dataset.root
    description = json.loads((root / "dataset.json").read_text())
    listed = [f"BRATS_00{k}" for k in (1, 2, 3)]  # BRATS_003: in the list, not on disk
    description["training"] = [
        {"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in listed
    ]
    description["numTraining"] = 3
    description["test"] = ["./imagesTs/BRATS_485.nii.gz"]
    (root / "dataset.json").write_text(json.dumps(description))
    report = check_dataset(root, CheckParams(patch_size=SMALL_PATCH))
    assert report.summary["ok"] == 2 and report.summary["warnings"] == 3
    lines = report.warnings
    assert "1 training case(s)" in lines[0] and "BRATS_003 (./imagesTr/BRATS_003.nii.gz)" in lines[0]
    assert "1 test case(s)" in lines[1] and "BRATS_485" in lines[1]
    assert "numTraining is 3, the folder holds 2 labelled case(s)" in lines[2]
    assert all(str(root / "dataset.json") in line for line in lines)
    result = CliRunner().invoke(main, ["check", str(root), "--patch-size", *map(str, SMALL_PATCH)])
    assert "warnings (3):" in result.output and "BRATS_003" in result.output
    # the complete listing warns of nothing
    description["training"], description["numTraining"], description["test"] = (
        description["training"][:2],
        2,
        [],
    )
    (root / "dataset.json").write_text(json.dumps(description))
    assert check_dataset(root, CheckParams(patch_size=SMALL_PATCH)).warnings == ()


def test_a_label_whose_image_is_in_imagests_is_warned(msd_dataset):
    root = msd_dataset.root
    (root / "imagesTs").mkdir()
    (root / "imagesTr" / "BRATS_002.nii.gz").rename(root / "imagesTs" / "BRATS_002.nii.gz")
    report = check_dataset(root, CheckParams(patch_size=SMALL_PATCH))
    assert report.summary["without_label"] == 1
    assert any("the label of BRATS_002 is not read, its image is in imagesTs/" in w for w in report.warnings)


def test_unlabelled_dataset_is_ok_without_label(tmp_path):
    image, _ = small_case()
    write_brats_case(tmp_path, "BraTS-GLI-00010-000", image, None)
    result = run_check(tmp_path, *PATCH_ARGS)
    assert result.exit_code == 0, result.output
    row = table_row(result.stdout, "BraTS-GLI-00010-000")
    assert row[6:] == ["-", "-", "-", "-", "ok (no label)"]
    assert "1 case: 1 ok (1 without label), 0 with problems" in result.stdout


def test_expect_shape(brats2023_dataset):
    assert run_check(brats2023_dataset.root, *PATCH_ARGS, "--expect-shape", 48, 48, 20).exit_code == 0
    result = run_check(brats2023_dataset.root, *PATCH_ARGS, "--expect-shape", 240, 240, 155)
    assert result.exit_code == 1
    lines = problem_lines(result.stdout)
    assert len(lines) == 2
    assert all("expected shape 240x240x155, found 48x48x20" in line for line in lines)


# ---------------------------------------------------------------------------------------------------------
# one test per kind of bad input; the other case of the dataset stays ok


def test_unlabelled_case_next_to_labelled_ones_is_reported_unlabelled(brats2023_dataset):
    """Issue 13: a case without its seg file is an unlabelled case, not a "file not found"."""
    written = brats2023_dataset.cases["BraTS-GLI-00002-000"]
    written.label_path.unlink()
    result = run_check(brats2023_dataset.root, *PATCH_ARGS)
    assert result.exit_code == 0, result.stdout
    assert table_row(result.stdout, "BraTS-GLI-00000-000")[-1] == "ok"
    assert table_row(result.stdout, "BraTS-GLI-00002-000")[-1] == "ok (no label)"
    assert "2 cases: 2 ok (1 without label), 0 with problems" in result.stdout


def test_missing_channel_file(brats2023_dataset):
    t1c = brats2023_dataset.cases["BraTS-GLI-00000-000"].image_paths[2]
    assert t1c.name.endswith("-t1c.nii.gz")
    t1c.unlink()
    result = run_check(brats2023_dataset.root, *PATCH_ARGS)
    assert_one_problem(result, t1c, "file not found")
    # what the other files' headers say still shows
    assert table_row(result.stdout, "BraTS-GLI-00000-000")[2:6] == ["48x48x20", "1x1.25x2.5", "LPS", "int16"]


def test_a_case_folder_holding_only_its_seg_is_a_case_missing_its_channels(brats2023_dataset):
    """Review r2: an incomplete download left a folder with only its seg, and the case was silently no
    case (the dataset checked ok); MSD and nnU-Net report a label without its image as a broken case."""
    written = brats2023_dataset.cases["BraTS-GLI-00002-000"]
    for path in written.image_paths:
        path.unlink()
    result = run_check(brats2023_dataset.root, *PATCH_ARGS)
    assert_one_problem(result, written.image_paths[0], "file not found", "case BraTS-GLI-00002-000")
    assert table_row(result.stdout, "BraTS-GLI-00000-000")[-1] == "ok"
    files = discover_cases(brats2023_dataset.root).case("BraTS-GLI-00002-000")
    assert files.image_paths == written.image_paths and files.label_path == written.label_path


def test_a_seg_only_brats2021_folder_alone_is_read_by_its_separator(tmp_path):
    """With no folder of channel files to follow, a ``_seg`` file is BraTS 2021's naming."""
    image, label = small_case()
    written = write_brats_case(tmp_path, "BraTS2021_00001", image, label, "brats2021")
    for path in written.image_paths:
        path.unlink()
    dataset = discover_cases(tmp_path)
    assert dataset.layout == "brats2021" and dataset.case_ids == ("BraTS2021_00001",)
    assert dataset.cases[0].image_paths == written.image_paths


def test_truncated_gzip(brats2023_dataset):
    flair = brats2023_dataset.cases["BraTS-GLI-00000-000"].image_paths[0]
    data = flair.read_bytes()
    flair.write_bytes(data[: len(data) // 2])
    assert_one_problem(run_check(brats2023_dataset.root, *PATCH_ARGS), flair, "truncated file")


def test_gzip_cut_inside_its_trailer(brats2023_dataset):
    """All voxels decode, but the gzip CRC/length trailer is gone: the reader inflates to the end."""
    seg = brats2023_dataset.cases["BraTS-GLI-00000-000"].label_path
    seg.write_bytes(seg.read_bytes()[:-4])
    assert_one_problem(
        run_check(brats2023_dataset.root, *PATCH_ARGS), seg, "cannot read NIfTI file: truncated file"
    )


def test_non_gzip_file(brats2023_dataset):
    t2w = brats2023_dataset.cases["BraTS-GLI-00002-000"].image_paths[3]
    t2w.write_text("this is not a gzip file\n" * 20)
    assert_one_problem(run_check(brats2023_dataset.root, *PATCH_ARGS), t2w, "not gzip")


def test_gzip_but_not_nifti(brats2023_dataset):
    t1n = brats2023_dataset.cases["BraTS-GLI-00002-000"].image_paths[1]
    t1n.write_bytes(gzip.compress(b"a gzipped text file, not a NIfTI header\n" * 20))
    assert_one_problem(run_check(brats2023_dataset.root, *PATCH_ARGS), t1n, "no valid NIfTI-1/NIfTI-2 header")


def test_unreadable_file(brats2023_dataset):
    # Tests run as root, where file permissions do not stop reading; a folder in a file's place does.
    seg = brats2023_dataset.cases["BraTS-GLI-00000-000"].label_path
    seg.unlink()
    seg.mkdir()
    assert_one_problem(run_check(brats2023_dataset.root, *PATCH_ARGS), seg, "not a regular file")


def test_3d_image_where_4d_expected(msd_dataset):
    path = msd_dataset.cases["BRATS_002"].image_paths[0]
    source = nib.load(path)
    write_nifti_file(path, np.asarray(source.dataobj)[..., 0], source.affine)
    assert_one_problem(
        run_check(msd_dataset.root, *PATCH_ARGS), path, "expected a 4D image", "found shape (48, 48, 20)"
    )


def test_five_channels(msd_dataset):
    path = msd_dataset.cases["BRATS_001"].image_paths[0]
    source = nib.load(path)
    data = np.asarray(source.dataobj)
    write_nifti_file(path, np.concatenate([data, data[..., :1]], axis=-1), source.affine)
    assert_one_problem(run_check(msd_dataset.root, *PATCH_ARGS), path, "found shape (48, 48, 20, 5)")


def test_4d_channel_file_in_a_case_folder(brats2023_dataset):
    t2f = brats2023_dataset.cases["BraTS-GLI-00002-000"].image_paths[0]
    source = nib.load(t2f)
    write_nifti_file(t2f, np.stack([np.asarray(source.dataobj)] * 2, axis=-1), source.affine)
    assert_one_problem(
        run_check(brats2023_dataset.root, *PATCH_ARGS), t2f, "expected a 3D channel image", "(48, 48, 20, 2)"
    )


def test_image_label_shape_mismatch(msd_dataset):
    label_path = msd_dataset.cases["BRATS_001"].label_path
    source = nib.load(label_path)
    write_nifti_file(label_path, np.asarray(source.dataobj)[:, :, :16], source.affine)
    assert_one_problem(
        run_check(msd_dataset.root, *PATCH_ARGS),
        label_path,
        "label shape (48, 48, 16) does not match image shape (48, 48, 20)",
    )


def test_image_label_affine_mismatch(brats2023_dataset):
    seg = brats2023_dataset.cases["BraTS-GLI-00002-000"].label_path
    source = nib.load(seg)
    shifted = source.affine.copy()
    shifted[0, 3] += 5.0  # 5 mm off in x
    write_nifti_file(seg, np.asarray(source.dataobj), shifted)
    assert_one_problem(run_check(brats2023_dataset.root, *PATCH_ARGS), seg, "label affine does not match")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_image(tmp_path, bad):
    image, label = small_case()
    written = write_brats_case(tmp_path, "BraTS-GLI-00011-000", image, label, image_dtype="float32")
    t1c = written.image_paths[2]
    source = nib.load(t1c)
    data = np.asarray(source.dataobj).copy()
    data[3, 4, 5] = bad
    data[6, 7, 8] = bad
    write_nifti_file(t1c, data, source.affine)
    assert_one_problem(run_check(tmp_path, *PATCH_ARGS), t1c, "2 NaN/Inf voxels in channel T1gd")


@pytest.mark.parametrize("value", [0.0, -0.7])
def test_a_constant_channel_is_refused_naming_its_file(tmp_path, value):
    """An all-zero (or all -0.7) channel is no scan: check refuses it, and build-patches stores nothing."""
    image, label = small_case()
    image[1] = value
    written = write_brats_case(tmp_path / "data", "BraTS-GLI-00011-000", image, label, image_dtype="float32")
    t1n = written.image_paths[1]
    assert_one_problem(run_check(tmp_path / "data", *PATCH_ARGS), t1n, "constant", "channel T1w")
    store = tmp_path / "s.zarr"
    result = CliRunner().invoke(main, ["build-patches", str(tmp_path / "data"), str(store), *PATCH_ARGS])
    assert result.exit_code != 0
    assert "constant" in result.output and str(t1n) in result.output
    assert not (store / "zarr.json").exists() or '"complete": true' not in (store / "zarr.json").read_text()


def test_a_normalized_channel_with_a_constant_background_passes(tmp_path):
    """Already-standardized inputs: background -0.7 everywhere outside the brain is not a flat channel."""
    image, label = small_case()
    image[0] = -0.7
    image[0, 10:30, 10:30, 4:16] = np.linspace(-1.0, 3.0, 20 * 20 * 12).reshape(20, 20, 12)
    write_brats_case(tmp_path, "BraTS-GLI-00011-000", image, label, image_dtype="float32")
    result = run_check(tmp_path, *PATCH_ARGS)
    assert result.exit_code == 0, result.output


def test_label_values_outside_the_convention(tmp_path):
    image, label = small_case()
    # BraTS 2021 enhancing is 4; a 3 means a 2023 file sits in a 2021 dataset.
    written = write_brats_case(tmp_path, "BraTS2021_00012", image, label, layout="brats2021")
    seg = nib.load(written.label_path)
    data = np.asarray(seg.dataobj).copy()
    data[data == 4] = 3
    write_nifti_file(written.label_path, data, seg.affine)
    assert_one_problem(
        run_check(tmp_path, *PATCH_ARGS),
        written.label_path,
        "label values must be in {0,1,2,4} (brats2021 convention: ",
        "found {3}",
    )


@pytest.mark.parametrize(("row", "value", "orientation"), [(0, 0.0, "?PS"), (1, np.nan, "???")])
def test_degenerate_affine(brats2023_dataset, row, value, orientation):
    t2f = brats2023_dataset.cases["BraTS-GLI-00000-000"].image_paths[0]
    source = nib.load(t2f)
    header = source.header.copy()
    srow = f"srow_{'xyz'[row]}"
    header[srow] = [value, value, value, header[srow][3]]  # sform_code stays 1: this affine is used
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), None, header=header), t2f)
    result = run_check(brats2023_dataset.root, *PATCH_ARGS)
    assert_one_problem(result, t2f, "image affine must be finite and invertible")
    assert table_row(result.stdout, "BraTS-GLI-00000-000")[4] == orientation


def test_channel_shapes_differ(brats2023_dataset):
    t2w = brats2023_dataset.cases["BraTS-GLI-00000-000"].image_paths[3]
    source = nib.load(t2w)
    write_nifti_file(t2w, np.asarray(source.dataobj)[:40], source.affine)
    assert_one_problem(
        run_check(brats2023_dataset.root, *PATCH_ARGS),
        t2w,
        "channel shape (40, 48, 20) differs from (48, 48, 20)",
    )


def test_check_case_never_raises_for_a_bad_case(msd_dataset):
    label_path = msd_dataset.cases["BRATS_002"].label_path
    label_path.write_bytes(b"garbage")
    files = discover_cases(msd_dataset.root).case("BRATS_002")
    report = check_case(files, patch_size=SMALL_PATCH)
    assert not report.ok
    assert report.problem is not None and str(label_path) in report.problem and "\n" not in report.problem
    assert report.status.endswith("(BRATS_002.nii.gz)")
    assert report.voxel_counts is None and report.valid_corner_share is None
    assert report.shape == SMALL_SHAPE and report.orientation == "LPS"  # the image header still reads


def test_an_rgb_channel_is_one_problem_line_naming_its_file(tmp_path):
    """Review r9: an RGB24 channel printed a traceback and a problem line naming no file."""
    image, label = small_case()
    written = write_brats_case(tmp_path, "BraTS-GLI-00001-000", image, label, axcodes="RAS")
    t1n = written.image_paths[1]
    rgb = np.zeros(image.shape[1:], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = image[1].astype(np.uint8)
    nib.save(nib.Nifti1Image(rgb, written.source_affine), t1n)
    result = run_check(tmp_path, *PATCH_ARGS)
    assert "Traceback" not in result.output
    assert_one_problem(result, t1n, "image voxels must be real numbers", "found RGB24")
    assert table_row(result.stdout, "BraTS-GLI-00001-000")[5] == "int16/RGB24/int16/int16"


def test_an_unexpected_error_is_one_line_naming_the_case_folder(brats2023_dataset, monkeypatch, caplog):
    """A failure the reader does not know yet: one line naming the case and its files' folder, its
    traceback only at debug level (it was printed as a warning)."""
    import brainprep.check

    def broken(files, **kwargs):
        raise RuntimeError("decoder\nfailed")

    monkeypatch.setattr(brainprep.check, "read_case", broken)
    files = discover_cases(brats2023_dataset.root).case("BraTS-GLI-00000-000")
    folder = brats2023_dataset.root / "BraTS-GLI-00000-000"
    with caplog.at_level("DEBUG", logger="brainprep.check"):
        report = check_case(files, patch_size=SMALL_PATCH)
    assert report.problem == f"unexpected RuntimeError: decoder failed in case BraTS-GLI-00000-000 ({folder})"
    assert report.status == "unexpected RuntimeError: decoder failed (BraTS-GLI-00000-000)"
    assert [r.levelname for r in caplog.records] == ["DEBUG"] and caplog.records[0].exc_info is not None


def test_several_problems_are_all_listed(brats2023_dataset, msd_dataset):
    for written in brats2023_dataset.cases.values():
        written.image_paths[0].write_bytes(b"")
    result = run_check(brats2023_dataset.root, *PATCH_ARGS)
    assert result.exit_code == 1
    lines = problem_lines(result.stdout)
    assert len(lines) == 2
    assert "2 cases: 0 ok (0 without label), 2 with problems" in result.stdout
    for line, written in zip(lines, brats2023_dataset.cases.values(), strict=True):
        assert str(written.image_paths[0]) in line and "Empty file" in line


# ---------------------------------------------------------------------------------------------------------
# usage errors: exit 2


def test_missing_folder_exits_2(tmp_path):
    result = run_check(tmp_path / "nope")
    assert result.exit_code == 2
    assert "DATA_DIR" in result.output and "does not exist" in result.output


def test_unknown_layout_exits_2(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    result = run_check(tmp_path)
    assert result.exit_code == 2
    assert "matches no known layout" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(LayoutError):
        check_dataset(tmp_path)


def test_duplicate_case_id_exits_2_naming_both_files(msd_dataset):
    images = msd_dataset.root / "imagesTr"
    (images / "BRATS_001.nii").write_bytes(gzip.decompress((images / "BRATS_001.nii.gz").read_bytes()))
    result = run_check(msd_dataset.root)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "duplicate file name 'BRATS_001'" in result.output
    assert (
        str(images / "BRATS_001.nii") in result.output and str(images / "BRATS_001.nii.gz") in result.output
    )


def test_empty_msd_dataset_exits_2(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    result = run_check(tmp_path)
    assert result.exit_code == 2
    assert "no cases found" in result.output


def test_bad_options_exit_2(brats2023_dataset):
    assert run_check(brats2023_dataset.root, "--patch-size", 0, 32, 8).exit_code == 2
    assert run_check(brats2023_dataset.root, "--background-threshold", 1.5).exit_code == 2
    assert run_check(brats2023_dataset.root, "--workers", 0).exit_code == 2
    with pytest.raises(ConfigError):
        CheckParams(expect_shape=(48, 48))
    assert CheckParams.from_dict(CheckParams(expect_shape=(1, 2, 3)).to_dict()).expect_shape == (1, 2, 3)


# ---------------------------------------------------------------------------------------------------------
# real shared cases


def test_real_brats2023_without_label(shared_data):
    result = run_check(shared_data / "brats2023")
    assert result.exit_code == 0, result.output
    row = table_row(result.stdout, "BraTS-GLI-00001-000")
    assert row == ["BraTS-GLI-00001-000", "brats2023", "240x240x155", "1x1x1", "LPS", "int16"] + ["-"] * 4 + [
        "ok (no label)"
    ]


def test_real_brats2023_with_seg(shared_data):
    report = check_dataset(shared_data / "brats2023-with-seg")
    (case,) = report.cases
    assert case.ok, case.problem
    assert case.voxel_counts == (8783268, 108566, 14300, 21866)
    assert case.orientation == "LPS" and case.shape == (240, 240, 155)
    assert case.dtype == "float64/float64/float32/float64"  # t2f, t1n, t1c, t2w as shipped
    assert 0.0 < case.valid_corner_share < 1.0
    assert table_row(format_table(report), "brats2023-with-seg")[6:9] == ["108566", "14300", "21866"]


def test_real_msd_label_with_made_up_image(shared_data, tmp_path):
    """BRATS_001's real tumour: its corner share in the table equals the sampler's on the label alone."""
    from brainprep.sample import valid_corner_share

    label = np.asarray(nib.load(shared_data / "msd-labels/labelsTr/BRATS_001.nii.gz").dataobj).astype(
        np.uint8
    )
    image = np.zeros((4, *label.shape), dtype=np.float32)
    image[:, 1, 1, 1] = 1.0  # a voxel of content: a constant channel is refused as no scan
    write_msd_case(tmp_path, "BRATS_001", image, label, affine=np.eye(4), image_dtype="uint8")
    (case,) = check_dataset(tmp_path).cases
    assert case.voxel_counts == (8816276, 53050, 27189, 31485)
    assert case.valid_corner_share == valid_corner_share(label, (160, 160, 16), 0.95)
