"""Spatial augmentation with context (brainnet.augment.context), the volume store's windows with context,
``brainnet sample --augment``, and the determinism of augmented batches across loaders and resumes."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from brainnet.augment import AugmentConfig, BatchAugment, augment_preset, context_margin
from brainnet.augment.brain_mask import OUTSIDE, mark_outside_brain_, mask_outside_brain_
from brainnet.augment.compose import centre
from brainnet.cli import main
from brainnet.data.dataset import augmented_inputs, standardize_batch
from brainnet.data.standardize import standardize_slices_torch
from brainnet.data.volume_sampler import VolumeDraws, VolumeWindowDataset, WindowSamplingParams
from brainnet.model import ModelConfig
from brainnet.sample import sample_training
from brainnet.train import TrainConfig, train
from brainnet.train.loop import training_augmenter, training_stream
from brainprep.builder import build_patches
from brainprep.params import BuildParams, SamplingParams, SplitParams, StandardizeParams, StoreParams
from brainprep.store import open_store
from brainprep.synth import SynthParams, write_synthetic_dataset

PATCH = (32, 32, 8)
TINY = ModelConfig(depth=2, base_filters=2)
#: rotation and scaling on every sample, nnU-Net's ranges (in-plane for the anisotropic 32x32x8 patch)
TURNED = augment_preset("nnunet", {"spatial.p_rotation": 1.0, "spatial.p_scaling": 1.0})
#: the nnunet preset with every transform firing often: a changed draw anywhere changes the batches
OFTEN = {
    "spatial.p_rotation": 0.7,
    "spatial.p_scaling": 0.7,
    **{f"{block}.p": 0.7 for block in ("noise", "blur", "brightness", "contrast", "low_resolution")},
    "gamma.p": 0.7,
}
EVERY = augment_preset("nnunet", OFTEN)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("context")
    data = write_synthetic_dataset(root / "data", SynthParams(n_cases=4, shape=(64, 64, 32), seed=7))
    sampling = SamplingParams(patch_size=PATCH, patches_per_case=2)
    split = SplitParams(val_fraction=0.25)
    volumes = BuildParams(sampling=sampling, store=StoreParams(kind="volumes"), split=split)
    build_patches(data, root / "v.zarr", volumes, workers=1)
    build_patches(data, root / "p.zarr", BuildParams(sampling=sampling, split=split), workers=1)
    return {"volume": root / "v.zarr", "patch": root / "p.zarr"}


def _config(augment: AugmentConfig, **changes) -> TrainConfig:
    base = TrainConfig(
        epochs=1,
        steps_per_epoch=2,
        batch_size=2,
        lr=1e-3,
        device="cpu",
        workers=0,
        val_split=None,
        augment=augment,
        volume_sampling=WindowSamplingParams(foreground_share=0.3, draws_per_epoch=5),
    )
    return base.replace(**changes)


# ---------------------------------------------------------------------------------------- the margin
def test_context_margin_by_hand():
    assert context_margin(augment_preset("flips").spatial, (8, 8, 8)) == (0, 0, 0)
    # scaling by 1.5 only: half-sides 4 become 6, two voxels beyond each face
    scaled = augment_preset("none", {"spatial.p_scaling": 1.0, "spatial.scaling": (1.5, 1.5)})
    assert context_margin(scaled.spatial, (9, 9, 9)) == (2, 2, 2)
    # an anisotropic 16x8x2 patch turned by exactly 90 degrees in-plane (or not at all): X reads Y's
    # half-side 3.5 (inside its own 7.5), Y reads X's 7.5, 4 beyond its 3.5; no context across the slices
    quarter = augment_preset("none", {"spatial.p_rotation": 0.5, "spatial.rotation_degrees_2d": (90, 90)})
    assert context_margin(quarter.spatial, (16, 8, 2)) == (0, 4, 0)
    # the course's patch under nnU-Net's ranges: a 45-degree turn at scale 1.4 reads 1.4 * 79.5 * sqrt(2);
    # the bound adds what the extent could grow between grid angles (0.25 degree at most: 0.7 voxel here)
    course = context_margin(augment_preset("nnunet").spatial, (160, 160, 16))
    exact = math.ceil(1.4 * 79.5 * math.sqrt(2) - 79.5)
    assert course[2] == 0 and course[0] == course[1] and exact <= course[0] <= exact + 1
    # every 3D orientation (+-180 degrees about each axis: a grid of 721**3 matrices, not searched) reads up
    # to the corner radius 4 * sqrt(3) = 6.93 from a 9-voxel cube's centre: 3 voxels beyond each face
    turned = augment_preset("none", {"spatial.p_rotation": 1.0, "spatial.rotation_degrees": (-180, 180)})
    assert context_margin(turned.spatial, (9, 9, 9)) == (3, 3, 3)


def test_a_rotation_range_the_patch_does_not_use_is_warned_about(caplog):
    caplog.set_level("WARNING", logger="brainnet.augment.compose")
    in_3d = augment_preset("nnunet", {"spatial.rotation_degrees": (-5, 5)})
    BatchAugment(in_3d, patch_size=(112, 160, 128))  # 3D: the range it sets is the one used
    assert not caplog.records
    BatchAugment(in_3d, patch_size=(160, 160, 16))  # the course's patch turns in-plane only
    assert "spatial.rotation_degrees is not used for the 160x160x16 patch" in caplog.text
    caplog.clear()
    in_plane = augment_preset("nnunet", {"spatial.rotation_degrees_2d": (-5, 5)})
    BatchAugment(in_plane, patch_size=(112, 160, 128))
    assert "spatial.rotation_degrees_2d is not used" in caplog.text


@pytest.mark.parametrize("shape", [(12, 10, 9), (16, 16, 4)])  # 3D, and in-plane only
def test_a_window_with_its_margin_holds_every_position_a_draw_reads(shape):
    zeros = TURNED.replace(spatial=TURNED.spatial.replace(padding="zeros"))
    config = augment_preset("none").replace(spatial=zeros.spatial)
    margin = context_margin(config.spatial, shape)
    window = tuple(s + 2 * m for s, m in zip(shape, margin, strict=True))
    image, label = torch.ones(16, 1, *window), torch.ones(16, *window, dtype=torch.uint8)
    out, labels = BatchAugment(config, patch_size=shape)(image, label, key=(0, 0, 3))
    assert out.shape[2:] == labels.shape[1:] == shape
    # trilinear of ones is one wherever no padding (0) is read; nearest reads no background label
    assert float(out.min()) > 1 - 1e-5 and bool((labels == 1).all())
    # without the context the same draws read padding
    bare, bare_labels = BatchAugment(config)(
        image[(..., *map(slice, shape))], label[(..., *map(slice, shape))], key=(0, 0, 3)
    )
    assert float(bare.min()) == 0.0 and bool((bare_labels == 0).any())


def test_a_sample_that_is_not_resampled_is_the_window_centre():
    config = augment_preset("none", {"spatial.p_rotation": 0.5})
    image, label = torch.randn(8, 2, 24, 24, 6), torch.randint(0, 4, (8, 24, 24, 6), dtype=torch.uint8)
    augment = BatchAugment(config, patch_size=(16, 16, 6))
    fired = augment.parameters(image, (0, 0, 1)).spatial
    assert 0 < int(fired.sum()) < 8
    out, labels = augment(image, label, key=(0, 0, 1))
    assert torch.equal(out[~fired], centre(image, (16, 16, 6))[~fired])
    assert torch.equal(labels[~fired], centre(label, (16, 16, 6))[~fired])
    # the draws are those of the patch itself (they depend on the patch's shape, not the window's)
    plain = BatchAugment(config).parameters(centre(image, (16, 16, 6)), (0, 0, 1))
    assert torch.equal(plain.matrices, augment.parameters(image, (0, 0, 1)).matrices)


def test_standardizing_with_a_statistics_region_by_hand():
    window = torch.zeros(1, 4, 4, 1)
    window[0, 1:3, 1:3, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean 2.5, std sqrt(1.25)
    out = standardize_slices_torch(window, region=(slice(1, 3), slice(1, 3)))
    assert torch.equal(out[:, 1:3, 1:3], standardize_slices_torch(window[:, 1:3, 1:3]))
    assert math.isclose(float(out[0, 0, 0, 0]), -2.5 / math.sqrt(1.25), rel_tol=1e-6)


# ------------------------------------------------------------------------------------ the volume store
def _windows(store, draws: VolumeDraws, context, items) -> dict:
    return VolumeWindowDataset(store, draws, context).read_batch(items)


@pytest.mark.parametrize("method", ["patch-slice", "volume-nonzero"])
def test_a_window_with_context_has_the_window_at_its_centre(stores, method):
    params = WindowSamplingParams(foreground_share=0.5, standardize=method)
    items = [(0, p) for p in range(6)]
    with open_store(stores["volume"]) as store:
        draws = VolumeDraws(store, "train", params, seed=2)
        plain = _windows(store, draws, (0, 0, 0), items)
        wide = _windows(store, draws, (16, 16, 4), items)
        outside = [max(0, 16 - int(draws.draw(*item).corner[0])) for item in items]  # rows before the crop
    assert wide["image"].shape == (6, 4, 64, 64, 16) and wide["label"].shape == (6, 64, 64, 16)
    assert torch.equal(centre(wide["image"], PATCH), plain["image"])  # raw, as read without context
    assert torch.equal(centre(wide["label"], PATCH), plain["label"])
    standardized = standardize_batch(wide["image"], wide)
    assert torch.equal(centre(standardized, PATCH), standardize_batch(plain["image"], plain))
    # voxels outside the crop read 0, as in the source
    assert any(outside) and all(
        bool((w[:, :n] == 0).all()) for w, n in zip(wide["image"], outside, strict=True)
    )


def _augmented(store_path: Path, config: TrainConfig, count: int) -> dict:
    with open_store(store_path) as store:
        return sample_training(store, count, config)


def test_the_spatial_transform_reads_no_padding_where_the_scan_has_data(stores):
    config = _config(TURNED.replace(spatial=TURNED.spatial.replace(padding="zeros")), batch_size=4)
    with open_store(stores["volume"]) as store:
        stream = training_stream(store, config)
        batch = stream.next()
        margin = stream.dataset.context
        assert margin == context_margin(config.augment.spatial, PATCH) and margin[2] == 0
        augment = BatchAugment(config.augment, patch_size=PATCH)
        # the same draws on windows 8 voxels wider still: equal, so no position read lay outside the window
        items = [(0, int(p)) for p in batch["slot"]]
        wider = _windows(store, stream.dataset.draws, (margin[0] + 8, margin[1] + 8, 0), items)
    image, label = augmented_inputs(batch, "cpu", functools.partial(augment, key=(0, 0, 0)))
    expected, expected_label = augmented_inputs(wider, "cpu", functools.partial(augment, key=(0, 0, 0)))
    torch.testing.assert_close(image, expected, atol=1e-4, rtol=1e-4)
    assert float((label != expected_label).float().mean()) < 1e-3  # nearest: a tie may round the other way
    # reading the patch alone, the same draws pull the padding in
    alone = {**batch, "image": centre(batch["image"], PATCH), "label": centre(batch["label"], PATCH)}
    del alone["context"]
    bare, _ = augmented_inputs(alone, "cpu", functools.partial(BatchAugment(config.augment), key=(0, 0, 0)))
    assert float((bare - expected).abs().max()) > 1.0


def test_without_a_spatial_transform_the_windows_are_read_as_before(stores):
    flips = _config(augment_preset("flips"))
    no_spatial = _config(augment_preset("nnunet", {"spatial.p_rotation": 0.0, "spatial.p_scaling": 0.0}))
    none = _config(augment_preset("none"))
    batches = {}
    with open_store(stores["volume"]) as store:
        for name, config in {"flips": flips, "no_spatial": no_spatial, "none": none}.items():
            stream = training_stream(store, config)
            assert stream.dataset.context == (0, 0, 0)
            batches[name] = [stream.next() for _ in range(3)]
        drawn = batches["none"][0]
        first = store.read_window(int(drawn["case"][0]), drawn["corner"][0].numpy())
    np.testing.assert_array_equal(drawn["image"][0].numpy(), first[0])  # raw: standardized on the device
    for name in ("flips", "no_spatial"):
        for a, b in zip(batches[name], batches["none"], strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------- the brain mask (volume-nonzero)
def test_the_brain_mask_by_hand():
    raw = torch.ones(1, 2, 3, 1, 1, dtype=torch.float16)
    raw[0, :, 0] = 0  # voxel 0 outside the brain (0 in every channel)
    raw[0, 0, 1] = 0  # voxel 1 0 in one channel only: brain
    raw[0, :, 2] = 0  # voxel 2 outside too, but tumour: kept (nnU-Net marks background only)
    label = torch.tensor([0, 0, 2], dtype=torch.uint8).view(1, 3, 1, 1)
    marked = mark_outside_brain_(label.clone(), raw)
    assert marked.flatten().tolist() == [OUTSIDE, 0, 2]
    image = torch.full((1, 2, 3, 1, 1), 0.5)
    image, unmarked = mask_outside_brain_(image, marked)
    assert unmarked.flatten().tolist() == [0, 0, 2]
    assert image[0, :, 0].abs().sum() == 0 and bool((image[0, :, 1:] == 0.5).all())


def _masked_and_plain(augmenter: BatchAugment, batch: dict) -> tuple:
    """The batch augmented by ``augmenter`` as training does, the same draws without the mask, and where the
    mask's marker went (the voxels outside the brain, moved with the labels)."""
    key = (0, 0, 5)
    image, label = augmented_inputs(batch, "cpu", functools.partial(augmenter, key=key))
    plain = BatchAugment(augmenter.config, augmenter.patch_size)
    standardized = augmented_inputs(batch, "cpu")[0]
    plain_image, plain_label = plain(standardized.clone(), batch["label"].clone(), key=key)
    marked = mark_outside_brain_(batch["label"].clone(), standardized)
    _, moved = plain(standardized.clone(), marked, key=key)
    return (image, label), (plain_image, plain_label), moved == OUTSIDE


