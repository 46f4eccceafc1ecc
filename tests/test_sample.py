"""Sample stage: summed-area corner counts, the exact and rejection samplers, per-case generators."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from brainprep.errors import ShapeMismatchError
from brainprep.params import SamplingParams
from brainprep.sample import (
    CaseSampling,
    case_rng,
    corner_background_ratio,
    corner_tumour_counts,
    extract_patch,
    patch_fractions,
    sample_corners,
    summed_area_table,
    valid_corner_mask,
    valid_corner_share,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MSD_LABELS = DATA / "msd-labels" / "labelsTr"


def brute_force_counts(label: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    nx, ny, nz = (label.shape[i] - size[i] + 1 for i in range(3))
    out = np.zeros((nx, ny, nz), dtype=np.int64)
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                out[x, y, z] = np.count_nonzero(label[x : x + size[0], y : y + size[1], z : z + size[2]])
    return out


def course_get_sub_volume_corners(
    label: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int, int],
    k: int,
    max_tries: int,
    threshold: float,
) -> list[tuple[int, int, int] | None]:
    """The course's ``get_sub_volume`` loop, K times, with ``np.random.randint`` replaced by ``rng.integers``
    and keras' ``to_categorical`` by numpy one-hot; returns the corner of each patch, None when it gave up."""
    orig_x, orig_y, orig_z = label.shape
    output_x, output_y, output_z = size
    corners: list[tuple[int, int, int] | None] = []
    for _ in range(k):
        corner = None
        tries = 0
        while tries < max_tries:
            start_x = rng.integers(0, orig_x - output_x + 1)
            start_y = rng.integers(0, orig_y - output_y + 1)
            start_z = rng.integers(0, orig_z - output_z + 1)
            y = label[
                start_x : start_x + output_x, start_y : start_y + output_y, start_z : start_z + output_z
            ]
            y = np.eye(4, dtype=np.float32)[y]
            bgrd_ratio = np.sum(y[:, :, :, 0], dtype=np.float64) / (output_x * output_y * output_z)
            tries += 1
            if bgrd_ratio < threshold:
                corner = (int(start_x), int(start_y), int(start_z))
                break
        corners.append(corner)
    return corners


