"""Import of the course's legacy h5 patch folder: tiny hand-made folders and the real course patches."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from brainprep.cli import main
from brainprep.course import discover_course_patches, import_course, onehot_to_labels, parse_patch_name
from brainprep.errors import ConfigError, InvalidValueError, ShapeMismatchError, UnreadableFileError
from brainprep.params import StoreParams
from brainprep.standardize import standardize_patch_slices
from brainprep.store import schema
from brainprep.store.reader import open_store

TINY_PATCH = (8, 8, 4)


def tiny_patch_file(folder: Path, name: str, label: np.ndarray, seed: int) -> np.ndarray:
    """Write a course-style file: raw ``x`` float64 (4, 8, 8, 4) and one-hot ``y`` (8, 8, 4, 4); returns x."""
    x = np.random.default_rng(seed).uniform(0, 1000, size=(4, *TINY_PATCH))
    y = np.eye(4)[label]
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / name, "w") as handle:
        handle["x"] = x
        handle["y"] = y
    return x


def tiny_label(tumour_voxels: int) -> np.ndarray:
    """uint8 (8, 8, 4) labels: the first ``tumour_voxels`` voxels (C order) cycle through 1, 2, 3."""
    label = np.zeros(int(np.prod(TINY_PATCH)), dtype=np.uint8)
    label[:tumour_voxels] = np.arange(tumour_voxels) % 3 + 1
    return label.reshape(TINY_PATCH)


@pytest.fixture
def tiny_course(tmp_path: Path) -> Path:
    """Case A: patches 1 and 3 (train; 2 exists on disk but config.json omits it), case B: patch 1 (valid)."""
    root = tmp_path / "course"
    tiny_patch_file(root / "train", "A.nii.gz_1_x1_y2_z3.h5", tiny_label(64), 1)  # 64/256 = 0.25
    tiny_patch_file(root / "train", "A.nii.gz_2_x4_y5_z6.h5", tiny_label(32), 2)
    tiny_patch_file(root / "train", "A.nii.gz_3_x7_y8_z9.h5", tiny_label(16), 3)
    tiny_patch_file(root / "valid", "B.nii.gz_1_x0_y0_z10.h5", tiny_label(128), 4)
    config = {
        "train": ["A.nii.gz_1_x1_y2_z3.h5", "A.nii.gz_3_x7_y8_z9.h5"],
        "valid": ["B.nii.gz_1_x0_y0_z10.h5"],
    }
    (root / "config.json").write_text(json.dumps(config))
    return root


def test_parse_patch_name() -> None:
    assert parse_patch_name("BRATS_009.nii.gz_11_x21_y0_z68.h5") == ("BRATS_009", 11, (21, 0, 68))
    with pytest.raises(ConfigError, match=re.escape("BRATS_NNN.nii.gz_K_xX_yY_zZ.h5, found 'patch_7.h5'")):
        parse_patch_name("patch_7.h5")
    with pytest.raises(ConfigError, match="start at 1, found patch 0"):
        parse_patch_name("BRATS_009.nii.gz_0_x21_y0_z68.h5")


def test_onehot_to_labels_by_hand() -> None:
    y = np.zeros((1, 1, 3, 4))
    y[0, 0, 0, 0] = y[0, 0, 1, 3] = y[0, 0, 2, 1] = 1  # voxels: background, enhancing, edema
    assert onehot_to_labels(y).tolist() == [[[0, 3, 1]]]


def test_onehot_rejects_two_ones_and_names_the_file() -> None:
    y = np.eye(4)[np.zeros((2, 2, 2), dtype=int)]
    y[1, 0, 1, 2] = 1
    with pytest.raises(
        InvalidValueError, match=r"exactly one 1 per voxel, found 2 at voxel \(1, 0, 1\).*bad\.h5"
    ):
        onehot_to_labels(y, path=Path("bad.h5"), case_id="A")
    y[1, 0, 1, 2] = 0.5
    with pytest.raises(InvalidValueError, match=r"only 0 and 1, found \[0.5\]"):
        onehot_to_labels(y)
    with pytest.raises(ShapeMismatchError, match="channels last"):
        onehot_to_labels(np.zeros((4, 2, 2, 2)))


def test_discover_reports_unlisted_files(tiny_course: Path) -> None:
    patches, unlisted, missing = discover_course_patches(tiny_course, "skip")
    assert [(p.case_id, p.index, p.split) for p in patches] == [
        ("A", 1, "train"),
        ("A", 3, "train"),
        ("B", 1, "val"),
    ]
    assert unlisted == ("A.nii.gz_2_x4_y5_z6.h5",) and missing == ()
    patches, _, _ = discover_course_patches(tiny_course, "train")
    assert [(p.case_id, p.index) for p in patches] == [("A", 1), ("A", 2), ("A", 3), ("B", 1)]


def test_discover_refuses_a_case_in_two_splits(tiny_course: Path) -> None:
    config = json.loads((tiny_course / "config.json").read_text())
    config["valid"].append("A.nii.gz_2_x4_y5_z6.h5")
    (tiny_course / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="case A has patches in both train and val"):
        discover_course_patches(tiny_course)


def test_discover_refuses_two_files_of_one_name(tiny_course: Path) -> None:
    """config.json names files by name alone: a second file of that name in another folder is ambiguous."""
    tiny_patch_file(tiny_course / "extra", "B.nii.gz_1_x0_y0_z10.h5", tiny_label(8), 5)
    with pytest.raises(
        ConfigError, match=re.escape("two course patch files are named B.nii.gz_1_x0_y0_z10.h5")
    ) as info:
        discover_course_patches(tiny_course)
    assert str(tiny_course / "extra" / "B.nii.gz_1_x0_y0_z10.h5") in str(info.value)
    assert str(tiny_course / "valid" / "B.nii.gz_1_x0_y0_z10.h5") in str(info.value)


@pytest.mark.parametrize("order", [("train", "valid"), ("valid", "train")])
def test_discover_refuses_a_file_in_both_splits(tiny_course: Path, order: tuple[str, str]) -> None:
    """Case B's only file in both lists: it used to go silently to whichever list came last."""
    config = json.loads((tiny_course / "config.json").read_text())
    config["train"].append("B.nii.gz_1_x0_y0_z10.h5")
    (tiny_course / "config.json").write_text(json.dumps({key: config[key] for key in order}))
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"{tiny_course / 'config.json'}: B.nii.gz_1_x0_y0_z10.h5 is listed in both train and valid"
        ),
    ):
        discover_course_patches(tiny_course)


