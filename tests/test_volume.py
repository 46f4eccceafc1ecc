"""The volume store's pure pieces (brainprep.volume): crop box, crop cut, corner table, class locations.
Hand-made arrays with hand-worked expectations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from brainprep import volume
from brainprep.volume import Crop, brain_crop, class_locations, cut_crop, tumour_corner_table, window_parts


def _image_with_brain(shape: tuple[int, int, int], box: tuple[slice, slice, slice]) -> np.ndarray:
    image = np.zeros((4, *shape), dtype=np.float32)
    image[(1, *box)] = 7.0  # one channel nonzero is brain
    return image


def test_crop_is_the_brain_box_widened_to_the_patch_and_padded_beyond_the_volume() -> None:
    shape = (20, 12, 6)
    image = _image_with_brain(shape, (slice(3, 15), slice(5, 7), slice(2, 4)))
    label = np.zeros(shape, dtype=np.uint8)
    label[16, 6, 3] = 2  # a labelled voxel outside the brain still belongs to the crop
    crop = brain_crop(image, label, (4, 5, 8))
    # x: brain 3..14 and label 16 -> 3..16, 14 long (>= 4); y: 5..6 (2 long) widened to 5, centred
    # (start 5 - 3 // 2 = 4); z: volume 6 < patch 8 -> start -(8 - 6) // 2 = -1, one voxel padded each side
    assert crop == Crop((3, 4, -1), (14, 5, 8), ((0, 0), (0, 0), (1, 1)))
    assert crop.padded
    # widening stays inside the volume where it can: a brain at the very end of y
    edge = brain_crop(
        _image_with_brain(shape, (slice(0, 20), slice(11, 12), slice(0, 6))), label * 0, (4, 5, 2)
    )
    assert edge == Crop((0, 7, 0), (20, 5, 6), ((0, 0), (0, 0), (0, 0)))
    assert brain_crop(np.zeros((4, *shape), np.float32), np.zeros(shape, np.uint8), (4, 4, 4)) is None


def test_cut_crop_copies_the_box_and_zero_fills_the_padding() -> None:
    source = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    crop = Crop((1, -1, 0), (2, 4, 3), ((0, 0), (1, 0), (0, 0)))
    out = cut_crop(source, crop)
    assert out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[:, 0], 0)  # y = -1: padding
    np.testing.assert_array_equal(out[:, 1:], source[1:3, 0:3])
    assert window_parts((5, 5, 5), (-2, 4, 7), (3, 3, 3)) is None  # z from 7: outside
    assert window_parts((5, 5, 5), (-2, 4, 1), (3, 3, 3)) == (
        (slice(0, 1), slice(4, 5), slice(1, 4)),
        (slice(2, 3), slice(0, 1), slice(0, 3)),
    )


def test_corner_table_equals_a_brute_force_count() -> None:
    rng = np.random.default_rng(3)
    label = np.zeros((7, 6, 5), dtype=np.uint8)
    label[2:5, 1:4, 1:3] = rng.integers(0, 4, size=(3, 3, 2))
    patch, threshold = (3, 2, 2), 0.75  # valid: more than 25% of 12 voxels, i.e. at least 4 tumour voxels
    corners, voxels = tumour_corner_table(label, patch, threshold)
    expected = []
    for x, y, z in itertools.product(range(5), range(5), range(4)):
        count = int(np.count_nonzero(label[x : x + 3, y : y + 2, z : z + 2]))
        if (12 - count) / 12 < threshold:
            expected.append((x, y, z, count))
    assert len(expected) > 0 and len(expected) < 100
    np.testing.assert_array_equal(np.column_stack([corners, voxels]), np.array(expected))
    assert corners.dtype == np.int32 and voxels.dtype == np.int32


def test_class_locations_follow_nnunets_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[:5] = 1  # 500 edema voxels
    label[6, 2:5, 3] = 3  # 3 enhancing voxels, no non-enhancing
    rows = class_locations(label, np.random.default_rng(0), 3)
    assert [int((rows[:, 0] == c).sum()) for c in (1, 2, 3)] == [500, 0, 3]
    np.testing.assert_array_equal(rows[rows[:, 0] == 3, 1:], [[6, 2, 3], [6, 3, 3], [6, 4, 3]])
    # a budget of 4 per class: still 1% of the 500 edema voxels (5), drawn without repeats, sorted
    monkeypatch.setattr(volume, "CLASS_SAMPLES", 4)
    rows = class_locations(label, np.random.default_rng(0), 3)
    edema = rows[rows[:, 0] == 1, 1:]
    assert len(edema) == 5  # max(min(4, 500), ceil(500 * 0.01)) = 5
    assert (label[tuple(edema.T)] == 1).all() and len({tuple(r) for r in edema}) == 5
    flat = np.ravel_multi_index(tuple(edema.T), label.shape)
    assert (np.diff(flat) > 0).all()
    assert len(rows[rows[:, 0] == 3]) == 3


def test_best_tumour_fraction_means_the_same_in_both_store_kinds(tmp_path) -> None:
    """A volume store's best_tumour_fraction was the best of the passing corners (0.0 where none passes);
    a patch store's, the best of every corner: the same key now holds the same number in both."""
    from brainprep.builder import build_patches
    from brainprep.params import BuildParams, SamplingParams, StoreParams
    from brainprep.store import open_store
    from brainprep.synth import SynthParams, write_synthetic_dataset

    # BRATS_004's tumour is too small for any patch to pass the threshold
    data = write_synthetic_dataset(tmp_path / "data", SynthParams(n_cases=4, shape=(64, 64, 32), seed=7))
    params = BuildParams(sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=4), seed=11)
    best = {}
    for kind in ("patches", "volumes"):
        build_patches(
            data, tmp_path / f"{kind}.zarr", params.replace(store=StoreParams(kind=kind)), workers=1
        )
        with open_store(tmp_path / f"{kind}.zarr") as store:
            best[kind] = {c["case_id"]: c["best_tumour_fraction"] for c in store.metadata["cases"]}
    assert best["volumes"] == best["patches"]
    assert 0.0 < best["volumes"]["BRATS_004"] < 0.05
