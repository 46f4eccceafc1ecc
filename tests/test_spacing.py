"""Voxel spacing: the RAS spacing of a case, the dataset's majority, the build's refusal of mixed
spacing, ``--allow-mixed-spacing`` and ``--resample`` (both store kinds), and ``check``'s warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import (
    SMALL_PATCH,
    SMALL_SPACING,
    box_label,
    orient_from_ras,
    ras_affine,
    small_case,
    write_msd_case,
)

from brainprep.cli import main as cli
from brainprep.read.nifti import ras_spacing
from brainprep.spacing import (
    majority_spacing,
    off_majority,
    resample_image,
    resample_label,
    resampled_grid,
    same_spacing,
    spacing_mismatch,
)
from brainprep.standardize import standardize_patch_slices

#: the odd case out: z slices twice as thick, half as many (the same field of view)
THICK = (SMALL_SPACING[0], SMALL_SPACING[1], 2 * SMALL_SPACING[2])


def test_majority_spacing_and_the_cases_off_it() -> None:
    rounding = (1.0, 1.25, 2.5 * (1 + 1e-6))  # float rounding of the same grid: the same spacing
    assert same_spacing(SMALL_SPACING, rounding) and not same_spacing(SMALL_SPACING, (1.0, 1.25, 2.51))
    spacings = [THICK, SMALL_SPACING, None, rounding, THICK, SMALL_SPACING]
    assert majority_spacing(spacings) == SMALL_SPACING  # 3 against 2; None (unreadable) left out
    assert off_majority(list("abcdef"), spacings, SMALL_SPACING) == [("a", THICK), ("e", THICK)]
    assert majority_spacing([THICK, SMALL_SPACING]) == THICK  # a tie: the first group
    assert majority_spacing([None]) is None


def test_ras_spacing_follows_the_axes_to_ras() -> None:
    # a file stored S, R, A (axis 0 of the file is S): its column norms are (2.5, 1, 1.25)
    _, affine = orient_from_ras(np.zeros((4, 5, 6)), ras_affine(), "SRA")
    assert ras_spacing(affine) == pytest.approx(SMALL_SPACING)
    assert ras_spacing(orient_from_ras(np.zeros((4, 5, 6)), ras_affine(), "LPS")[1]) == pytest.approx(
        SMALL_SPACING
    )


def test_resampled_grid_and_nearest_label_by_hand() -> None:
    # 2 slices of 3 mm -> 6 slices of 1 mm over the same 6 mm, centred: new z = old z / 3 - 1/3
    shape, step, offset = resampled_grid((4, 4, 2), (1.0, 1.0, 3.0), (1.0, 1.0, 1.0))
    assert shape == (4, 4, 6)
    np.testing.assert_allclose(step, [1, 1, 1 / 3])
    np.testing.assert_allclose(offset, [0, 0, -1 / 3])
    label = np.zeros((4, 4, 2), dtype=np.uint8)
    label[..., 1] = 3
    # source z at -1/3, 0, 1/3, 2/3, 1, 4/3: nearest slice 0, 0, 0, 1, 1, 1
    np.testing.assert_array_equal(
        resample_label(label, (1.0, 1.0, 3.0), (1.0, 1.0, 1.0))[0, 0], [0, 0, 0, 3, 3, 3]
    )
    # trilinear between slices 0 and 3 (values 0 and 3), the edge value past the ends
    image = label[None].astype(np.float32)
    resampled = resample_image(image, (1.0, 1.0, 3.0), (1.0, 1.0, 1.0))
    assert resampled.dtype == np.float32
    np.testing.assert_allclose(resampled[0, 2, 1], [0, 0, 1, 2, 3, 3], atol=1e-6)


def test_predict_warns_when_the_scan_is_not_at_the_trained_spacing() -> None:
    from brainprep.params import SpacingParams

    resampled = SpacingParams(policy="resample", target=SMALL_SPACING)
    assert spacing_mismatch(SMALL_SPACING, resampled) is None
    assert spacing_mismatch(THICK, SpacingParams()) is None  # a uniform store does not record it
    line = spacing_mismatch(THICK, resampled)
    assert line is not None and "1x1.25x5 mm differs from the 1x1.25x2.5 mm the model was trained on" in line


def _mixed_dataset(root: Path) -> Path:
    """BRATS_001, 002 at SMALL_SPACING (48x48x20); BRATS_003 at THICK (48x48x10, the same head)."""
    for i in (1, 2):
        image, label = small_case(seed=i)
        write_msd_case(root, f"BRATS_00{i}", image, label, axcodes="LPS")
    image, _ = small_case(seed=3)
    thick_label = box_label()[:, :, 1::2]  # every other slice of the same tumour (3 of its 5)
    write_msd_case(root, "BRATS_003", image[..., ::2], thick_label, ras_affine(THICK), axcodes="LPS")
    return root


def _build(data: Path, store: Path, *flags: str):
    patch = [str(s) for s in SMALL_PATCH]
    command = ["build-patches", str(data), str(store), "--patch-size", *patch, "--patches-per-case", "2"]
    return CliRunner().invoke(
        cli, [*command, "--workers", "1", "--no-progress", "--val-fraction", "0", *flags]
    )


def test_build_refuses_mixed_spacing_naming_the_case_and_both_flags(tmp_path: Path) -> None:
    result = _build(_mixed_dataset(tmp_path / "data"), tmp_path / "s.zarr")
    assert result.exit_code != 0
    message = result.output.strip().splitlines()[-1]
    assert (
        "case BRATS_003 is 1x1.25x5 mm" in message and "majority of the 3 cases is 1x1.25x2.5 mm" in message
    )
    assert "--resample" in message and "--allow-mixed-spacing" in message
    assert not (tmp_path / "s.zarr").exists()


def test_allow_mixed_spacing_builds_as_is_and_records_each_spacing(tmp_path: Path) -> None:
    from brainprep.store import open_store

    result = _build(_mixed_dataset(tmp_path / "data"), tmp_path / "s.zarr", "--allow-mixed-spacing")
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "s.zarr") as store:
        assert store.metadata["params"]["spacing"] == {"policy": "allow-mixed", "target": None}
        spacings = [case["spacing"] for case in store.cases]
        assert spacings == [pytest.approx(SMALL_SPACING)] * 2 + [pytest.approx(THICK)]
        assert [case["resampled"] for case in store.cases] == [False] * 3


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_resample_puts_the_odd_case_on_the_majority_grid(tmp_path: Path, suffix: str) -> None:
    from brainprep.store import open_store

    store_path = tmp_path / f"v{suffix}"
    result = _build(_mixed_dataset(tmp_path / "data"), store_path, "--resample", "--kind", "volumes")
    assert result.exit_code == 0, result.output
    with open_store(store_path) as store:
        assert store.params.spacing.policy == "resample"
        assert store.params.spacing.target == pytest.approx(SMALL_SPACING)  # the majority, resolved
        thick = store.cases[2]
        assert thick["resampled"] and thick["source_spacing"] == pytest.approx(THICK)
        assert thick["spacing"] == pytest.approx(SMALL_SPACING) and thick["source_shape"] == [48, 48, 20]
        assert ras_spacing(np.array(thick["affine"])) == pytest.approx(SMALL_SPACING)
        # the label is the nearest-neighbour resampling of the file's, cut to the crop
        want = resample_label(box_label()[:, :, 1::2], THICK, SMALL_SPACING)
        offset, shape = thick["crop_offset"], thick["crop_shape"]
        window = tuple(slice(max(o, 0), o + s) for o, s in zip(offset, shape, strict=True))
        np.testing.assert_array_equal(store.read_volume(2)[1], want[window])
        assert not store.cases[0]["resampled"]


def test_resample_in_a_patch_store_records_the_grid(tmp_path: Path) -> None:
    from brainprep.store import open_store

    result = _build(_mixed_dataset(tmp_path / "data"), tmp_path / "p.zarr", "--resample")
    assert result.exit_code == 0, result.output
    want = resample_label(box_label()[:, :, 1::2], THICK, SMALL_SPACING)
    image = resample_image(small_case(seed=3)[0][..., ::2], THICK, SMALL_SPACING)  # trilinear
    assert want.shape == image.shape[1:] == (48, 48, 20)
    with open_store(tmp_path / "p.zarr") as store:
        assert [case["resampled"] for case in store.cases] == [False, False, True]
        assert store.cases[2]["n_patches"] == 2  # corners drawn on the resampled 48x48x20 label
        for slot in (4, 5):  # case 2's patches, cut from the resampled label
            x, y, z = store.table.corner[slot]
            window = want[x : x + SMALL_PATCH[0], y : y + SMALL_PATCH[1], z : z + SMALL_PATCH[2]]
            np.testing.assert_array_equal(store.read_label(slot), window)
            patch = image[:, x : x + SMALL_PATCH[0], y : y + SMALL_PATCH[1], z : z + SMALL_PATCH[2]]
            np.testing.assert_array_equal(
                store.read_image(slot), standardize_patch_slices(patch).astype("float16")
            )


def test_check_flags_the_case_off_the_majority_spacing(tmp_path: Path) -> None:
    data = _mixed_dataset(tmp_path / "data")
    report = tmp_path / "report.json"
    patch = [str(s) for s in SMALL_PATCH]
    result = CliRunner().invoke(cli, ["check", str(data), "--patch-size", *patch, "--json", str(report)])
    assert result.exit_code == 0, result.output  # a warning, not a problem: it builds with a flag
    (warning,) = json.loads(report.read_text())["warnings"]
    assert warning.startswith("case BRATS_003: spacing 1x1.25x5 mm differs from the majority 1x1.25x2.5 mm")
    assert warning in result.output