@pytest.mark.parametrize(
    ("train", "found"),
    [
        (None, "found null"),
        ("A.nii.gz_1_x1_y2_z3.h5", 'found "A.nii.gz_1_x1_y2_z3.h5"'),  # a string iterated as its characters
        ({"A.nii.gz_1_x1_y2_z3.h5": 1}, 'found {"A.nii.gz_1_x1_y2_z3.h5": 1}'),
        (["A.nii.gz_1_x1_y2_z3.h5", 3], "found 3 at position 1"),
        ([["A.nii.gz_1_x1_y2_z3.h5"]], 'found ["A.nii.gz_1_x1_y2_z3.h5"] at position 0'),
    ],
)
def test_discover_refuses_a_split_that_is_not_a_list_of_names(
    tiny_course: Path, train: object, found: str
) -> None:
    (tiny_course / "config.json").write_text(json.dumps({"train": train, "valid": []}))
    message = f'{tiny_course / "config.json"}: "train" must be a list of file names, {found}'
    with pytest.raises(ConfigError, match=re.escape(message)):
        discover_course_patches(tiny_course)


def test_discover_refuses_a_repeated_split_in_config_json(tiny_course: Path) -> None:
    """json.loads keeps the last of two "train" lists: the first one's files would silently drop out."""
    text = '{"train": ["A.nii.gz_1_x1_y2_z3.h5"], "train": ["A.nii.gz_3_x7_y8_z9.h5"], "valid": []}'
    (tiny_course / "config.json").write_text(text)
    message = f"{tiny_course / 'config.json'} is not readable JSON: repeated key 'train'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        discover_course_patches(tiny_course)


def _garbage(path: Path) -> None:
    path.write_bytes(b"not an HDF5 file\n" * 8)


def _without_x(path: Path) -> None:
    with h5py.File(path, "r+") as handle:
        del handle["x"]


def _text_x(path: Path) -> None:
    with h5py.File(path, "r+") as handle:
        del handle["x"]
        handle["x"] = np.full((4, *TINY_PATCH), b"a")


