"""Tests of the synthetic data generator (brainprep.synth) and the ``brainprep synth`` command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

import brainprep
import brainprep.synth.contrast as contrast_module
from brainprep.cli import main
from brainprep.errors import ConfigError
from brainprep.sample import valid_corner_share
from brainprep.synth import SynthParams, build_case, synth_case, write_synthetic_dataset
from brainprep.synth.anatomy import Tissue
from brainprep.synth.contrast import NOISE_SHARE, render_image
from brainprep.synth.fields import Grid, interpolated_noise, smooth_field
from brainprep.synth.tumour import fit_to_shape

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MSD_LABELS = DATA / "msd-labels" / "labelsTr"
SMALL = (64, 64, 32)
FLAIR, T1W, T1GD, T2W = range(4)


def small_params(**changes) -> SynthParams:
    return SynthParams(n_cases=3, shape=SMALL).replace(**changes)


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_params_round_trip_and_validation():
    params = SynthParams(n_cases=3, shape=[64, 64, 32], layout="brats2023", labels_from=None)
    assert params.shape == (64, 64, 32)
    assert SynthParams.from_dict(json.loads(params.to_json())) == params
    assert params.patch_size == (64, 64, 16)
    assert SynthParams().patch_size == (160, 160, 16)
    with pytest.raises(ConfigError, match="layout"):
        SynthParams(layout="nifti")
    with pytest.raises(ConfigError, match="seed"):
        SynthParams(seed=-1)
    with pytest.raises(ConfigError, match="n_cases"):
        SynthParams(n_cases=0)
    assert SynthParams().skull_stripped is True
    head = SynthParams(skull_stripped=False)
    assert SynthParams.from_dict(json.loads(head.to_json())) == head
    with pytest.raises(ConfigError, match="skull_stripped"):
        SynthParams(skull_stripped="no")


def test_small_tumour_case_selection():
    params = SynthParams(n_cases=9, small_tumour_every=4)
    assert [i for i in range(9) if params.is_small_tumour_case(i)] == [3, 7]  # BRATS_004, BRATS_008
    assert not any(SynthParams(small_tumour_every=0).is_small_tumour_case(i) for i in range(9))


def test_smooth_field_has_unit_variance_and_is_smooth():
    field = smooth_field(Grid((120, 120, 80)), 10.0, np.random.default_rng(1))
    assert field.dtype == np.float32 and field.shape == (120, 120, 80)
    assert 0.6 < field.std() < 1.4
    # Neighbouring voxels (2 mm apart here) are strongly correlated, far ones are not.
    near = np.corrcoef(field[:-1].ravel(), field[1:].ravel())[0, 1]
    assert near > 0.9


def test_fit_to_shape_crops_and_pads_around_the_centre():
    label = np.arange(4 * 6 * 2, dtype=np.uint8).reshape(4, 6, 2)
    fitted = fit_to_shape(label, (6, 4, 2))
    assert fitted.shape == (6, 4, 2)
    np.testing.assert_array_equal(fitted[0], 0)  # padded row (x)
    np.testing.assert_array_equal(fitted[5], 0)
    np.testing.assert_array_equal(fitted[1:5], label[:, 1:5])  # cropped columns (y)


def test_case_shapes_dtypes_and_label_values():
    image, label = synth_case(small_params(), 0)
    assert image.shape == (*SMALL, 4) and image.dtype == np.float32
    assert label.shape == SMALL and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(image, np.rint(image))  # whole numbers, like scanner output
    assert image.max() < np.iinfo(np.int16).max


def test_default_case_is_skull_stripped_zero_outside_the_brain_nonzero_inside():
    case = build_case(small_params(), 1)
    brain = np.isin(case.tissue, [Tissue.CSF, Tissue.GREY_MATTER, Tissue.WHITE_MATTER]) | (case.label > 0)
    assert brain.any() and (~brain).any()
    # No scalp or skull left: the tissue map shows what the image shows.
    assert set(np.unique(case.tissue).tolist()) == {0, Tissue.CSF, Tissue.GREY_MATTER, Tissue.WHITE_MATTER}
    assert np.all(case.image[~brain] == 0)  # every channel, exactly 0
    assert np.all(case.image[brain] >= 1)  # every channel of every brain voxel
    assert np.all(case.label[~brain] == 0)
    # The tumour and its edema lie in the brain.
    tumour_tissue = set(np.unique(case.tissue[case.label > 0]).tolist())
    assert tumour_tissue <= {Tissue.CSF, Tissue.GREY_MATTER, Tissue.WHITE_MATTER}


def test_with_skull_case_is_zero_outside_the_head_and_strips_to_the_default_case():
    stripped = build_case(small_params(), 1)
    head_case = build_case(small_params(skull_stripped=False), 1)
    head = head_case.tissue > 0
    assert np.any(head_case.tissue == Tissue.SCALP) and np.any(head_case.tissue == Tissue.SKULL)
    assert np.all(head_case.image[~head] == 0)
    assert np.all(head_case.image[head] >= 1)
    np.testing.assert_array_equal(head_case.label, stripped.label)
    # Same random draws: stripping is exactly masking the head image with the brain.
    brain = stripped.tissue > 0
    assert brain.sum() < head.sum()
    np.testing.assert_array_equal(stripped.image, np.where(brain[..., None], head_case.image, 0))
    np.testing.assert_array_equal(stripped.tissue, np.where(brain, head_case.tissue, 0))


def test_interpolated_noise_has_unit_variance_and_the_filter_correlation():
    noise = interpolated_noise((80, 60, 40), np.random.default_rng(2))
    assert noise.dtype == np.float32 and noise.shape == (80, 60, 40)
    assert 0.97 < noise.std() < 1.03
    assert 0.95 < noise[0].std() < 1.05 and 0.95 < noise[:, :, -1].std() < 1.05  # borders too
    # [1, 2, 1] / 4 per axis: lag-1 correlation (1/4 * 1/2 * 2) / (1/16 + 1/4 + 1/16) = 2/3, lag-2 1/6,
    # lag-3 0.
    for axis in range(3):
        moved = np.moveaxis(noise, axis, 0)
        for lag, expected in ((1, 2 / 3), (2, 1 / 6), (3, 0.0)):
            corr = np.corrcoef(moved[:-lag].ravel(), moved[lag:].ravel())[0, 1]
            assert abs(corr - expected) < 0.02, (axis, lag, corr)


def test_white_matter_noise_is_a_few_percent_and_not_noisier_than_real_brats(monkeypatch):
    # Switch off the texture and bias field: what remains of a uniform white-matter block is the noise.
    monkeypatch.setattr(contrast_module, "TEXTURE_STRENGTH", 0.0)
    monkeypatch.setattr(contrast_module, "BIAS_STRENGTH", 0.0)
    classes = np.full((48, 48, 32), Tissue.WHITE_MATTER, dtype=np.uint8)
    image = render_image(classes, Grid(classes.shape), np.random.default_rng(3))
    np.testing.assert_array_equal(image, np.rint(image))
    relative = image.std(axis=(0, 1, 2)) / image.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(relative, NOISE_SHARE, rtol=0.1)
    # First-difference noise (std of neighbour differences / sqrt(2) / mean) of 5x5x5 white-matter
    # patches of the real BraTS 2023 cases in shared/data (medians of two cases, FLAIR T1w T1gd T2w):
    # 0.045-0.060, 0.013-0.018, 0.019-0.032, 0.038-0.054. The synthetic noise stays under the lower ends.
    real_low = np.array([0.045, 0.013, 0.019, 0.038])
    step = np.diff(image, axis=0).std(axis=(0, 1, 2)) / np.sqrt(2) / image.mean(axis=(0, 1, 2))
    assert np.all(step < real_low), step
    # Interpolated noise: neighbours correlate (2/3), so differences are sqrt(1/3) of the noise.
    np.testing.assert_allclose(step, relative * np.sqrt(1 / 3), rtol=0.1)


def test_contrasts_follow_mri_relations():
    cases = [build_case(small_params(), i) for i in range(3)]
    tissue = np.concatenate([c.tissue.ravel() for c in cases])
    label = np.concatenate([c.label.ravel() for c in cases])
    image = np.concatenate([c.image.reshape(-1, 4) for c in cases])

    def mean(channel: int, mask: np.ndarray) -> float:
        assert mask.any()
        return float(image[mask, channel].mean())

    white = (tissue == Tissue.WHITE_MATTER) & (label == 0)
    grey = (tissue == Tissue.GREY_MATTER) & (label == 0)
    csf = (tissue == Tissue.CSF) & (label == 0)
    edema, core, rim = label == 1, label == 2, label == 3
    assert mean(FLAIR, edema) > 1.4 * mean(FLAIR, white)
    assert mean(T2W, edema) > 1.4 * mean(T2W, white)
    assert mean(T1GD, rim) > 1.5 * mean(T1GD, core)
    assert mean(T1GD, rim) > mean(T1GD, white)
    assert mean(T1W, core) < mean(T1W, white)
    assert mean(T1W, white) > mean(T1W, grey) > mean(T1W, csf)
    assert mean(T2W, csf) > mean(T2W, grey) > mean(T2W, white)
    assert mean(FLAIR, csf) < mean(FLAIR, white)


def test_case_depends_on_seed_and_index_only():
    image, label = synth_case(SynthParams(n_cases=2, shape=SMALL), 1)
    image_many, label_many = synth_case(SynthParams(n_cases=9, shape=SMALL, layout="brats2023"), 1)
    np.testing.assert_array_equal(image, image_many)
    np.testing.assert_array_equal(label, label_many)
    other_seed, _ = synth_case(SynthParams(n_cases=2, shape=SMALL, seed=1), 1)
    other_index, _ = synth_case(SynthParams(n_cases=2, shape=SMALL), 0)
    assert not np.array_equal(image, other_seed)
    assert not np.array_equal(image, other_index)


def test_small_tumour_cases_have_no_valid_patch():
    params = SynthParams(n_cases=8, shape=SMALL, small_tumour_every=4)
    for index in range(params.n_cases):
        _, label = synth_case(params, index)
        share = valid_corner_share(label, params.patch_size)
        if index in (3, 7):
            assert np.count_nonzero(label) > 0, index
            assert share == 0.0, index
        else:
            assert share > 0.0, index


@pytest.mark.slow
def test_full_size_case_small_and_ordinary_tumours():
    params = SynthParams(n_cases=4)
    _, label = synth_case(params, 0)
    assert valid_corner_share(label, (160, 160, 16)) > 0.0
    image, small = synth_case(params, 3)
    assert image.shape == (240, 240, 155, 4)
    assert np.count_nonzero(small) > 0 and valid_corner_share(small, (160, 160, 16)) == 0.0


def test_msd_layout_files_and_dataset_json(tmp_path):
    params = small_params(n_cases=2)
    out = write_synthetic_dataset(tmp_path / "synth", params)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["BRATS_001.nii.gz", "BRATS_002.nii.gz"]
    image = nib.load(out / "imagesTr" / "BRATS_001.nii.gz")
    label = nib.load(out / "labelsTr" / "BRATS_001.nii.gz")
    assert image.shape == (*SMALL, 4) and image.get_data_dtype() == np.float32
    assert label.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(image.affine, np.eye(4))
    description = json.loads((out / "dataset.json").read_text())
    assert description["numTraining"] == 2
    assert description["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert description["training"][1] == {
        "image": "./imagesTr/BRATS_002.nii.gz",
        "label": "./labelsTr/BRATS_002.nii.gz",
    }
    assert SynthParams.from_dict(description["brainprep_synth"]) == params
    dataset = brainprep.discover_cases(out)
    assert dataset.layout == "msd" and dataset.case_ids == ("BRATS_001", "BRATS_002")
    case = brainprep.read_case(dataset.cases[1])
    expected_image, expected_label = synth_case(params, 1)
    np.testing.assert_array_equal(case.image, np.moveaxis(expected_image, -1, 0))
    np.testing.assert_array_equal(case.label, expected_label)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left


def test_same_params_write_the_same_bytes(tmp_path):
    params = small_params(n_cases=2)
    first = file_hashes(write_synthetic_dataset(tmp_path / "a", params))
    second = file_hashes(write_synthetic_dataset(tmp_path / "b", params))
    assert len(first) == 5 and first == second
    third = file_hashes(write_synthetic_dataset(tmp_path / "c", params.replace(seed=1)))
    assert third["imagesTr/BRATS_001.nii.gz"] != first["imagesTr/BRATS_001.nii.gz"]


@pytest.mark.parametrize(
    ("layout", "case_id", "files", "enhancing"),
    [
        ("brats2021", "BraTS2021_00002", ["flair", "t1", "t1ce", "t2", "seg"], 4),
        ("brats2023", "BraTS-GLI-00002-000", ["t2f", "t1n", "t1c", "t2w", "seg"], 3),
    ],
)
def test_release_layouts_read_back_as_the_msd_arrays(tmp_path, layout, case_id, files, enhancing):
    params = small_params(n_cases=2, layout=layout)
    out = write_synthetic_dataset(tmp_path / layout, params)
    separator = "-" if layout == "brats2023" else "_"
    assert sorted(p.name for p in (out / case_id).iterdir()) == sorted(
        f"{case_id}{separator}{key}.nii.gz" for key in files
    )
    flair = nib.load(out / case_id / f"{case_id}{separator}{files[0]}.nii.gz")
    assert flair.shape == SMALL and flair.get_data_dtype() == np.int16
    assert nib.aff2axcodes(flair.affine) == ("L", "P", "S")
    seg = np.asarray(nib.load(out / case_id / f"{case_id}{separator}seg.nii.gz").dataobj)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, enhancing}

    dataset = brainprep.discover_cases(out)
    assert dataset.layout == layout and dataset.case_ids[1] == case_id
    case = brainprep.read_case(dataset.cases[1])
    image, label = synth_case(params, 1)
    np.testing.assert_array_equal(case.image, np.moveaxis(image, -1, 0))
    np.testing.assert_array_equal(case.label, label)
    # The release files really are flipped: their first voxel row is the MSD array's last.
    np.testing.assert_array_equal(np.asarray(flair.dataobj)[0, 0], image[-1, -1, :, FLAIR])


def test_labels_from_a_folder_cycles_and_fits_the_shape(tmp_path):
    folder = tmp_path / "labelsTr"
    folder.mkdir()
    sources = []
    for number, size in enumerate((3, 5), start=1):
        label = np.zeros((70, 60, 32), dtype=np.uint8)  # cropped in x, padded in y to 64x64x32
        label[35 - size : 35 + size, 30 - size : 30 + size, 16 - size : 16 + size] = 1
        label[35 - 2 : 35 + 2, 30 - 2 : 30 + 2, 16 - 2 : 16 + 2] = 3
        label[35, 30, 16] = 2
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / f"BRATS_{number:03d}.nii.gz")
        sources.append(label)
    params = small_params(n_cases=3, labels_from=str(folder))
    for index, source in ((0, sources[0]), (1, sources[1]), (2, sources[0])):
        image, label = synth_case(params, index)
        np.testing.assert_array_equal(label, fit_to_shape(source, SMALL))
        assert np.all(image[label > 0] > 0)
    np.testing.assert_array_equal(np.bincount(label.ravel(), minlength=4)[1:], [6**3 - 4**3, 1, 4**3 - 1])


def test_labels_from_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no \.nii\.gz label maps"):
        synth_case(small_params(labels_from=str(tmp_path)), 0)


@pytest.mark.slow
@pytest.mark.skipif(not MSD_LABELS.is_dir(), reason=f"real MSD labels not found at {MSD_LABELS}")
def test_labels_from_real_msd_labels_keeps_their_voxel_counts():
    params = SynthParams(n_cases=2, labels_from=str(MSD_LABELS))
    image, label = synth_case(params, 1)
    # BRATS_002 (see shared/data/README.md): 53736 edema, 1106 non-enhancing, 8219 enhancing voxels.
    np.testing.assert_array_equal(np.bincount(label.ravel(), minlength=4), [8864939, 53736, 1106, 8219])
    source = np.asarray(nib.load(MSD_LABELS / "BRATS_002.nii.gz").dataobj)
    np.testing.assert_array_equal(label, source)
    assert np.all(image[label > 0] > 0)


def test_write_refuses_a_non_empty_folder_and_cleans_up_after_failure(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        write_synthetic_dataset(out, small_params(n_cases=1))
    assert (out / "keep.txt").exists()

    import brainprep.synth.dataset as dataset_module

    calls = []

    def failing_build(params, index):
        calls.append(index)
        if index == 1:
            raise RuntimeError("disk full")
        return build_case(params, index)

    monkeypatch.setattr(dataset_module, "build_case", failing_build)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_dataset(tmp_path / "new", small_params(n_cases=2))
    assert calls == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # neither "new" nor a staging folder


def test_cli_synth_writes_refuses_and_overwrites(tmp_path):
    out = tmp_path / "synth"
    runner = CliRunner()
    args = ["synth", str(out), "--cases", "2", "--seed", "3", "--shape", "48", "48", "24"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "wrote 2 synthetic cases (msd layout, 48x48x24, seed 3, skull-stripped)" in result.output
    assert brainprep.discover_cases(out).case_ids == ("BRATS_001", "BRATS_002")

    result = runner.invoke(main, args)
    assert result.exit_code != 0
    assert "not empty" in result.output and "--overwrite" in result.output

    result = runner.invoke(main, [*args[:2], "--cases", "1", "--shape", "48", "48", "24", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert brainprep.discover_cases(out).case_ids == ("BRATS_001",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_cli_synth_release_layout_and_bad_option(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["synth", str(tmp_path / "b"), "--cases", "1", "--shape", "32", "32", "16", "--layout", "brats2021"],
    )
    assert result.exit_code == 0, result.output
    assert brainprep.discover_cases(tmp_path / "b").layout == "brats2021"
    result = runner.invoke(main, ["synth", str(tmp_path / "c"), "--layout", "nifti"])
    assert result.exit_code != 0 and "nifti" in result.output


def test_cli_synth_with_skull_writes_the_whole_head(tmp_path):
    out = tmp_path / "head"
    args = ["synth", str(out), "--cases", "1", "--shape", "48", "48", "24", "--with-skull"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "with skull" in result.output
    params = SynthParams(n_cases=1, shape=(48, 48, 24), skull_stripped=False)
    description = json.loads((out / "dataset.json").read_text())
    assert SynthParams.from_dict(description["brainprep_synth"]) == params
    case = brainprep.read_case(brainprep.discover_cases(out).cases[0])
    head_case = build_case(params, 0)
    np.testing.assert_array_equal(case.image, np.moveaxis(head_case.image, -1, 0))
    assert np.all(case.image[:, head_case.tissue == Tissue.SKULL] > 0)


def test_mimics_change_only_their_own_voxels_and_leave_the_labels():
    plain = build_case(small_params(), 0)
    mimicked = build_case(small_params(mimics=6), 0)
    np.testing.assert_array_equal(mimicked.label, plain.label)
    mimic = np.isin(mimicked.tissue, [Tissue.HYPERINTENSITY, Tissue.ENHANCING_FOCUS])
    for kind in (Tissue.HYPERINTENSITY, Tissue.ENHANCING_FOCUS):
        assert (mimicked.tissue == kind).any()
    assert not (mimic & (mimicked.label > 0)).any()
    changed = (mimicked.image != plain.image).any(axis=-1)
    assert changed.any() and not (changed & ~mimic).any()
    # in healthy grey or white matter only, and inside the skull-stripped brain
    assert set(np.unique(plain.tissue[mimic]).tolist()) <= {Tissue.GREY_MATTER, Tissue.WHITE_MATTER}
    assert (mimicked.image[mimic] > 0).all()


def test_mimics_keep_clear_of_the_tumour():
    from scipy import ndimage

    from brainprep.synth.mimics import CLEARANCE_MM

    params = small_params(mimics=8)
    for index in range(3):
        case = build_case(params, index)
        mimic = np.isin(case.tissue, [Tissue.HYPERINTENSITY, Tissue.ENHANCING_FOCUS])
        mm = np.array(Grid(params.shape).mm_per_voxel)
        distance = ndimage.distance_transform_edt(case.label == 0, sampling=mm)
        assert distance[mimic].min() > CLEARANCE_MM


def test_mimics_look_like_edema_and_enhancing_tumour():
    cases = [build_case(small_params(mimics=8), i) for i in range(3)]
    tissue = np.concatenate([c.tissue.ravel() for c in cases])
    label = np.concatenate([c.label.ravel() for c in cases])
    image = np.concatenate([c.image.reshape(-1, 4) for c in cases])
    white = (tissue == Tissue.WHITE_MATTER) & (label == 0)
    hyper, focus = tissue == Tissue.HYPERINTENSITY, tissue == Tissue.ENHANCING_FOCUS
    for channel in (FLAIR, T2W):
        edema = image[label == 1, channel].mean()
        assert abs(image[hyper, channel].mean() / edema - 1) < 0.2
        assert image[hyper, channel].mean() > 1.4 * image[white, channel].mean()
    assert image[focus, T1GD].mean() > 1.5 * image[white, T1GD].mean()
    assert abs(image[focus, T1GD].mean() / image[label == 3, T1GD].mean() - 1) < 0.2
    assert image[focus, FLAIR].mean() < 0.8 * image[label == 1, FLAIR].mean()


def test_mimics_parameter_validation_and_cli(tmp_path):
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="mimics"):
            SynthParams(mimics=bad)
    out = tmp_path / "mimics"
    args = ["synth", str(out), "--cases", "1", "--shape", "48", "48", "24", "--mimics", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "4 mimics per case" in result.output
    description = json.loads((out / "dataset.json").read_text())
    assert SynthParams.from_dict(description["brainprep_synth"]).mimics == 4
    description["brainprep_synth"].pop("mimics")
    assert SynthParams.from_dict(description["brainprep_synth"]).mimics == 0  # older datasets read as none