def random_label(shape: tuple[int, int, int], seed: int, blob: tuple[slice, slice, slice]) -> np.ndarray:
    """Background with a random-class blob."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    label[blob] = rng.integers(0, 4, size=label[blob].shape)
    return label


# --- summed-area table and corner counts ---------------------------------------------------------------


def test_summed_area_table_hand_worked() -> None:
    mask = np.zeros((2, 2, 2), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[1, 0, 1] = True
    s = summed_area_table(mask)
    assert s.shape == (3, 3, 3)
    assert s.dtype == np.int32
    np.testing.assert_array_equal(s[0], 0)
    np.testing.assert_array_equal(s[:, 0], 0)
    np.testing.assert_array_equal(s[:, :, 0], 0)
    assert s[1, 1, 1] == 1
    assert s[2, 1, 2] == 2  # (0,0,0) and (1,0,1)
    assert s[2, 2, 2] == 3


@settings(max_examples=60, deadline=None)
@given(
    label=arrays(np.uint8, st.tuples(*[st.integers(1, 7)] * 3), elements=st.integers(0, 3)),
    fractions=st.tuples(*[st.floats(0.0, 1.0)] * 3),
)
def test_corner_counts_equal_brute_force(label: np.ndarray, fractions: tuple[float, float, float]) -> None:
    size = tuple(max(1, round(f * s)) for f, s in zip(fractions, label.shape, strict=True))
    counts = corner_tumour_counts(label, size)
    assert counts.dtype == np.int32
    np.testing.assert_array_equal(counts, brute_force_counts(label, size))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(4, 12), st.integers(4, 12), st.integers(4, 12)),
    blob=st.tuples(*[st.floats(0.0, 1.0)] * 6),
    fractions=st.tuples(*[st.floats(0.0, 1.0)] * 3),
)
def test_corner_counts_of_a_small_tumour_equal_brute_force(
    shape: tuple[int, int, int], blob: tuple[float, ...], fractions: tuple[float, float, float]
) -> None:
    # one box of tumour anywhere (also on the borders): only corners near it are computed
    label = np.zeros(shape, dtype=np.uint8)
    starts = [int(f * (s - 1)) for f, s in zip(blob[:3], shape, strict=True)]
    stops = [a + 1 + int(f * (s - a - 1)) for a, f, s in zip(starts, blob[3:], shape, strict=True)]
    label[tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))] = 2
    size = tuple(max(1, round(f * s)) for f, s in zip(fractions, shape, strict=True))
    counts = corner_tumour_counts(label, size)
    np.testing.assert_array_equal(counts, brute_force_counts(label, size))
    assert counts.max() > 0


def test_corner_counts_of_an_empty_label_are_zero() -> None:
    counts = corner_tumour_counts(np.zeros((6, 5, 4), dtype=np.uint8), (2, 2, 2))
    assert counts.shape == (5, 4, 3) and counts.dtype == np.int32 and not counts.any()


def test_corner_counts_when_patch_does_not_fit() -> None:
    counts = corner_tumour_counts(np.ones((4, 4, 4), dtype=np.uint8), (5, 2, 2))
    assert counts.shape == (0, 3, 3)


def test_background_ratio_is_the_course_quotient() -> None:
    label = np.zeros((4, 1, 1), dtype=np.uint8)
    label[3] = 2
    ratio = corner_background_ratio(label, (2, 1, 1))
    np.testing.assert_array_equal(ratio[:, 0, 0], [2 / 2, 2 / 2, 1 / 2])


# --- patch_fractions and extract_patch ------------------------------------------------------------------


def test_patch_fractions_hand_worked() -> None:
    label = np.array([0, 1, 1, 2, 3, 3, 3, 0], dtype=np.uint8).reshape(2, 2, 2)
    tumour, classes = patch_fractions(label, 3)
    assert isinstance(tumour, float)
    assert tumour == 6 / 8
    assert classes.dtype == np.float32
    np.testing.assert_array_equal(classes, np.array([2 / 8, 1 / 8, 3 / 8], dtype=np.float32))


def test_patch_fractions_of_background() -> None:
    tumour, classes = patch_fractions(np.zeros((3, 3, 2), dtype=np.uint8), 3)
    assert tumour == 0.0
    np.testing.assert_array_equal(classes, 0)


def test_extract_patch_is_a_view_of_the_last_three_axes() -> None:
    image = np.arange(2 * 5 * 4 * 3).reshape(2, 5, 4, 3)
    patch = extract_patch(image, (1, 2, 0), (3, 2, 2))
    assert patch.shape == (2, 3, 2, 2)
    assert np.shares_memory(patch, image)
    np.testing.assert_array_equal(patch, image[:, 1:4, 2:4, 0:2])
    label_patch = extract_patch(image[0], np.array([4, 3, 2], dtype=np.int32), (1, 1, 1))
    assert label_patch.shape == (1, 1, 1) and label_patch[0, 0, 0] == image[0, 4, 3, 2]


def test_extract_patch_out_of_bounds() -> None:
    with pytest.raises(ShapeMismatchError, match="does not fit"):
        extract_patch(np.zeros((5, 4, 3)), (3, 0, 0), (3, 2, 2))
    with pytest.raises(ShapeMismatchError, match="does not fit"):
        extract_patch(np.zeros((5, 4, 3)), (-1, 0, 0), (3, 2, 2))


# --- exact sampler --------------------------------------------------------------------------------------


def params(**changes: object) -> SamplingParams:
    base = {"patch_size": (4, 4, 2), "patches_per_case": 20, "background_threshold": 0.95, "sampler": "exact"}
    base.update(changes)
    return SamplingParams(**base)  # type: ignore[arg-type]


def test_exact_sampler_returns_only_valid_corners() -> None:
    label = random_label((12, 10, 8), seed=1, blob=(slice(6, 9), slice(2, 5), slice(3, 5)))
    p = params(patches_per_case=200)
    result = sample_corners(label, p, np.random.default_rng(0))
    assert isinstance(result, CaseSampling)
    assert result.corners.dtype == np.int32 and result.corners.shape == (200, 3)
    assert result.skip_reason is None
    volume = 4 * 4 * 2
    for corner in result.corners:
        patch = extract_patch(label, corner, p.patch_size)
        assert (volume - np.count_nonzero(patch)) / volume < 0.95
    valid = brute_force_counts(label, p.patch_size) > 0.05 * volume
    assert result.valid_corner_share == pytest.approx(valid.mean())
    assert result.best_tumour_fraction == brute_force_counts(label, p.patch_size).max() / volume


def test_exact_sampler_is_uniform_over_valid_corners() -> None:
    # 1D-ish: 6 corners of a length-3 patch on x = 0..7; tumour only at x = 4 -> corners 2, 3, 4 valid.
    label = np.zeros((8, 1, 1), dtype=np.uint8)
    label[4] = 3
    p = params(patch_size=(3, 1, 1), patches_per_case=3000)
    result = sample_corners(label, p, np.random.default_rng(11))
    assert result.valid_corner_share == 3 / 6
    np.testing.assert_array_equal(result.corners[:, 1:], 0)
    seen = Counter(result.corners[:, 0].tolist())
    assert set(seen) == {2, 3, 4}
    assert all(800 <= seen[x] <= 1200 for x in (2, 3, 4)), seen


def test_no_valid_corner_gives_no_corners_and_a_reason() -> None:
    label = np.zeros((6, 6, 4), dtype=np.uint8)
    label[3, 3, 2] = 1  # at most 1 tumour voxel of 32 per patch = 3.125% < 5%
    for sampler in ("exact", "rejection"):
        result = sample_corners(label, params(sampler=sampler), np.random.default_rng(0))
        assert result.corners.shape == (0, 3) and result.corners.dtype == np.int32
        assert result.valid_corner_share == 0.0
        assert result.best_tumour_fraction == 1 / 32
        assert result.skip_reason == "no 4x4x2 corner holds more than 5% tumour (best 3.12%)"


def test_case_smaller_than_patch() -> None:
    result = sample_corners(np.ones((3, 8, 8), dtype=np.uint8), params(), np.random.default_rng(0))
    assert result.corners.shape == (0, 3)
    assert result.valid_corner_share == 0.0 and result.best_tumour_fraction == 0.0
    assert result.skip_reason == "case shape (3, 8, 8) smaller than patch (4, 4, 2)"


def test_sample_corners_rejects_wrong_rank() -> None:
    with pytest.raises(ShapeMismatchError, match=r"\(X, Y, Z\)"):
        sample_corners(np.zeros((1, 8, 8, 4), dtype=np.uint8), params(), np.random.default_rng(0))


# --- rejection sampler ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "max_tries", "blob"),
    [
        (0, 1000, (slice(2, 9), slice(1, 8), slice(2, 6))),  # plenty of valid corners
        (5, 3, (slice(9, 12), slice(7, 10), slice(5, 8))),  # few valid corners: some patches give up
    ],
)
def test_rejection_sampler_reproduces_the_course_loop(
    seed: int, max_tries: int, blob: tuple[slice, slice, slice]
) -> None:
    label = random_label((12, 10, 8), seed=seed, blob=blob)
    p = params(sampler="rejection", max_tries=max_tries, patches_per_case=25)
    result = sample_corners(label, p, np.random.default_rng(seed))
    course_rng = np.random.default_rng(seed)
    expected = course_get_sub_volume_corners(label, course_rng, p.patch_size, 25, max_tries, 0.95)
    found = [c for c in expected if c is not None]
    assert [tuple(c) for c in result.corners.tolist()] == found
    assert len(found) > 0
    if max_tries == 3:
        assert len(found) < 25
        assert result.skip_reason is not None
        assert result.skip_reason.startswith(f"rejection sampler gave up on {25 - len(found)} of 25 patches")
    else:
        assert len(found) == 25 and result.skip_reason is None


def test_rejection_sampler_consumes_the_same_draws_as_the_course() -> None:
    label = random_label((12, 10, 8), seed=2, blob=(slice(3, 9), slice(2, 8), slice(2, 6)))
    ours, theirs = np.random.default_rng(9), np.random.default_rng(9)
    sample_corners(label, params(sampler="rejection", patches_per_case=7), ours)
    course_get_sub_volume_corners(label, theirs, (4, 4, 2), 7, 1000, 0.95)
    assert ours.integers(0, 2**62) == theirs.integers(0, 2**62)


# --- per-case generator ---------------------------------------------------------------------------------


def test_case_rng_is_deterministic_and_case_specific() -> None:
    def draws(seed: int, case_id: str) -> np.ndarray:
        return case_rng(seed, case_id).integers(0, 2**62, size=4)

    np.testing.assert_array_equal(draws(0, "BRATS_001"), draws(0, "BRATS_001"))
    assert not np.array_equal(draws(0, "BRATS_001"), draws(0, "BRATS_002"))
    assert not np.array_equal(draws(0, "BRATS_001"), draws(1, "BRATS_001"))


def test_case_rng_does_not_depend_on_python_hash_seed() -> None:
    code = "from brainprep.sample import case_rng; print(case_rng(3, 'BRATS_042').integers(0, 2**62))"
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(run.stdout.strip())
    assert outputs == {str(case_rng(3, "BRATS_042").integers(0, 2**62))}


# --- real MSD labels ------------------------------------------------------------------------------------


def _msd_label(case: str) -> np.ndarray:
    path = MSD_LABELS / f"{case}.nii.gz"
    if not path.exists():
        pytest.skip(f"real MSD labels not available at {path}")
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj).astype(np.uint8)


def test_exact_sampler_on_real_small_tumour() -> None:
    label = _msd_label("BRATS_002")
    p = SamplingParams()  # course: 160x160x16, K = 20, threshold 0.95
    result = sample_corners(label, p, case_rng(0, "BRATS_002"))
    assert result.skip_reason is None and result.corners.shape == (20, 3)
    volume = 160 * 160 * 16
    for corner in result.corners:
        background = volume - np.count_nonzero(extract_patch(label, corner, p.patch_size))
        assert background / volume < 0.95
    # measured once on the checksummed file: 12.48% of the 81x81x140 corners hold more than 5% tumour
    assert result.valid_corner_share == pytest.approx(0.1248024, abs=1e-6)
    assert result.valid_corner_share == valid_corner_share(label, p.patch_size)
    assert result.best_tumour_fraction == pytest.approx(0.0577612, abs=1e-6)
    assert valid_corner_mask(label, p.patch_size).shape == (81, 81, 140)