@pytest.mark.parametrize("method", ["volume-nonzero", "patch-slice"])
def test_augmented_windows_keep_a_zero_background_where_standardized_to_zero(stores, method):
    """nnU-Net's MaskImageTransform: noise and the spatial transform on every sample, and the voxels outside
    the brain (the label that moves with them) are 0 again, volume-nonzero only; nothing else changes."""
    augment = TURNED.replace(noise=TURNED.noise.replace(p=1.0))
    config = _config(augment, volume_sampling=WindowSamplingParams(foreground_share=0.3, standardize=method))
    items = [(0, p) for p in range(4)]
    with open_store(stores["volume"]) as store:
        augmenter = training_augmenter(store, config)
        margin = context_margin(augment.spatial, PATCH)
        batch = _windows(store, VolumeDraws(store, "train", config.volume_sampling, seed=3), margin, items)
    assert augmenter.mask_background == (method == "volume-nonzero")
    (image, label), (plain_image, plain_label), outside = _masked_and_plain(augmenter, batch)
    if method == "patch-slice":  # a background standardized with its slice: left as augmented
        assert torch.equal(image, plain_image) and torch.equal(label, plain_label)
        return
    assert 0.05 < float(outside.float().mean()) < 0.95  # windows reach past the brain and its crop
    assert bool((plain_label[outside] == 0).all()) and torch.equal(label, plain_label)
    assert bool((plain_image.movedim(1, -1)[outside] != 0).any())  # the noise had moved them
    assert torch.equal(image, torch.where(outside.unsqueeze(1), 0.0, plain_image))
    assert int((label == OUTSIDE).sum()) == 0


