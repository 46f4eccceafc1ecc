"""Fresh windows from a volume store (brainnet.data.volume_sampler): pure draws, shares, rules, streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brainnet.data.dataset import to_training_batch
from brainnet.data.volume_sampler import (
    VolumeDraws,
    VolumeWindowDataset,
    WindowSamplingParams,
    WindowStreamSampler,
)
from brainprep.builder import build_patches
from brainprep.errors import ConfigError
from brainprep.params import BuildParams, SamplingParams, SplitParams, StoreParams
from brainprep.store import open_store
from brainprep.store import volume_schema as vs
from brainprep.synth import SynthParams, write_synthetic_dataset

PATCH = (32, 32, 8)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sampler")
    data = write_synthetic_dataset(root / "data", SynthParams(n_cases=4, shape=(64, 64, 32), seed=7))
    params = BuildParams(
        sampling=SamplingParams(patch_size=PATCH),
        store=StoreParams(kind="volumes"),
        split=SplitParams(val_fraction=0.25),
    )
    build_patches(data, root / "v.zarr", params, workers=1)
    return root / "v.zarr"


def test_draws_depend_on_seed_epoch_and_position_only_and_follow_their_rules(store_path: Path) -> None:
    params = WindowSamplingParams(tumour_share=0.4, foreground_share=0.3, draws_per_epoch=600)
    with open_store(store_path) as store:
        draws = VolumeDraws(store, None, params, seed=5)
        again = VolumeDraws(store, None, params, seed=5)
        tables = {int(i): store.sampling_tables(int(i)) for i in store.case_indices()}
        crops = {int(i): np.array(store.crop(int(i)).shape) for i in store.case_indices()}
        offsets = {int(i): np.array(store.crop(int(i)).offset) for i in store.case_indices()}
        sources = {int(i): np.array(store.cases[int(i)]["source_shape"]) for i in store.case_indices()}
    assert len(draws.tumour_cases) == 3  # BRATS_004's tumour is too small for any corner
    stream = [draws.draw(2, p) for p in range(600)]
    backwards = [again.draw(2, p) for p in reversed(range(600))][::-1]
    assert all(
        a.case == b.case and (a.corner == b.corner).all() for a, b in zip(stream, backwards, strict=True)
    )
    assert any((a.corner != draws.draw(3, p).corner).any() for p, a in enumerate(stream[:10]))
    kinds = [d.kind for d in stream]
    # 600 draws: shares 0.4 / 0.3 / 0.3 within a few binomial standard deviations (~0.02)
    assert abs(kinds.count("tumour") / 600 - 0.4) < 0.07 and abs(kinds.count("foreground") / 600 - 0.3) < 0.07
    for d in stream:
        if d.kind == "tumour":  # any corner of the course's set: on the source grid, maybe past the crop
            assert (tables[d.case][vs.TUMOUR_CORNERS] == d.corner).all(axis=1).any()
            on_source = d.corner + offsets[d.case]
            assert ((on_source >= 0) & (on_source <= sources[d.case] - PATCH)).all()
            continue
        assert ((d.corner >= 0) & (d.corner <= crops[d.case] - PATCH)).all()
        if d.kind == "foreground":  # a stored tumour voxel lies inside the window
            voxels = tables[d.case][vs.CLASS_LOCATIONS][:, 1:]
            assert ((voxels >= d.corner) & (voxels < d.corner + PATCH)).all(axis=1).any()
    with pytest.raises(ConfigError, match="sum <= 1"):
        WindowSamplingParams(tumour_share=0.8, foreground_share=0.3)
    with pytest.raises(
        ConfigError, match="standardize must be one of"
    ):  # a KeyError at the first batch before
        WindowSamplingParams(standardize="patch_slice")


def test_ranks_are_disjoint_and_a_resumed_epoch_continues_the_stream() -> None:
    whole = list(WindowStreamSampler(12))
    ranks = [list(WindowStreamSampler(12, rank=r, world_size=3)) for r in range(3)]
    assert sorted(p for rank in ranks for p in rank) == whole and not set(ranks[0]) & set(ranks[1])
    sampler = WindowStreamSampler(12, rank=1, world_size=3)
    sampler.set_epoch(4, start=2)
    assert list(sampler) == [(4, 7), (4, 10)] and len(sampler) == 2
    restored = WindowStreamSampler(12, rank=1, world_size=3)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == list(sampler)


def test_training_ranks_get_equal_lengths_when_the_world_does_not_divide_the_epoch() -> None:
    """10 draws on 3 ranks: training pads to 12 (every rank 4 steps' worth: DDP's collectives match, and
    the one sampler state a checkpoint keeps is every rank's); validation reads the 10 exactly."""
    padded = [list(WindowStreamSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert [len(rank) for rank in padded] == [4, 4, 4]
    assert sorted(p for rank in padded for _, p in rank) == list(range(12))  # 10 and 11: fresh draws
    uneven = [list(WindowStreamSampler(10, rank=r, world_size=3, remainder="uneven")) for r in range(3)]
    assert sorted(p for rank in uneven for _, p in rank) == list(range(10))
    assert list(WindowStreamSampler(10)) == [(0, p) for p in range(10)]  # one process: unchanged
    with pytest.raises(ConfigError, match="remainder"):
        WindowStreamSampler(10, remainder="drop")


def test_a_live_iterator_keeps_the_epoch_it_started_with() -> None:
    sampler = WindowStreamSampler(4)
    live = iter(sampler)
    assert next(live) == (0, 0)
    sampler.set_epoch(7)  # the loop moves to the next epoch while a prefetching iterator still runs
    assert list(live) == [(0, 1), (0, 2), (0, 3)]
    assert next(iter(sampler)) == (7, 0)


class _WithoutTumour:
    """A volume store whose sampling tables hold no tumour corner and no tumour voxel."""

    def __init__(self, store) -> None:
        self.store = store

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def sampling_tables(self, index: int) -> dict[str, np.ndarray]:
        return {name: table[:0] for name, table in self.store.sampling_tables(index).items()}


def test_a_tumour_share_without_passing_corners_is_drawn_as_foreground_and_said_once(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The val case's tumour is too small for any corner to pass the course's threshold: validation (all
    tumour-constrained) and ``--tumour-share 1`` draw class-balanced foreground windows there, with one
    warning naming the store, the split and the threshold; training's split draws tumour windows."""
    from brainnet.train.loop import volume_draws

    course = WindowSamplingParams(tumour_share=1.0, foreground_share=0.0, draws_per_epoch=40)
    with open_store(store_path) as store:
        assert [store.cases[i]["case_id"] for i in store.case_indices("val")] == ["BRATS_004"]
        with caplog.at_level("WARNING", logger="brainnet.data.volume_sampler"):
            validation = volume_draws(store, WindowSamplingParams(), 0, "val", train=False)
            trained = VolumeDraws(store, "val", course, seed=1)
        assert len(caplog.records) == 2  # one per VolumeDraws, none per draw
        message = caplog.records[0].getMessage()
        for part in (
            f"no case of {store.location} (split 'val')",
            "has a 32x32x8 corner holding more than 5% tumour (background_threshold 0.95)",
            "its tumour share 1.0 is drawn as foreground windows",
        ):
            assert part in message, message
        for draws in (validation, trained):
            assert draws.tumour_rule == "foreground"
            assert {draws.draw(0, p).kind for p in range(40)} == {"foreground"}
        caplog.clear()
        with caplog.at_level("WARNING", logger="brainnet.data.volume_sampler"):
            train = VolumeDraws(store, "train", course, seed=1)
            share = VolumeDraws(store, "val", WindowSamplingParams(), seed=1)  # no tumour share: no rule
        assert not caplog.records and train.tumour_rule == "tumour"
        assert {train.draw(0, p).kind for p in range(40)} == {"tumour"}
        assert {share.draw(0, p).kind for p in range(40)} == {"foreground", "brain"}
        # no tumour voxel at all: nothing of a tumour share could be drawn
        bare = _WithoutTumour(store)
        with pytest.raises(ConfigError, match=r"tumour_share 0.5 .*\(split 'val'\).* or any tumour voxel"):
            VolumeDraws(bare, "val", WindowSamplingParams(tumour_share=0.5), seed=1)
        brain = VolumeDraws(bare, "val", WindowSamplingParams(foreground_share=1.0), seed=1)
        assert {brain.draw(0, p).kind for p in range(20)} == {"brain"}  # a case without tumour voxels


def test_a_negative_seed_is_refused_in_one_line(
    store_path: Path, patch_store_path: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from brainnet.cli import main

    with open_store(store_path) as store, pytest.raises(ConfigError, match="seed must be >= 0, got -1"):
        VolumeDraws(store, "train", WindowSamplingParams(), seed=-1)
    for path in (store_path, patch_store_path):  # a numpy traceback from the volume store before
        args = [
            "sample",
            "--store",
            str(path),
            "--count",
            "2",
            "--seed",
            "-1",
            "--out",
            str(tmp_path / "s.npz"),
        ]
        line = _one_error_line(CliRunner().invoke(main, args))
        assert "Invalid value for '--seed': -1 is not in the range x>=0" in line
    assert not (tmp_path / "s.npz").exists()


def test_loader_batches_are_the_same_for_any_worker_count(store_path: Path) -> None:
    params = WindowSamplingParams(foreground_share=0.3, draws_per_epoch=8)
    with open_store(store_path) as store:
        dataset = VolumeWindowDataset(store, VolumeDraws(store, "train", params, seed=1))
        first = dataset[(0, 3)]
        raw, label = store.read_window(int(first["case"]), first["corner"].numpy())
        window, _ = store.read_window(int(first["case"]), first["corner"].numpy(), standardize="patch-slice")
    # the loader reads raw windows; the training loop standardizes them on its device as read_window does
    np.testing.assert_array_equal(first["image"].numpy(), raw)
    np.testing.assert_array_equal(first["label"].numpy(), label)
    batch = torch.utils.data.default_collate([first])
    image, _ = to_training_batch(batch)
    assert image.is_contiguous()
    np.testing.assert_allclose(image[0].numpy(), window, rtol=2e-5, atol=2e-5)  # float32 vs float64
    from brainnet.data.loader import make_loader

    batches = {}
    for workers, backend in ((0, "processes"), (2, "processes"), (2, "threads")):
        sampler = WindowStreamSampler(8)
        sampler.set_epoch(1)
        loader = make_loader(dataset, sampler, batch_size=4, workers=workers, backend=backend)
        batches[workers, backend] = [(b["image"].numpy().tobytes(), b["slot"].tolist()) for b in loader]
    assert batches[0, "processes"] == batches[2, "processes"] == batches[2, "threads"]
    assert [slots for _, slots in batches[0, "processes"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_getitems_is_the_default_collate_of_the_items(store_path: Path) -> None:
    """The DataLoader's one-read batch (passed through brainnet.data.collate) holds what torch's
    default_collate of the items would: every key, value, dtype and shape."""
    from brainnet.data.collate import CollatedBatch, collate

    params = WindowSamplingParams(foreground_share=0.5, draws_per_epoch=8)
    with open_store(store_path) as store:
        dataset = VolumeWindowDataset(store, VolumeDraws(store, "train", params, seed=2))
        items = [(0, 5), (0, 1), (1, 2)]
        read = dataset.__getitems__(items)
        assert isinstance(read, CollatedBatch)
        batch, expected = collate(read), torch.utils.data.default_collate([dataset[i] for i in items])
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        assert batch[key].dtype == value.dtype and batch[key].shape == value.shape, key
        assert torch.equal(batch[key], value), key
    assert not batch["image"].is_shared()  # shared memory only in a worker process


def test_training_on_a_volume_store_resumes_the_stream_bit_for_bit(store_path: Path, tmp_path: Path) -> None:
    from brainnet.model import ModelConfig
    from brainnet.train import TrainConfig, train

    tiny = ModelConfig(depth=2, base_filters=2)
    # 2 steps of up to 2 windows per epoch over passes of 5 draws: the resumed run starts mid-pass
    config = TrainConfig(
        epochs=2,
        steps_per_epoch=2,
        batch_size=2,
        lr=1e-3,
        device="cpu",
        workers=0,
        deterministic=True,
        volume_sampling=WindowSamplingParams(foreground_share=0.3, draws_per_epoch=5),
    )
    straight = train(store_path, tmp_path / "straight", config, tiny)
    first = train(store_path, tmp_path / "resumed", config.replace(epochs=1), tiny)
    second = train(store_path, tmp_path / "resumed", config, tiny, resume=True)
    np.testing.assert_array_equal(np.concatenate([first.slots_seen, second.slots_seen]), straight.slots_seen)
    # batches [0, 1], [2, 3] | [4] (a pass ends with a short batch, as for patches), [0, 1] of the next pass
    np.testing.assert_array_equal(straight.slots_seen, [0, 1, 2, 3, 4, 0, 1])
    for name, tensor in second.model.state_dict().items():
        assert torch.equal(tensor, straight.model.state_dict()[name]), name
    # validated: the val case (BRATS_004) has no corner passing the threshold, so validation's all-tumour
    # share is drawn as class-balanced foreground windows (VolumeDraws warns)
    assert "val_dice_labelmap" in straight.history[-1]


def test_sample_follows_the_training_stream_past_an_epoch_and_the_val_windows(store_path: Path) -> None:
    """7 samples of 4-draw epochs are what training reads over its first two sampler epochs; ``val`` gives
    the windows validation scores (its own tumour-constrained stream), and no more of them than it reads:
    case for case, corner for corner and image for image (the float32 the training step standardizes)."""
    from brainnet.data.dataset import augmented_inputs
    from brainnet.sample import sample_store
    from brainnet.train import TrainConfig
    from brainnet.train.distributed import DistributedContext
    from brainnet.train.loop import _val_loader, training_stream

    params = WindowSamplingParams(foreground_share=0.3, draws_per_epoch=4)
    config = TrainConfig(batch_size=1, seed=3, device="cpu", workers=0, volume_sampling=params)
    context = DistributedContext(0, 1, 0, torch.device("cpu"), owns_group=False)
    with open_store(store_path) as store:
        stream = training_stream(store, config)
        for split, count, batches in (
            ("train", 7, [stream.next() for _ in range(7)]),
            ("val", 4, list(_val_loader(store, config, context))),
        ):
            got = sample_store(store, count, 3, split, params)
            read = [(int(c), x) for b in batches for c, x in zip(b["case"], b["corner"].numpy(), strict=True)]
            assert len(read) == count and got["case_index"].tolist() == [c for c, _ in read]
            assert got["case"].tolist() == [store.cases[c]["case_id"] for c, _ in read]
            for corner, (case, crop_corner) in zip(got["corner"], read, strict=True):
                np.testing.assert_array_equal(corner, store.corner_on_source(case, crop_corner))
            images = torch.cat([augmented_inputs(b)[0] for b in batches]).numpy()
            assert got["image"].dtype == np.float32 and np.array_equal(got["image"], images)
        with pytest.raises(ConfigError, match="validation reads 4 windows"):
            sample_store(store, 5, 3, "val", params)


@pytest.fixture(scope="module")
def patch_store_path(store_path: Path) -> Path:
    """A patch store of the volume store's cases: 3 train cases and 1 val case (a small tumour: the
    threshold lets it in), 2 patches each."""
    sampling = SamplingParams(patch_size=PATCH, patches_per_case=2, background_threshold=0.999)
    params = BuildParams(sampling=sampling, split=SplitParams(val_fraction=0.25))
    build_patches(store_path.parent / "data", store_path.parent / "p.zarr", params, workers=1)
    return store_path.parent / "p.zarr"


def test_sample_of_a_patch_store_is_what_training_and_validation_read_in_their_order(
    patch_store_path: Path,
) -> None:
    """9 samples of a 6-patch train split are training's first pass then 3 of its second (shuffled
    anew), patch for patch; ``val`` gives validation's patches in its order, and no more than it has."""
    from brainnet.sample import sample_store
    from brainnet.train import TrainConfig
    from brainnet.train.distributed import DistributedContext
    from brainnet.train.loop import _val_loader, training_stream

    config = TrainConfig(batch_size=4, seed=3, device="cpu", workers=0)
    context = DistributedContext(0, 1, 0, torch.device("cpu"), owns_group=False)
    with open_store(patch_store_path) as store:
        stream = training_stream(store, config)
        trained = np.concatenate([stream.next()["slot"].numpy() for _ in range(3)])  # 4 + 2 | 4
        validated = np.concatenate([b["slot"].numpy() for b in _val_loader(store, config, context)])
        assert len(trained) == 10 and len(validated) == 2
        assert sorted(trained[:6]) == sorted(store.patch_indices("train"))  # one pass: each patch once
        assert trained[:6].tolist() != trained[6:].tolist() + trained[:2].tolist()  # reshuffled
        for split, count, slots in (("train", 9, trained[:9]), ("val", 2, validated)):
            got = sample_store(store, count, 3, split)
            images, labels = store.read_patches(slots)
            assert images.dtype == np.float16 and got["image"].dtype == np.float32
            np.testing.assert_array_equal(got["image"], images.astype(np.float32))  # exact: the stored patch
            np.testing.assert_array_equal(got["label"], labels)
            np.testing.assert_array_equal(got["case_index"], store.table.case[slots])
            assert got["case"].tolist() == [store.cases[c]["case_id"] for c in store.table.case[slots]]
            np.testing.assert_array_equal(got["corner"], store.table.corner[slots])
            assert got["tumour_fraction"].dtype == np.float32
            np.testing.assert_array_equal(got["tumour_fraction"], store.table.tumour_fraction[slots])
            assert (got["tumour_fraction"] > 0).all()
        with pytest.raises(ConfigError, match="validation reads 2 patches"):
            sample_store(store, 3, 3, "val")


@pytest.mark.parametrize("kind", ["volume", "patch"])
def test_sample_is_bit_for_bit_what_train_gives_the_training_step(
    kind: str, store_path: Path, patch_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``brainnet train``'s first 10 patches, as to_training_batch expands them (5-draw epochs: the second
    epoch's windows included), equal ``sample_store``'s with the same seed: image (float32, bit for bit),
    label, case and corner."""
    import brainnet.train.loop as loop
    from brainnet.model import ModelConfig
    from brainnet.sample import sample_store
    from brainnet.train import TrainConfig, train

    fed: list[dict] = []
    real = loop.to_training_batch

    def spy(batch, *args, **kwargs):
        image, target = real(batch, *args, **kwargs)
        fed.append({"image": image.clone(), "target": target.clone(), "batch": dict(batch)})
        return image, target

    monkeypatch.setattr(loop, "to_training_batch", spy)
    params = WindowSamplingParams(draws_per_epoch=5)  # brainnet train's shares
    path = store_path if kind == "volume" else patch_store_path
    config = TrainConfig(
        epochs=1, steps_per_epoch=4, device="cpu", val_split=None, seed=5, volume_sampling=params
    )
    train(path, tmp_path / "run", config, ModelConfig(depth=2, base_filters=2))
    image = torch.cat([f["image"] for f in fed]).numpy()
    target = torch.cat([f["target"] for f in fed])
    label = (target * torch.arange(1, 4).view(1, 3, 1, 1, 1)).sum(1).to(torch.uint8).numpy()
    assert len(image) == (10 if kind == "volume" else 12)  # batches of 3: 5 draws a pass (3 + 2), 6 patches
    with open_store(path) as store:
        got = sample_store(store, 10, 5, "train", params)
        if kind == "volume":
            cases = torch.cat([f["batch"]["case"] for f in fed]).numpy()
            corners = [
                store.corner_on_source(c, x)
                for c, x in zip(cases, torch.cat([f["batch"]["corner"] for f in fed]).numpy(), strict=True)
            ]
        else:
            slots = torch.cat([f["batch"]["slot"] for f in fed]).numpy()
            cases, corners = store.table.case[slots], store.table.corner[slots]
        ids = [store.cases[int(c)]["case_id"] for c in cases[:10]]
    assert got["image"].dtype == np.float32 and got["image"].tobytes() == image[:10].tobytes()
    np.testing.assert_array_equal(got["label"], label[:10])
    np.testing.assert_array_equal(got["case_index"], cases[:10])
    np.testing.assert_array_equal(got["corner"], np.stack(corners)[:10])
    assert got["case"].tolist() == ids and all(i.startswith("BRATS_") for i in ids)


def test_sample_tumour_fraction_is_the_windows_and_the_corner_tables(store_path: Path) -> None:
    """A volume store's ``tumour_fraction`` is counted on the window read; a tumour window's equals its
    corner table's (``tumour_voxels`` / window voxels), also for a window reaching past the crop."""
    from brainnet.sample import sample_store

    params = WindowSamplingParams(tumour_share=0.5, foreground_share=0.3, draws_per_epoch=40)
    with open_store(store_path) as store:
        got = sample_store(store, 40, 2, "train", params)
        volume = int(np.prod(PATCH))
        assert got["tumour_fraction"].dtype == np.float32
        for label, fraction in zip(got["label"], got["tumour_fraction"], strict=True):
            assert fraction == np.float32(np.count_nonzero(label) / volume)
        tumour = np.flatnonzero(got["kind"] == "tumour")
        assert len(tumour) > 10 and (got["tumour_fraction"][tumour] > 0.05).all()
        past = 0
        for i in tumour:
            case = int(got["case_index"][i])
            crop = store.crop(case)
            corner = got["corner"][i] - np.asarray(crop.offset)  # back into the crop's coordinates
            tables = store.sampling_tables(case)
            row = np.flatnonzero((tables[vs.TUMOUR_CORNERS] == corner).all(axis=1))[0]
            assert got["tumour_fraction"][i] == np.float32(tables[vs.TUMOUR_VOXELS][row] / volume)
            past += bool((corner < 0).any() or (corner + PATCH > np.asarray(crop.shape)).any())
    assert {"brain", "foreground"} <= set(got["kind"]) and past > 0


def test_sample_augment_gives_the_same_keys_as_the_windows_before_augmentation(store_path: Path) -> None:
    """``sample_training`` with a spatial augmentation reads windows with context: its ``case``,
    ``corner``, ``kind`` and ``tumour_fraction`` are those of the windows themselves (``sample_store``'s)."""
    from brainnet.augment import augment_preset
    from brainnet.sample import sample_store, sample_training
    from brainnet.train import TrainConfig

    params = WindowSamplingParams(tumour_share=0.3, foreground_share=0.3, draws_per_epoch=6)
    config = TrainConfig(seed=4, device="cpu", volume_sampling=params, augment=augment_preset("nnunet"))
    with open_store(store_path) as store:
        augmented = sample_training(store, 8, config)
        plain = sample_store(store, 8, 4, "train", params)
    for key in ("case", "case_index", "corner", "kind", "tumour_fraction"):
        np.testing.assert_array_equal(augmented[key], plain[key], err_msg=key)
    assert augmented["step"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_brainnet_sample_writes_what_training_reads_from_both_kinds(
    store_path: Path, patch_store_path: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from brainnet.cli import main

    runner = CliRunner()
    out, png = tmp_path / "v.npz", tmp_path / "v.png"
    result = runner.invoke(
        main, ["sample", "--store", str(store_path), "--count", "5", "--out", str(out), "--png", str(png)]
    )
    assert result.exit_code == 0, result.output
    got = np.load(out)
    with open_store(store_path) as store:
        draws = VolumeDraws(store, "train", WindowSamplingParams(draws_per_epoch=5), seed=0)
        ids = [c["case_id"] for c in store.cases]
        for i in range(5):
            drawn = draws.draw(0, i)
            assert int(got["case_index"][i]) == drawn.case and got["kind"][i] == drawn.kind
            assert got["case"][i] == ids[drawn.case]
            np.testing.assert_array_equal(got["corner"][i], store.corner_on_source(drawn.case, drawn.corner))
            window, label = store.read_window(drawn.case, drawn.corner, standardize="patch-slice")
            # training's float32 torch standardization against read_window's float64 numpy one
            np.testing.assert_allclose(got["image"][i], window, rtol=2e-5, atol=2e-5)
            np.testing.assert_array_equal(got["label"][i], label)
            assert got["tumour_fraction"][i] == np.float32(np.count_nonzero(label) / label.size)
    assert got["image"].dtype == np.float32 and got["tumour_fraction"].dtype == np.float32
    from PIL import Image

    assert Image.open(png).size == (8 * PATCH[0], PATCH[1])  # one row of 8 axial tiles (5 and 3 blank)
    from brainnet.sample import sample_store

    result = runner.invoke(
        main, ["sample", "--store", str(patch_store_path), "--count", "3", "--out", str(tmp_path / "p.npz")]
    )
    assert result.exit_code == 0, result.output
    got = np.load(tmp_path / "p.npz")
    with open_store(patch_store_path) as store:
        for key, value in sample_store(store, 3, 0, "train").items():  # training's first 3, in its order
            np.testing.assert_array_equal(got[key], value)
    val = ["sample", "--store", str(patch_store_path), "--split", "val", "--count", "3"]
    line = _one_error_line(runner.invoke(main, [*val, "--out", str(tmp_path / "val.npz")]))
    assert "validation reads 2 patches" in line and not (tmp_path / "val.npz").exists()
    assert set(got["kind"]) == {"patch"}


def _one_error_line(result) -> str:
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a click error, not a traceback
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_brainnet_sample_outputs_go_into_new_folders_and_are_written_both_or_neither(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from brainnet.cli import main
    from brainprep.cli import outputs

    base = ["sample", "--store", str(store_path), "--count", "2"]
    out, png = tmp_path / "new" / "s.npz", tmp_path / "other" / "s.png"
    result = CliRunner().invoke(main, [*base, "--out", str(out), "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and png.is_file()
    (tmp_path / "file.txt").write_text("")
    inside = tmp_path / "file.txt" / "s.npz"
    line = _one_error_line(CliRunner().invoke(main, [*base, "--out", str(inside)]))
    assert f"cannot write {inside}: {tmp_path / 'file.txt'} is a file, not a folder" in line
    # a picture that cannot be written, found only at the write: no .npz is left behind either
    monkeypatch.setattr(outputs, "output_problem", lambda path: None)
    lone, bad_png = tmp_path / "lone.npz", tmp_path / "file.txt" / "s.png"
    line = _one_error_line(CliRunner().invoke(main, [*base, "--out", str(lone), "--png", str(bad_png)]))
    assert f"cannot write {bad_png}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "new", "other"]


def _ddp_worker(rank: int, port: int, store: str, out: str, results: str) -> None:
    import os

    from brainnet.model import ModelConfig
    from brainnet.train import TrainConfig, train

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    config = TrainConfig(
        epochs=1,
        batch_size=1,
        lr=1e-3,
        device="cpu",
        workers=0,
        val_split=None,
        # 5 draws on 2 ranks: padded to 3 steps of 1 each (unpadded, rank 1 had 2 steps and the run hung)
        volume_sampling=WindowSamplingParams(draws_per_epoch=5),
    )
    result = train(store, out, config, ModelConfig(depth=2, base_filters=2))
    torch.save(
        {"slots": torch.from_numpy(result.slots_seen), "weights": result.model.state_dict()},
        Path(results) / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_ddp_ranks_read_disjoint_draws_and_agree(store_path: Path, tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(store_path), str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["slots"].tolist() for r in ranks] == [[0, 2, 4], [1, 3, 5]]
    for name, tensor in ranks[0]["weights"].items():
        assert torch.equal(tensor, ranks[1]["weights"][name]), name


def test_train_cli_shares_default_to_the_sampler_and_one_given_zeroes_the_other() -> None:
    from brainnet.cli.train import _sampling_shares

    defaults = WindowSamplingParams(**_sampling_shares({"tumour_share": None, "foreground_share": None}))
    assert (defaults.tumour_share, defaults.foreground_share) == (0.0, 0.5)
    course = WindowSamplingParams(**_sampling_shares({"tumour_share": 1.0, "foreground_share": None}))
    assert (course.tumour_share, course.foreground_share) == (1.0, 0.0)
    both = _sampling_shares({"tumour_share": 0.2, "foreground_share": 0.3})
    assert both == {"tumour_share": 0.2, "foreground_share": 0.3}