@pytest.mark.parametrize(
    "name", ["A.nii.gz_1_x1_y2_z3.h5", "B.nii.gz_1_x0_y0_z10.h5"], ids=["first-patch", "later-patch"]
)
@pytest.mark.parametrize(
    ("damage", "error", "problem"),
    [
        (_garbage, UnreadableFileError, "cannot read course patch file as HDF5: Unable to"),
        (_without_x, UnreadableFileError, "must hold datasets x and y, found no dataset x (it holds ['y'])"),
        (_text_x, InvalidValueError, "x voxels must be real numbers (an integer or float dtype), found |S1"),
    ],
)
def test_import_names_an_unreadable_patch_file(
    tiny_course: Path, tmp_path: Path, name: str, damage, error: type, problem: str
) -> None:
    """Was an OSError / KeyError / TypeError traceback; now one line naming the file, and no store."""
    path = next(tiny_course.rglob(name))
    damage(path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(
        error, match=f"{re.escape(problem)}.* in case {name[0]} \\({re.escape(str(path))}\\)$"
    ):
        import_course(tiny_course, tmp_path / "bad.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    result = CliRunner().invoke(
        main, ["import-course", str(tiny_course), str(tmp_path / "bad.h5"), "--no-progress"]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(path) in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_import_makes_the_missing_folders_above_the_store(
    tiny_course: Path, tmp_path: Path, suffix: str
) -> None:
    target = tmp_path / "new" / "deeper" / f"tiny{suffix}"
    assert import_course(tiny_course, target).n_patches == 3
    with open_store(target) as store:
        assert store.metadata["complete"] and store.n_slots == 6
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no staging folder left


@pytest.mark.parametrize("level", ["0", "-1", "10"])
@pytest.mark.parametrize("command", ["import-course", "build-patches"])
def test_cli_compression_level_range_is_build_patches_one(
    tiny_course: Path, tmp_path: Path, command: str, level: str
) -> None:
    """import-course took level 0, which build-patches refuses: both now take 1..9 only."""
    out = tmp_path / "out.zarr"
    result = CliRunner().invoke(main, [command, str(tiny_course), str(out), "--compression-level", level])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--compression-level'" in result.output and "1<=x<=9" in result.output
    assert not out.exists()


@pytest.mark.parametrize("kind", ["patches", "volumes"])
def test_cli_build_records_the_level_it_was_given_in_an_hdf5_store(tmp_path: Path, kind: str) -> None:
    # level 3 is a Zarr volume store's default: into an .h5 it was taken for "not given" and became 1
    from brainprep.synth import SynthParams, write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", SynthParams(n_cases=2, shape=(48, 48, 24), seed=0))
    out = tmp_path / "s.h5"
    args = ["build-patches", str(data), str(out), "--kind", kind, "--patch-size", "16", "16", "8"]
    result = CliRunner().invoke(main, [*args, "--compression-level", "3", "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    with open_store(out) as store:
        assert store.params.store.compression_level == 3 and store.params.store.format == "hdf5"


@pytest.mark.parametrize("level", [[], ["--compression-level", "2"]])
def test_cli_import_course_into_a_new_folder_at_build_patches_default_level(
    tiny_course: Path, tmp_path: Path, level: list[str]
) -> None:
    # import-course defaulted to level 3 where build-patches and the API default to 1
    out = tmp_path / "stores" / "c.h5"
    result = CliRunner().invoke(main, ["import-course", str(tiny_course), str(out), *level, "--no-progress"])
    assert result.exit_code == 0, result.output
    expected = int(level[1]) if level else StoreParams(format="hdf5").compression_level
    with open_store(out) as store:
        assert store.params.store.compression_level == expected and store.n_slots == 6


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_import_tiny_course_keeps_slots_corners_and_split(
    tiny_course: Path, tmp_path: Path, suffix: str
) -> None:
    result = import_course(tiny_course, tmp_path / f"tiny{suffix}")
    assert result.n_patches == 3 and result.unlisted == ("A.nii.gz_2_x4_y5_z6.h5",)
    with open_store(tmp_path / f"tiny{suffix}") as store:
        assert store.format == ("zarr" if suffix == ".zarr" else "hdf5")
        assert store.n_slots == 6  # 2 cases x K=3 (the largest course index)
        table = store.table
        assert table.valid.tolist() == [True, False, True, True, False, False]
        assert table.case.tolist() == [0, -1, 0, 1, -1, -1]
        assert table.split.tolist() == [0, -1, 0, 1, -1, -1]
        assert table.corner[[0, 2, 3]].tolist() == [[1, 2, 3], [7, 8, 9], [0, 0, 10]]
        np.testing.assert_allclose(table.tumour_fraction[[0, 2, 3]], [64 / 256, 16 / 256, 128 / 256])
        # 64 tumour voxels cycling 1,2,3: 22 edema, 21 non-enhancing, 21 enhancing
        np.testing.assert_allclose(table.class_fractions[0], np.array([22, 21, 21]) / 256)
        assert store.read_label(2).tolist() == tiny_label(16).tolist()
        assert not store.read_image(1).any()  # the skipped file leaves an empty slot
        cases = store.cases
        assert [(c["case_id"], c["split"], c["n_patches"]) for c in cases] == [
            ("A", "train", 2),
            ("B", "val", 1),
        ]
        assert store.params.sampling.patches_per_case == 3
        assert store.metadata["summary"]["unlisted_files"] == ["A.nii.gz_2_x4_y5_z6.h5"]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_import_rejects_a_bad_onehot_naming_the_file(tiny_course: Path, tmp_path: Path, suffix: str) -> None:
    """A failed import leaves no store, not even a partial one, and keeps the store it would replace."""
    kept = import_course(tiny_course, tmp_path / f"old{suffix}").store
    before = sorted(p.name for p in tmp_path.iterdir())
    with h5py.File(tiny_course / "train" / "A.nii.gz_3_x7_y8_z9.h5", "r+") as handle:
        handle["y"][0, 0, 0, 0] = 1.0  # voxel (0, 0, 0) is edema (label 1): now also background
    for target in (tmp_path / f"bad{suffix}", kept):
        with pytest.raises(
            InvalidValueError, match=r"exactly one 1 per voxel.*case A.*A\.nii\.gz_3_x7_y8_z9\.h5"
        ):
            import_course(tiny_course, target)
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no staging folder
    with open_store(kept) as store:  # the store a failed import would have replaced is whole
        assert store.metadata["complete"] and store.n_slots == 6


def test_cli_import_course_puts_unlisted_in_train(tiny_course: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.zarr"
    result = CliRunner().invoke(main, ["import-course", str(tiny_course), str(out), "--unlisted", "train"])
    assert result.exit_code == 0, result.output
    assert "not in config.json, imported as train: A.nii.gz_2_x4_y5_z6.h5" in result.output
    assert "3 patches" not in result.output and "4 patches of 2 cases" in result.output
    with open_store(out) as store:
        assert store.table.valid.tolist() == [True, True, True, True, False, False]


# -------------------------------------------------------------------------------------------------------
# The real course patches.


@pytest.fixture(scope="module")
def course_dir() -> Path:
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "course-patches"
    if not (folder / "config.json").is_file():
        pytest.skip(f"real course patches {folder} are absent")
    return folder


@pytest.fixture(scope="module")
def course_store(course_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("course") / "course.zarr"
    import_course(course_dir, store)
    return store


def test_real_course_import(course_dir: Path, course_store: Path) -> None:
    config = json.loads((course_dir / "config.json").read_text())
    files = sorted(course_dir.rglob("*.h5"))
    assert len(files) == 40 and len(config["train"]) == 17 and len(config["valid"]) == 20
    listed = set(config["train"]) | set(config["valid"])
    with open_store(course_store) as store:
        table = store.table
        assert store.n_slots == 40 and store.patch_size == (160, 160, 16)
        assert int(table.valid.sum()) == 37
        assert [(c["case_id"], c["split"], c["n_patches"]) for c in store.cases] == [
            ("BRATS_009", "train", 17),
            ("BRATS_119", "val", 20),
        ]
        assert {f["path"] for c in store.cases for f in c["files"]} == {
            p.relative_to(course_dir).as_posix() for p in files if p.name in listed
        }
        for path in files:
            case_id, index, cx, cy, cz = re.match(
                r"(BRATS_\d+)\.nii\.gz_(\d+)_x(\d+)_y(\d+)_z(\d+)", path.name
            ).groups()
            corner = (int(cx), int(cy), int(cz))
            case_index = 0 if case_id == "BRATS_009" else 1
            slot = case_index * 20 + int(index) - 1
            if path.name not in listed:
                assert not table.valid[slot]
                continue
            with h5py.File(path, "r") as handle:
                x, y = handle["x"][()], handle["y"][()]
            assert table.valid[slot] and table.case[slot] == case_index
            assert table.split[slot] == schema.SPLIT_CODES["train" if case_index == 0 else "val"]
            assert tuple(table.corner[slot]) == corner
            label = store.read_label(slot)
            assert np.array_equal(label, np.argmax(y, axis=-1))
            assert table.tumour_fraction[slot] == pytest.approx((label > 0).mean(), abs=1e-7)
            image = store.read_image(slot)
            assert image.dtype == np.float16
            assert np.array_equal(image, standardize_patch_slices(x).astype(np.float16))
            assert table.tumour_fraction[slot] > 0.05  # the course kept background share < 0.95


def test_real_course_store_verifies(course_store: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(course_store), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output