def test_a_patch_store_built_volume_nonzero_keeps_its_zero_background(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", SynthParams(n_cases=2, shape=(48, 48, 24), seed=3))
    sampling = SamplingParams(patch_size=(32, 32, 8), patches_per_case=3, background_threshold=1.0)
    params = BuildParams(sampling=sampling, standardize=StandardizeParams(method="volume-nonzero"))
    build_patches(data, tmp_path / "p.zarr", params, workers=1)
    augment = augment_preset("nnunet", {"noise.p": 1.0, "spatial.p_rotation": 1.0})
    with open_store(tmp_path / "p.zarr") as store:
        augmenter = training_augmenter(store, _config(augment))
        batch = training_stream(store, _config(augment, batch_size=4)).next()
    assert augmenter.mask_background
    (image, label), (plain_image, _), outside = _masked_and_plain(augmenter, batch)
    assert float(outside.float().mean()) > 0.01 and bool((plain_image.movedim(1, -1)[outside] != 0).any())
    assert torch.equal(image, torch.where(outside.unsqueeze(1), 0.0, plain_image))
    assert int((label == OUTSIDE).sum()) == 0


# ------------------------------------------------------------------------------- brainnet sample --augment
@pytest.mark.parametrize("kind", ["volume", "patch"])
def test_sample_augment_shows_what_training_trains_on(stores, kind, tmp_path, monkeypatch):
    import brainnet.train.loop as loop

    seen = []
    real = loop.to_training_batch

    def record(*args, **kwargs):
        image, target = real(*args, **kwargs)
        seen.append((image.clone(), target.clone()))
        return image, target

    monkeypatch.setattr(loop, "to_training_batch", record)
    # the sampling options `brainnet sample` leaves at `brainnet train`'s defaults
    config = _config(EVERY, steps_per_epoch=3, seed=3, volume_sampling=WindowSamplingParams())
    train(stores[kind], tmp_path / "run", config, TINY)
    out = tmp_path / "s.npz"
    args = ["sample", "--store", str(stores[kind]), "--count", "5", "--seed", "3", "--batch-size", "2"]
    args += ["--augment", "nnunet", "--out", str(out), "--png", str(tmp_path / "s.png")]
    args += [f"--augment-set={key}={value}" for key, value in OFTEN.items()]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    got = np.load(out)
    assert AugmentConfig.from_dict(json.loads(str(got["augment"]))) == EVERY
    trained = torch.cat([image for image, _ in seen])[:5]
    labels = torch.cat([(t * torch.arange(1, 4).view(1, 3, 1, 1, 1)).sum(1) for _, t in seen])[:5]
    np.testing.assert_array_equal(got["image"], trained.numpy())  # float32, as the step trains on it
    np.testing.assert_array_equal(got["label"], labels.numpy())
    np.testing.assert_array_equal(got["step"], [0, 0, 1, 1, 2])
    assert not np.array_equal(
        got["image"], _augmented(stores[kind], config.replace(augment=AugmentConfig()), 5)["image"]
    )


def test_sample_refuses_augment_settings_without_augment(stores, tmp_path):
    base = ["sample", "--store", str(stores["patch"]), "--out", str(tmp_path / "s.npz")]
    result = CliRunner().invoke(main, [*base, "--augment-set", "noise.p=1"])
    assert result.exit_code != 0 and "needs --augment" in result.output
    result = CliRunner().invoke(main, [*base, "--augment", "nnunet", "--split", "val"])
    assert result.exit_code != 0 and "--split train" in result.output


# -------------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("kind", ["volume", "patch"])
def test_augmented_batches_are_the_same_for_any_worker_count_and_backend(stores, kind):
    config = _config(EVERY, batch_size=2)
    reference = _augmented(stores[kind], config, 6)
    loaders = [(1, "processes"), (2, "threads")]
    if kind == "volume":  # 2 processes on a patch store: test_train.py's test_worker_processes_...
        loaders.append((2, "processes"))
    for workers, backend in loaders:
        got = _augmented(stores[kind], config.replace(workers=workers, loader=backend), 6)
        for key in ("image", "label", "case", "corner"):
            np.testing.assert_array_equal(got[key], reference[key], err_msg=f"{key}: {workers} {backend}")


def test_training_with_context_resumes_bit_for_bit_and_trains_every_preset(stores, tmp_path):
    config = _config(EVERY, epochs=2, steps_per_epoch=2, deterministic=True)
    straight = train(stores["volume"], tmp_path / "straight", config, TINY)
    train(stores["volume"], tmp_path / "resumed", config.replace(epochs=1), TINY)
    second = train(stores["volume"], tmp_path / "resumed", config, TINY, resume=True)
    for name, tensor in second.model.state_dict().items():
        assert torch.equal(tensor, straight.model.state_dict()[name]), name
    for preset in ("flips", "nnunet"):  # `brainnet train` end to end on a volume store (none: elsewhere)
        args = ["train", "--store", str(stores["volume"]), "--out", str(tmp_path / preset), "--epochs", "1"]
        args += ["--steps-per-epoch", "1", "--batch-size", "2", "--base-filters", "2", "--depth", "2"]
        args += [
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
            "--draws-per-epoch",
            "4",
            "--val-split",
            "none",
        ]
        args += ["--augment", preset]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
