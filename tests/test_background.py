"""Already-normalized inputs: a background other than 0 gives the brain mask, crop and prediction of the
original (skull-stripped, 0-background) case, and ``check`` reports it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_PATCH, small_case, write_msd_case

from brainprep.params import BuildParams, SamplingParams, StandardizeParams, StoreParams
from brainprep.standardize import (
    background_values,
    brain_mask,
    nonzero_statistics,
    standardize_with_statistics,
)
from brainprep.volume import brain_crop

#: the head of :func:`headed_case`: everything outside it is background
HEAD = (slice(6, 40), slice(5, 42), slice(2, 17))


def headed_case() -> tuple[np.ndarray, np.ndarray]:
    """:func:`conftest.small_case` skull-stripped: 0 outside :data:`HEAD` in every channel (the box tumour
    lies inside it), so the brain is exactly the head."""
    image, label = small_case()
    stripped = np.zeros_like(image)
    stripped[(slice(None), *HEAD)] = image[(slice(None), *HEAD)]
    return stripped, label


def zscored(image: np.ndarray) -> np.ndarray:
    """Each channel z-scored over the whole volume, as a pipeline that normalized before us would: the
    background becomes -mean / std of its channel (about -0.7 here), no longer 0."""
    mean = image.mean(axis=(1, 2, 3), keepdims=True)
    std = image.std(axis=(1, 2, 3), keepdims=True)
    return ((image - mean) / std).astype(np.float32)


def test_background_of_a_normalized_volume_is_its_border_constant() -> None:
    image, _ = headed_case()
    normalized = zscored(image)
    np.testing.assert_array_equal(background_values(image), 0.0)
    expected = normalized[:, 0, 0, 0].astype(np.float64)  # a corner is outside the head
    assert np.all(expected < -0.5)
    np.testing.assert_array_equal(background_values(normalized), expected)
    # no constant background (every voxel nonzero, none holding half the border): 0, the old rule
    np.testing.assert_array_equal(background_values(small_case()[0]), 0.0)


def test_mask_crop_and_statistics_of_a_normalized_case_equal_the_original() -> None:
    image, label = headed_case()
    normalized = zscored(image)
    head = np.zeros(label.shape, dtype=bool)
    head[HEAD] = True
    np.testing.assert_array_equal(brain_mask(image), head)
    np.testing.assert_array_equal(brain_mask(normalized), head)  # main: every voxel (all nonzero)
    assert brain_crop(normalized, label, SMALL_PATCH) == brain_crop(image, label, SMALL_PATCH)
    # z-scoring is affine per channel, so the brain's z-score is the same whatever the input's scale
    original = standardize_with_statistics(image, *nonzero_statistics(image), mask=brain_mask(image))
    again = standardize_with_statistics(
        normalized, *nonzero_statistics(normalized), mask=brain_mask(normalized)
    )
    np.testing.assert_allclose(again, original, atol=2e-5)
    assert not again[:, ~head].any()


class _TumourEverywhere(torch.nn.Module):
    """A "network" that says every class everywhere (logit 5): prediction is then the mask alone."""

    def __init__(self) -> None:
        super().__init__()
        self.logit = torch.nn.Parameter(torch.tensor(5.0))

    def forward_logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.logit.expand(batch.shape[0], 3, *batch.shape[2:]).clone()


@pytest.mark.parametrize("method", ["patch-slice", "volume-nonzero"])
def test_predict_of_a_normalized_case_stays_in_the_head(method: str) -> None:
    from brainnet.predict import predict_case
    from brainprep.read.case import Case

    image, label = headed_case()
    params = BuildParams(
        sampling=SamplingParams(patch_size=SMALL_PATCH), standardize=StandardizeParams(method)
    )
    labels = {}
    for name, volume in (("original", image), ("normalized", zscored(image))):
        case = Case("BRATS_001", volume, None, np.eye(4), np.eye(4), label.shape, None)  # type: ignore[arg-type]
        labels[name], _ = predict_case(_TumourEverywhere(), case, params, batch_size=8)
    outside = np.ones(label.shape, dtype=bool)
    outside[HEAD] = False
    assert labels["original"][~outside].all() and not labels["original"][outside].any()
    np.testing.assert_array_equal(labels["normalized"], labels["original"])  # main: labels everywhere


def _write(root: Path, image: np.ndarray, label: np.ndarray) -> Path:
    for i in (1, 2):
        write_msd_case(root, f"BRATS_00{i}", image, label, axcodes="LPS")
    return root


def test_volume_store_of_a_normalized_dataset_equals_the_original(tmp_path: Path) -> None:
    from brainprep.builder import build_patches
    from brainprep.store import open_store

    image, label = headed_case()
    params = BuildParams(
        sampling=SamplingParams(patch_size=SMALL_PATCH, patches_per_case=2), store=StoreParams(kind="volumes")
    )
    stores = {}
    for name, volume in (("original", image), ("normalized", zscored(image))):
        data = _write(tmp_path / name, volume, label)
        stores[name] = tmp_path / f"{name}.zarr"
        build_patches(
            data, stores[name], params.replace(store=params.store.replace(dtype="float32")), workers=1
        )
    with open_store(stores["original"]) as original, open_store(stores["normalized"]) as normalized:
        assert normalized.crop(0) == original.crop(0)  # main: the whole volume
        assert original.cases[0]["background"] == [0.0] * 4
        np.testing.assert_allclose(normalized.cases[0]["background"], zscored(image)[:, 0, 0, 0], rtol=1e-6)
        for corner in ((0, 0, 0), (-3, 2, 5)):  # inside the crop, and leaving it
            want = original.read_window(0, corner, standardize="volume-nonzero")[0]
            got = normalized.read_window(0, corner, standardize="volume-nonzero")[0]
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_check_reports_a_background_that_is_not_zero(tmp_path: Path) -> None:
    from brainprep.check import CheckParams, check_dataset, format_table

    image, label = headed_case()
    write_msd_case(tmp_path / "data", "BRATS_001", image, label)
    write_msd_case(tmp_path / "data", "BRATS_002", zscored(image), label)
    report = check_dataset(tmp_path / "data", CheckParams(patch_size=SMALL_PATCH))
    assert [case.ok for case in report.cases] == [True, True]  # both build and predict
    assert report.cases[0].background == (0.0,) * 4
    (warning,) = report.warnings
    assert warning.startswith("case BRATS_002: background is not 0 (FLAIR -")
    assert warning in format_table(report)
