"""brainnet.data: shard-aware sampling, DDP splitting, tumour filtering, the patch dataset and loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brainnet.data import (
    PatchDataset,
    ShardShuffleSampler,
    filter_by_tumour_fraction,
    make_loader,
    shard_window_order,
    split_for_rank,
    split_slots,
    to_training_batch,
    tumour_weights,
)
from brainnet.data.buffers import RecycledArrays
from brainprep.errors import ConfigError

# 7 shards of unequal size: 3 + 1 + 4 + 2 + 5 + 2 + 3 = 20 positions.
SHARDS = np.repeat(np.arange(7), [3, 1, 4, 2, 5, 2, 3])


# ----------------------------------------------------------------------------------------- samplers
def test_split_for_rank_by_hand():
    order = np.array([4, 0, 3, 1, 2])
    assert split_for_rank(order, 0, 2, "pad").tolist() == [4, 0, 3]
    assert split_for_rank(order, 1, 2, "pad").tolist() == [1, 2, 4]  # pads with the order's first item
    assert split_for_rank(order, 0, 2, "drop").tolist() == [4, 0]
    assert split_for_rank(order, 1, 2, "drop").tolist() == [3, 1]
    assert split_for_rank(order, 0, 2, "uneven").tolist() == [4, 0, 3]
    assert split_for_rank(order, 1, 2, "uneven").tolist() == [1, 2]
    with pytest.raises(ConfigError):
        split_for_rank(order, 0, 2, "wrap")


def test_shard_window_order_is_a_permutation_read_shard_by_shard():
    rng = np.random.default_rng(0)
    order = shard_window_order(SHARDS, rng, window=1)
    assert sorted(order.tolist()) == list(range(len(SHARDS)))
    runs = [s for i, s in enumerate(SHARDS[order]) if i == 0 or s != SHARDS[order][i - 1]]
    assert len(runs) == 7  # window 1: every shard read in one contiguous run
    order2 = shard_window_order(SHARDS, np.random.default_rng(0), window=2)
    assert sorted(order2.tolist()) == list(range(len(SHARDS)))
    # Window 2: the order is a run of groups, each holding all positions of 2 shards (the last: 1),
    # so the shards by first appearance, taken 2 by 2, cover consecutive segments of the order.
    sequence = SHARDS[order2]
    first_seen = list(dict.fromkeys(sequence.tolist()))
    segment_start = 0
    for k in range(0, 7, 2):
        pair = first_seen[k : k + 2]
        size = int(np.isin(SHARDS, pair).sum())
        assert set(sequence[segment_start : segment_start + size].tolist()) == set(pair)
        segment_start += size
    assert segment_start == len(SHARDS)


@pytest.mark.parametrize("n_positions", [20, 21])
def test_two_ranks_see_every_patch_once_per_epoch_and_reshuffle(n_positions):
    shards = np.arange(n_positions) // 3
    epochs = []
    for epoch in range(2):
        parts = []
        for rank in range(2):
            sampler = ShardShuffleSampler(shards, seed=5, window=2, rank=rank, world_size=2, remainder="pad")
            sampler.set_epoch(epoch)
            parts.append(list(sampler))
            assert len(parts[-1]) == len(sampler) == -(-n_positions // 2)
        together = parts[0] + parts[1]
        if n_positions % 2 == 0:
            assert not set(parts[0]) & set(parts[1])
            assert sorted(together) == list(range(n_positions))
        else:
            # One position is read twice (padding) so both ranks take the same number of steps.
            assert sorted(set(together)) == list(range(n_positions)) and len(together) == n_positions + 1
        epochs.append(together)
    assert epochs[0] != epochs[1]
    again = ShardShuffleSampler(shards, seed=5, window=2, rank=0, world_size=2)
    again.set_epoch(1)
    assert list(again) == epochs[1][: len(again)]


def test_uneven_and_drop_remainders():
    shards = np.arange(21) // 4
    uneven = [list(ShardShuffleSampler(shards, rank=r, world_size=2, remainder="uneven")) for r in range(2)]
    assert sorted(uneven[0] + uneven[1]) == list(range(21)) and [len(u) for u in uneven] == [11, 10]
    drop = [list(ShardShuffleSampler(shards, rank=r, world_size=2, remainder="drop")) for r in range(2)]
    assert [len(d) for d in drop] == [10, 10] and len(set(drop[0] + drop[1])) == 20


def test_sampler_start_and_state_dict():
    sampler = ShardShuffleSampler(SHARDS, seed=1)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start=7)
    assert list(sampler) == full[7:] and len(sampler) == len(SHARDS) - 7
    restored = ShardShuffleSampler(SHARDS, seed=1)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == full[7:]


def test_unshuffled_sampler_keeps_dataset_order():
    assert list(ShardShuffleSampler(SHARDS, shuffle=False)) == list(range(len(SHARDS)))


def test_tumour_weights_and_weighted_sampler():
    weights = tumour_weights(np.array([0.0, 0.5, 0.5]), floor=0.01)
    np.testing.assert_allclose(weights, np.array([0.01, 0.5, 0.5]) / 1.01)
    shards = np.array([0, 0, 1])
    sampler = ShardShuffleSampler(shards, seed=0, weights=weights, num_samples=3000)
    drawn = np.bincount(list(sampler), minlength=3)
    assert drawn.sum() == 3000 and drawn[0] < 60 and drawn[1] > 1300 and drawn[2] > 1300
    with pytest.raises(ConfigError):
        ShardShuffleSampler(shards, weights=np.array([1.0, -1.0, 1.0]))


def test_filter_by_tumour_fraction_by_hand():
    fractions = np.array([0.0, 0.2, 0.05, 0.5, 0.01], dtype=np.float32)
    kept = filter_by_tumour_fraction(np.array([4, 0, 1, 3, 2]), fractions, 0.05)
    assert kept.tolist() == [1, 3, 2]
    with pytest.raises(ConfigError):
        filter_by_tumour_fraction(np.arange(5), fractions, 1.5)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from brainprep.builder import build_patches
    from brainprep.params import BuildParams, SamplingParams
    from brainprep.store import open_store
    from brainprep.synth import SynthParams, write_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    data = write_synthetic_dataset(root / "synth", SynthParams(n_cases=6, shape=(64, 64, 32), seed=0))
    params = BuildParams(sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=8))
    build_patches(data, root / "store.zarr", params, workers=1, progress=False)
    return open_store(root / "store.zarr")


def test_dataset_yields_compact_patches_as_stored(store):
    slots = split_slots(store, "train")
    dataset = PatchDataset(store, slots)
    assert len(dataset) == len(slots) > 0
    for position in (0, len(dataset) - 1):
        sample = dataset[position]
        slot = int(slots[position])
        assert sample["slot"] == slot
        assert sample["image"].dtype == torch.float16 and sample["image"].shape == (4, 32, 32, 8)
        assert sample["label"].dtype == torch.uint8 and sample["label"].shape == (32, 32, 8)
        np.testing.assert_array_equal(sample["image"].numpy(), store.read_image(slot))
        np.testing.assert_array_equal(sample["label"].numpy(), store.read_label(slot))


def test_training_batch_is_float32_image_and_one_hot_target(store):
    slots = split_slots(store, "train")[:3]
    dataset = PatchDataset(store, slots)
    batch = torch.utils.data.default_collate(dataset.__getitems__([0, 1, 2]))
    image, target = to_training_batch(batch)
    assert image.dtype == torch.float32 and image.shape == (3, 4, 32, 32, 8)
    assert target.dtype == torch.float32 and target.shape == (3, 3, 32, 32, 8)
    for k, slot in enumerate(slots.tolist()):
        label = store.read_label(slot)
        np.testing.assert_array_equal(image[k].numpy(), store.read_image(slot).astype(np.float32))
        for channel, value in enumerate((1, 2, 3)):
            np.testing.assert_array_equal(target[k, channel].numpy(), (label == value).astype(np.float32))
        # one-hot without background: channels never overlap, and sum to 1 exactly on tumour voxels
        np.testing.assert_array_equal(target[k].sum(0).numpy(), (label > 0).astype(np.float32))


def test_to_training_batch_by_hand():
    label = torch.tensor([[[[0, 1], [2, 3]]]], dtype=torch.uint8)  # (B=1, X=1, Y=2, Z=2)
    image = torch.ones((1, 4, 1, 2, 2), dtype=torch.float16)
    got_image, target = to_training_batch({"image": image, "label": label})
    assert got_image.dtype == torch.float32
    assert target[0, :, 0].tolist() == [
        [[0.0, 1.0], [0.0, 0.0]],  # edema: label 1
        [[0.0, 0.0], [1.0, 0.0]],  # non-enhancing: label 2
        [[0.0, 0.0], [0.0, 1.0]],  # enhancing: label 3
    ]


def test_batched_read_returns_samples_in_the_order_asked(store):
    dataset = PatchDataset(store, split_slots(store, None))
    positions = [5, 0, 17, 5, 9]
    batch = dataset.__getitems__(positions)
    for position, sample in zip(positions, batch, strict=True):
        assert sample["slot"] == int(dataset.slots[position])
        np.testing.assert_array_equal(sample["image"].numpy(), dataset[position]["image"].numpy())


def test_fraction_filter_uses_the_table_only(store, monkeypatch):
    expected = [s for s in store.patch_indices("train") if store.table.tumour_fraction[s] >= 0.2]

    def no_images(*args, **kwargs):
        raise AssertionError("image data was read")

    for name in ("read_image", "read_label", "read_patches"):
        monkeypatch.setattr(store, name, no_images)
    kept = filter_by_tumour_fraction(split_slots(store, "train"), store.table.tumour_fraction, 0.2)
    assert kept.tolist() == expected
    assert 0 < len(kept) < len(store.patch_indices("train"))  # the threshold bites on this store
    assert (store.table.tumour_fraction[kept] >= 0.2).all()


def test_loader_backends_and_worker_counts_give_the_same_batches(store):
    dataset = PatchDataset(store, split_slots(store, "train"))
    batches = {}
    for workers, backend in ((0, "processes"), (2, "processes"), (2, "threads")):
        sampler = ShardShuffleSampler(dataset.shards, seed=0)
        loader = make_loader(dataset, sampler, batch_size=3, workers=workers, backend=backend)
        got = list(loader)
        assert len(got) == len(loader)
        assert got[0]["image"].shape == (3, 4, 32, 32, 8) and got[0]["label"].shape == (3, 32, 32, 8)
        batches[workers, backend] = got
    reference = batches[0, "processes"]
    slots0 = torch.cat([b["slot"] for b in reference]).tolist()
    assert sorted(slots0) == split_slots(store, "train").tolist()
    for key in ((2, "processes"), (2, "threads")):
        assert torch.cat([b["slot"] for b in batches[key]]).tolist() == slots0, key
        for a, b in zip(reference, batches[key], strict=True):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_threaded_loader_stops_cleanly_when_abandoned(store):
    dataset = PatchDataset(store, split_slots(store, "train"))
    loader = make_loader(
        dataset, ShardShuffleSampler(dataset.shards, seed=0), batch_size=2, workers=2, backend="threads"
    )
    iterator = iter(loader)
    first = next(iterator)
    iterator.close()  # a training loop that breaks out early
    assert first["image"].shape[0] == 2
    with pytest.raises(ConfigError, match="loader backend"):
        make_loader(dataset, ShardShuffleSampler(dataset.shards, seed=0), batch_size=2, backend="fibers")


def test_auto_backend_is_threads_for_zarr_and_processes_for_hdf5(store):
    from brainnet.data.loader import ThreadedLoader, resolve_backend

    dataset = PatchDataset(store, split_slots(store, "train"))
    assert store.format == "zarr" and resolve_backend("auto", dataset) == "threads"
    loader = make_loader(dataset, ShardShuffleSampler(dataset.shards, seed=0), batch_size=2, workers=2)
    assert isinstance(loader, ThreadedLoader)  # the default is auto

    class HDF5Dataset:
        store = type("Store", (), {"format": "hdf5"})()

    assert resolve_backend("auto", HDF5Dataset()) == "processes"
    assert resolve_backend("threads", HDF5Dataset()) == "threads"  # an explicit choice is kept


def test_recycled_arrays_never_hand_out_memory_still_in_use():
    pool = RecycledArrays(capacity=4)
    first = pool.tensor((2, 3), np.float16)
    address = first.data_ptr()
    view, as_numpy = first[1], first.numpy()
    del first
    assert pool.tensor((2, 3), np.float16).data_ptr() != address  # a view keeps it
    del view
    assert pool.tensor((2, 3), np.float16).data_ptr() != address  # so does a numpy array over it
    del as_numpy
    again = pool.tensor((2, 3), np.float16)
    assert again.data_ptr() == address and again.dtype == torch.float16 and again.shape == (2, 3)
    other = pool.tensor((2, 3), np.uint8)
    assert other.dtype == torch.uint8 and other.data_ptr() != address  # kept apart by dtype


def test_recycled_arrays_keep_at_most_capacity_and_never_share_between_threads():
    from concurrent.futures import ThreadPoolExecutor

    pool = RecycledArrays(capacity=3)
    held = [pool.tensor((64,), np.int64) for _ in range(5)]  # beyond capacity: allocated, not kept
    assert pool.kept == 3 and len({t.data_ptr() for t in held}) == 5
    del held

    def fill(value: int) -> bool:
        tensor = pool.tensor((4096,), np.int64)
        for _ in range(20):
            tensor.fill_(value)
            if not bool((tensor == value).all()):
                return False  # another thread wrote into memory handed to this one
        return True

    with ThreadPoolExecutor(8) as threads:
        assert all(threads.map(fill, range(400)))
    assert pool.kept <= 3 + 3  # 3 of the first shape plus at most 3 of this one


def test_threaded_loader_reuses_memory_without_touching_batches_the_loop_holds(store):
    dataset = PatchDataset(store, split_slots(store, None))
    sampler = ShardShuffleSampler(dataset.shards, seed=1)
    loader = make_loader(dataset, sampler, batch_size=2, workers=2, backend="threads")
    held, addresses = [], set()
    for _epoch in range(2):
        for i, batch in enumerate(loader):
            addresses.add(batch["image"].data_ptr())
            if i % 3 == 0:
                held.append((batch["slot"], batch["image"][0], batch["label"]))  # a view and a tensor
    # every held batch still holds what the store says, though the loader reused the memory it let go
    for slots, first_image, labels in held:
        np.testing.assert_array_equal(first_image.numpy(), store.read_image(int(slots[0])))
        for slot, label in zip(slots.tolist(), labels, strict=True):
            np.testing.assert_array_equal(label.numpy(), store.read_label(slot))
    n_batches = 2 * len(loader)
    assert len(addresses) < n_batches - len(held)
    assert loader.buffers.kept <= 2 * loader.buffers.capacity + 2  # image and label shapes (+ short batch)


def test_hdf5_store_with_two_workers(tmp_path):
    from brainprep.builder import build_patches
    from brainprep.params import BuildParams, SamplingParams, StoreParams
    from brainprep.store import open_store
    from brainprep.synth import SynthParams, write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "synth", SynthParams(n_cases=2, shape=(64, 64, 32), seed=0))
    params = BuildParams(
        sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=4), store=StoreParams(format="hdf5")
    )
    build_patches(data, tmp_path / "store.h5", params, workers=1, progress=False)
    store = open_store(tmp_path / "store.h5")
    dataset = PatchDataset(store, split_slots(store, None))
    loader = make_loader(dataset, ShardShuffleSampler(dataset.shards, seed=0), batch_size=3, workers=2)
    for batch in loader:
        for slot, image in zip(batch["slot"].tolist(), batch["image"], strict=True):
            np.testing.assert_array_equal(image.numpy(), store.read_image(slot))
    assert store.format == "hdf5" and len(dataset) == 8


def test_store_pickles_into_workers_by_location(store):
    import pickle

    clone = pickle.loads(pickle.dumps(store))
    assert Path(clone.location) == Path(store.location)
    np.testing.assert_array_equal(clone.read_label(0), store.read_label(0))
