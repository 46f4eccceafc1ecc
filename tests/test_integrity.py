"""A store that cannot be silently wrong: every fault found without a manifest, each one clear line.

Each test damages a copy of a small built store the way a user or a disk would (a flipped byte, a deleted
shard, a hand-edited attribute or table, a full disk) and checks that reading, training and ``verify``
refuse it with one line naming the slot, case and shard, instead of training on it.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import copy_store, edit_store_metadata, flip_byte

from brainprep.builder import build_patches
from brainprep.cli import main as brainprep_main
from brainprep.errors import (
    ConfigError,
    StoreCorruptError,
    StoreIncompleteError,
    StoreMismatchError,
    StoreSpaceError,
    one_line,
)
from brainprep.params import BuildParams, SamplingParams, SplitParams
from brainprep.store import integrity, open_store, schema
from brainprep.store.shards import chunk_ranges
from brainprep.synth import SynthParams, write_synthetic_dataset
from brainprep.verify import check_store_consistency

K = 4
PARAMS = BuildParams(
    sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=K),
    split=SplitParams(val_fraction=0.34),
    seed=1,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    return write_synthetic_dataset(root / "synth", SynthParams(n_cases=4, shape=(64, 64, 32), seed=0))


@pytest.fixture(scope="module")
def stores(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    built = {}
    for fmt in ("zarr", "h5"):
        built[fmt] = root / f"s.{fmt}"
        build_patches(data, built[fmt], PARAMS, workers=1)
    return built


def first_valid_slot(store: Path) -> tuple[int, str]:
    """A slot holding a patch and its case id."""
    with open_store(store) as opened:
        slot = int(opened.patch_indices()[0])
        return slot, opened.cases[slot // K]["case_id"]


def flip_in_zarr_chunk(store: Path, array: str, slot: int) -> Path:
    """Flip a byte in the middle of ``slot``'s chunk of ``array``; returns the shard file."""
    shard = store / array / "c" / str(slot // K) / "0" / "0" / "0"
    if array == schema.IMAGES:
        shard = shard / "0"
    offset, nbytes = chunk_ranges(shard.read_bytes(), K)[slot % K]
    flip_byte(shard, offset + nbytes // 2)
    return shard


# ---------------------------------------------------------------------------------------------------------
# Sealing: what a fresh store records.


def test_a_built_store_is_sealed_and_checks_clean(stores: dict[str, Path]) -> None:
    for store in stores.values():
        with open_store(store) as opened:
            metadata = opened.metadata
            assert integrity.metadata_problem(metadata) is None
            assert opened.content_id == metadata["integrity"]["content_id"] and len(opened.content_id) == 64
            written = [c for c in metadata["cases"] if c["n_patches"]]
            assert written and all(set(c["data_digest"]) == {"images", "labels"} for c in written)
        assert check_store_consistency(store) == []


def test_every_zarr_chunk_ends_with_the_crc32c_of_its_frame(stores: dict[str, Path]) -> None:
    import google_crc32c

    shard = stores["zarr"] / "labels" / "c" / "0" / "0" / "0" / "0"
    data = shard.read_bytes()
    for offset, nbytes in chunk_ranges(data, K):
        chunk = data[offset : offset + nbytes]
        assert int.from_bytes(chunk[-4:], "little") == google_crc32c.value(chunk[:-4])


# ---------------------------------------------------------------------------------------------------------
# A flipped byte, a deleted shard.


@pytest.mark.parametrize("array", [schema.IMAGES, schema.LABELS])
def test_flipped_byte_in_a_zarr_chunk_is_refused_by_reads_and_named_by_verify(
    stores: dict[str, Path], tmp_path: Path, array: str
) -> None:
    store = copy_store(stores["zarr"], tmp_path)
    slot, case_id = first_valid_slot(store)
    shard = flip_in_zarr_chunk(store, array, slot)
    with open_store(store) as opened, pytest.raises(StoreCorruptError) as refused:
        opened.read_patches([slot])
    message = str(refused.value)
    assert f"{array} of slot {slot} (case {case_id})" in message and "checksum mismatch" in message
    assert str(shard) in message and "brainprep verify" in message and "\n" not in message

    differences = check_store_consistency(store)
    assert [(d.array, d.slots, d.case_ids) for d in differences] == [(array, (slot, slot), (case_id,))]
    result = CliRunner().invoke(brainprep_main, ["verify", str(store), "--no-progress"])
    assert result.exit_code == 1
    assert f"[slot {slot}; case {case_id}]" in result.output and "checksum mismatch" in result.output


def test_flipped_byte_in_an_hdf5_chunk_is_refused_and_named(stores: dict[str, Path], tmp_path: Path) -> None:
    store = copy_store(stores["h5"], tmp_path)
    slot, case_id = first_valid_slot(store)
    with h5py.File(store, "r") as handle:
        info = handle[schema.IMAGES].id.get_chunk_info_by_coord((slot, 0, 0, 0, 0))
    flip_byte(store, info.byte_offset + info.size // 2)
    with open_store(store) as opened, pytest.raises(StoreCorruptError) as refused:
        opened.read_image(slot)
    assert f"images of slot {slot} (case {case_id})" in str(refused.value)
    differences = check_store_consistency(store)
    assert differences and {(d.slots, d.case_ids) for d in differences} == {((slot, slot), (case_id,))}


def test_deleted_shard_is_an_error_never_zeros(stores: dict[str, Path], tmp_path: Path) -> None:
    store = copy_store(stores["zarr"], tmp_path)
    slot, case_id = first_valid_slot(store)
    shard = store / "images" / "c" / str(slot // K) / "0" / "0" / "0" / "0"
    shard.unlink()
    with open_store(store) as opened:
        with pytest.raises(
            StoreCorruptError, match=f"images of slot {slot} .case {case_id}.: shard file missing"
        ):
            opened.read_image(slot)
        np.testing.assert_array_equal(opened.read_label(slot), opened.read_label(slot))  # labels still read
    differences = check_store_consistency(store)
    assert [(d.array, d.slots, d.case_ids) for d in differences] == [
        ("images", (slot // K * K, slot // K * K + K - 1), (case_id,))
    ]
    assert "shard file missing" in differences[0].problem


def test_a_chunk_swapped_for_another_valid_one_changes_the_case_digest(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    """Every chunk passes its own crc32c, but the case's data digest no longer matches."""
    store = copy_store(stores["zarr"], tmp_path)
    first = store / "labels" / "c" / "0" / "0" / "0"
    second = store / "labels" / "c" / "1" / "0" / "0" / "0"
    with open_store(store) as opened:
        if not (opened.table.valid[:K].any() and opened.table.valid[K : 2 * K].any()):
            pytest.skip("the fixture needs patches in cases 0 and 1")
    shutil.copy2(second, first)
    differences = check_store_consistency(store, check_images=False)
    assert any(d.array == "labels" and "data digest" in d.problem for d in differences)


# ---------------------------------------------------------------------------------------------------------
# Edited metadata and tables.


def test_hand_edited_parameter_is_refused_on_open_and_named_by_verify(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    store = copy_store(stores["zarr"], tmp_path)
    document = store / "zarr.json"
    meta = json.loads(document.read_text())
    meta["attributes"]["brainprep"]["params"]["standardize"]["method"] = "volume-nonzero"
    document.write_text(json.dumps(meta))
    with pytest.raises(StoreCorruptError, match="does not match the recorded digest"):
        open_store(store)
    differences = check_store_consistency(store, check_images=False)
    assert [(d.array, d.key) for d in differences] == [("metadata", "brainprep")]
    result = CliRunner().invoke(brainprep_main, ["stats", str(store)])
    assert result.exit_code == 1 and "recorded digest" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("array", "dtype"), [("images", "int16"), ("images", "uint16"), ("labels", "int8")])
def test_an_edited_array_dtype_is_refused_on_open_and_by_verify(
    stores: dict[str, Path], tmp_path: Path, array: str, dtype: str
) -> None:
    """An array's zarr.json says how its bytes read: another dtype of the same size passes every chunk's
    checksum and reads other values (float16 -1.555 as int16 -16840), so it is checked against the params."""
    store = copy_store(stores["zarr"], tmp_path)
    document = store / array / "zarr.json"
    meta = json.loads(document.read_text())
    meta["data_type"] = dtype
    document.write_text(json.dumps(meta))
    want = "float16" if array == "images" else "uint8"
    problem = f"array {array} has dtype {dtype}, its metadata (store dtype) gives {want}"
    with pytest.raises(StoreCorruptError, match=re.escape(problem)):
        open_store(store)
    result = CliRunner().invoke(brainprep_main, ["verify", str(store), "--no-progress"])
    assert result.exit_code == 1 and problem in result.output and "Traceback" not in result.output


def test_any_flipped_byte_of_the_hdf5_metadata_reads_the_same_or_is_a_brainprep_error(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    """The file's first 4 KiB hold its superblock, root object header and chunk indices: a damaged root
    header (a KeyError from h5py's attrs) or chunk index (a RuntimeError) were tracebacks."""
    from brainprep.errors import BrainprepError

    source = stores["h5"]
    with open_store(source) as store:
        slots = store.patch_indices()
        images, labels = store.read_patches(slots)
    raw, copy, caught = source.read_bytes(), tmp_path / "flipped.h5", 0
    for offset in range(0, 4096, 5):
        data = bytearray(raw)
        data[offset] ^= 0x10
        copy.write_bytes(bytes(data))
        try:
            with open_store(copy) as store:
                got_images, got_labels = store.read_patches(slots)
        except BrainprepError as err:
            assert "\n" not in str(err)
            caught += 1
            continue
        assert np.array_equal(got_images.view(np.uint16), images.view(np.uint16)), offset
        assert np.array_equal(got_labels, labels), offset
    assert caught > 50  # the scan met damage (not only padding)


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_a_removed_integrity_block_does_not_pass_as_a_store_from_before_checksums(
    stores: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    """Deleting the seal with the edit it would catch: the chunks' checksums still say who wrote it."""
    store = copy_store(stores[fmt], tmp_path)

    def strip_and_edit(metadata: dict) -> None:
        del metadata[integrity.INTEGRITY_KEY]
        metadata["params"]["standardize"]["method"] = "volume-nonzero"

    edit_store_metadata(store, strip_and_edit)
    with pytest.raises(StoreCorruptError, match="integrity block is missing, yet its chunks carry checksums"):
        open_store(store)
    differences = check_store_consistency(store, check_images=False)
    assert (differences[0].array, differences[0].key) == ("metadata", integrity.INTEGRITY_KEY)
    result = CliRunner().invoke(brainprep_main, ["verify", str(store), "--no-progress"])
    assert result.exit_code == 1 and "integrity block is missing" in result.output
    assert "without checksums" not in result.output


def test_edited_split_table_is_refused_by_training_and_named_by_verify(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    import zarr

    from brainnet.model import ModelConfig
    from brainnet.train import TrainConfig, train

    store = copy_store(stores["zarr"], tmp_path)
    split = zarr.open_array(store / schema.PATCH_SPLIT, mode="r+")
    values = split[:]
    values[values == 1] = 0  # every validation patch moved into training
    split[:] = values
    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1, device="cpu", workers=0)
    with pytest.raises(StoreCorruptError, match="table patch_split does not match its recorded digest"):
        train(store, tmp_path / "run", config, ModelConfig(depth=2, base_filters=2))
    differences = check_store_consistency(store, check_images=False)
    assert differences[0].array == schema.PATCH_SPLIT and "recorded digest" in differences[0].problem


# ---------------------------------------------------------------------------------------------------------
# Training on damage, resuming on another store.


def test_corrupted_label_chunk_met_in_training_is_one_line(stores: dict[str, Path], tmp_path: Path) -> None:
    """Worker processes re-raise with their traceback in the message; the command prints one line."""
    from brainnet.cli import main as brainnet_main

    store = copy_store(stores["zarr"], tmp_path)
    with open_store(store) as opened:
        train_slots = opened.patch_indices("train")
    for slot in train_slots:
        flip_in_zarr_chunk(store, schema.LABELS, int(slot))
    args = ["train", "--store", str(store), "--out", str(tmp_path / "run"), "--epochs", "1"]
    args += ["--steps-per-epoch", "1", "--batch-size", "1", "--base-filters", "2", "--depth", "2"]
    args += [
        "--device",
        "cpu",
        "--workers",
        "1",
        "--loader",
        "processes",
        "--no-progress",
        "--val-split",
        "none",
    ]
    result = CliRunner().invoke(brainnet_main, args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: labels of slot") and "checksum mismatch" in lines[0]
    assert "brainprep verify" in lines[0] and "Traceback" not in result.output


def test_resume_on_another_store_is_refused_naming_both_ids(
    stores: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    from brainnet.model import ModelConfig
    from brainnet.train import TrainConfig, train

    other = tmp_path / "other.zarr"
    fewer = write_synthetic_dataset(tmp_path / "fewer", SynthParams(n_cases=3, shape=(64, 64, 32), seed=5))
    build_patches(fewer, other, PARAMS, workers=1)
    model = ModelConfig(depth=2, base_filters=2)
    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1, device="cpu", workers=0, val_split=None)
    train(stores["zarr"], tmp_path / "run", config, model)
    with open_store(stores["zarr"]) as a, open_store(other) as b:
        ids = (integrity.short_id(a.content_id), integrity.short_id(b.content_id))
    assert ids[0] != ids[1]
    with pytest.raises(StoreMismatchError) as refused:
        train(other, tmp_path / "run", config.replace(epochs=2), model, resume=True)
    assert ids[0] in str(refused.value) and ids[1] in str(refused.value)
    assert "--allow-store-change" in str(refused.value)
    result = train(
        other, tmp_path / "run", config.replace(epochs=2), model, resume=True, allow_store_change=True
    )
    assert result.epochs == 2
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    with open_store(other) as b:
        assert saved["store_id"] == b.content_id


def test_checkpoint_holding_code_is_refused_as_such(tmp_path: Path) -> None:
    from brainnet.train import load_checkpoint
    from brainnet.train.checkpoint import CheckpointError

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_config": {}, "build_params": {}, "hook": Path("x")}, path)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert "holds code objects" in str(refused.value) and "weights_only=False" not in str(refused.value)


# ---------------------------------------------------------------------------------------------------------
# Incomplete stores, a full disk, a patch larger than the volume, stores from before checksums.


def test_verify_of_an_incomplete_store_says_how_to_resume(data: Path, tmp_path: Path, monkeypatch) -> None:
    from brainprep.store import shards

    calls = []
    original = shards.ShardWriter.write

    def fail_second_case(self, shard, chunks):
        calls.append(shard)
        if len(calls) > 2:
            raise RuntimeError("killed")
        return original(self, shard, chunks)

    monkeypatch.setattr(shards.ShardWriter, "write", fail_second_case)
    store = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError, match="killed"):
        build_patches(data, store, PARAMS, workers=1)
    result = CliRunner().invoke(brainprep_main, ["verify", str(store), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        "store is not complete" in result.output
        and "rerun the same `brainprep build-patches`" in result.output
    )
    with pytest.raises(StoreIncompleteError):
        open_store(store)


def test_full_disk_is_one_line_and_the_store_resumes(
    stores: dict[str, Path], data: Path, tmp_path: Path, monkeypatch
) -> None:
    """A write patched to raise ENOSPC (mounting a small tmpfs needs privileges a CI may not have)."""
    from brainprep.store import shards

    original = shards.ShardWriter.write
    written = []

    def disk_fills_up(self, shard, chunks):
        if len(written) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / self.layout.key(shard)))
        written.append(shard)
        return original(self, shard, chunks)

    monkeypatch.setattr(shards.ShardWriter, "write", disk_fills_up)
    store = tmp_path / "s.zarr"
    with pytest.raises(StoreSpaceError) as full:
        build_patches(data, store, PARAMS, workers=1)
    message = one_line(full.value)
    assert message == str(full.value) and str(store) in message
    assert "of 4 cases are written" in message and "MB more are needed" in message and "rerun" in message
    monkeypatch.setattr(shards.ShardWriter, "write", original)
    build_patches(data, store, PARAMS, workers=1)  # the disk has room again: the same command resumes
    with open_store(store) as resumed, open_store(stores["zarr"]) as whole:
        assert resumed.content_id == whole.content_id


def test_patch_larger_than_the_volume_is_refused_before_writing(data: Path, tmp_path: Path) -> None:
    from brainprep.check import CheckParams, check_dataset

    too_big = BuildParams(sampling=SamplingParams(patch_size=(32, 32, 40), patches_per_case=K))
    store = tmp_path / "s.zarr"
    result = CliRunner().invoke(
        brainprep_main,
        ["build-patches", str(data), str(store), "--patch-size", "32", "32", "40", "--workers", "1"],
    )
    assert result.exit_code != 0 and "does not fit" in result.output and "larger along Z" in result.output
    assert not store.exists() and not (tmp_path / "s.zarr.build").exists()
    with pytest.raises(ConfigError, match=r"no case .* can be built"):
        build_patches(data, store, too_big, workers=1, skip_bad=True)
    assert not store.exists()
    report = check_dataset(data, CheckParams(patch_size=(32, 32, 40)))
    assert len(report.problems) == 4 and "does not fit" in report.problems[0].problem


def test_store_without_checksums_still_reads_and_says_so_once(
    stores: dict[str, Path], tmp_path: Path, caplog
) -> None:
    """A store as brainprep 0.1 wrote it: no integrity block, chunks without crc32c."""
    import zarr

    from brainprep.store import reader

    old = tmp_path / "old.zarr"
    with open_store(stores["zarr"]) as new:
        images, labels = new.images[...], new.labels[...]
        names = (*schema.PATCH_TABLE_ARRAYS, schema.CASE_MEAN, schema.CASE_STD)
        tables = {name: new.read_table_array(name) for name in names}
        metadata = {k: v for k, v in new.metadata.items() if k != "integrity"}
        metadata["cases"] = [{k: v for k, v in c.items() if k != "data_digest"} for c in metadata["cases"]]
    group = zarr.open_group(str(old), mode="w", zarr_format=3)
    from zarr.codecs import BloscCodec

    for name, array in ((schema.IMAGES, images), (schema.LABELS, labels)):
        blosc = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=array.dtype.itemsize)
        created = group.create_array(
            name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=(1, *array.shape[1:]),
            shards=(K, *array.shape[1:]),
            compressors=blosc,
            fill_value=0,
        )
        with zarr.config.set({"array.write_empty_chunks": True}):
            created[...] = array
    for name, array in tables.items():
        group.create_array(name, data=array, chunks=array.shape)
    group.attrs[schema.ATTRS_KEY] = metadata
    reader._WARNED_UNVERIFIED.discard(str(old))
    with caplog.at_level("WARNING"):
        for _ in range(2):
            with open_store(old) as opened:
                assert opened._shards is not None and not opened._shards[0].layout.checksummed
                np.testing.assert_array_equal(opened.read_patches([0, 1])[0], images[:2])
    assert sum("without checksums" in r.message for r in caplog.records) == 1
    result = CliRunner().invoke(brainprep_main, ["verify", str(old), "--no-progress"])
    assert result.exit_code == 0 and "without checksums" in result.output, result.output
    # Nothing seals such a store's parameters, but its arrays' shapes must still agree with them.
    edit_store_metadata(old, lambda m: m["params"]["sampling"].update(patch_size=[16, 16, 8]))
    with pytest.raises(StoreCorruptError, match=r"array images has shape \(16, 4, 32, 32, 8\)"):
        open_store(old)
    result = CliRunner().invoke(brainprep_main, ["verify", str(old), "--no-progress"])
    assert result.exit_code == 1 and "its metadata (cases, K, patch size) gives" in result.output


# ---------------------------------------------------------------------------------------------------------
# Array metadata: a damaged zarr.json is refused, never read through another layout.


def test_an_edited_fill_value_is_refused_not_read_through_zarr(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    """One bit ('0' -> '1') of images/zarr.json's fill_value made the array another layout to brainprep's
    reader, and zarr then read every empty slot as 1.0 and a deleted shard of valid slots as 1.0 too."""
    store = copy_store(stores["zarr"], tmp_path)
    document = store / "images" / "zarr.json"
    text = document.read_text()
    assert '"fill_value": 0.0' in text
    document.write_text(text.replace('"fill_value": 0.0', '"fill_value": 1.0'))
    problem = "images/zarr.json is not brainprep's shard layout: fill_value 1.0, brainprep writes 0"
    with pytest.raises(StoreCorruptError, match=re.escape(problem)):
        open_store(store)
    slot, _ = first_valid_slot(stores["zarr"])
    (store / "images" / "c" / str(slot // K) / "0" / "0" / "0" / "0").unlink()
    with open_store(store, check_integrity=False) as opened:  # as verify opens it: reads still refuse
        empty = int(np.flatnonzero(~opened.table.valid)[0])
        for slots in ([empty], [slot]):
            with pytest.raises(StoreCorruptError, match=re.escape(problem)):
                opened.read_patches(slots)
    assert [(d.array, d.key, d.problem) for d in check_store_consistency(store)] == [
        ("metadata", "layout", problem)
    ]
    result = CliRunner().invoke(brainprep_main, ["verify", str(store), "--no-progress"])
    assert result.exit_code == 1 and f"metadata layout: {problem}" in result.output
    assert "not checked" not in result.output and "Traceback" not in result.output


def test_a_sealed_store_whose_zarr_json_lost_its_crc32c_is_refused(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    """Blosc then no crc32c is the layout of stores from before checksums: a sealed store's chunks all end
    with one, so its reads would go unchecked."""
    store = copy_store(stores["zarr"], tmp_path)
    document = store / "labels" / "zarr.json"
    meta = json.loads(document.read_text())
    inner = meta["codecs"][0]["configuration"]["codecs"]
    assert inner[-1]["name"] == "crc32c"
    meta["codecs"][0]["configuration"]["codecs"] = inner[:-1]
    document.write_text(json.dumps(meta))
    with pytest.raises(
        StoreCorruptError, match=re.escape("labels/zarr.json has no crc32c codec, yet the store is sealed")
    ):
        open_store(store)


@pytest.fixture(scope="module")
def tiny_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A patch and a volume store of two small cases, as Zarr folders and packed, with their manifests."""
    from brainprep.manifest import write_manifest
    from brainprep.pack import pack_store
    from brainprep.params import StoreParams

    root = tmp_path_factory.mktemp("tiny")
    data = write_synthetic_dataset(root / "data", SynthParams(n_cases=2, shape=(32, 32, 16), seed=0))
    params = BuildParams(sampling=SamplingParams(patch_size=(16, 16, 8), patches_per_case=2), seed=1)
    out = {}
    for kind in ("patches", "volumes"):
        out[kind] = root / f"{kind}.zarr"
        build_patches(data, out[kind], params.replace(store=StoreParams(kind=kind)), workers=1)
        out[f"{kind}.zip"] = pack_store(out[kind], root / f"{kind}.zarr.zip")
        write_manifest(out[kind], root / f"{kind}.json")
    return out


def _read_everything(location: Path) -> list[np.ndarray]:
    """Every array a reader hands out (tables, patches or volumes, windows), as training and stats do."""
    from brainprep.store.volume_reader import VolumeStore

    with open_store(location) as store:
        if isinstance(store, VolumeStore):
            out = [getattr(store.case_table, name) for name in store.case_table.__dataclass_fields__]
            for index in store.case_indices():
                out.extend(store.read_volume(int(index)))
                out.extend(store.sampling_tables(int(index)).values())
                out.extend(store.read_window(int(index), (0, 0, 0), standardize="volume-nonzero"))
            return out
        table = store.table
        statistics = [store.read_table_array(name) for name in (schema.CASE_MEAN, schema.CASE_STD)]
        fields = [getattr(table, name) for name in table.__dataclass_fields__]
        return [*fields, *statistics, *store.read_patches(range(4))]


def _document_damages(raw: bytes) -> dict[str, bytes]:
    """A metadata document cut short (not JSON), and single bit flips of a digit (a shape, a chunk size,
    a level) and of a name (a codec, a dtype) that keep it JSON."""
    digits = [i for i, b in enumerate(raw) if chr(b).isdigit()]
    names = [m.end() for m in re.finditer(rb'"(name|data_type)": "', raw)]
    out = {"cut": raw[:-3]}
    for label, positions in (("digit", digits), ("name", names)):
        if positions:
            flipped = bytearray(raw)
            flipped[positions[len(positions) // 2]] ^= 0x01
            out[label] = bytes(flipped)
    return out


def _assert_one_line_or_fine(result: Any, what: str) -> None:
    """A command ended normally or with one ``Error:`` line, its last, and no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (what, result.exception)
    lines = result.output.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    assert "Traceback" not in result.output and errors in ([], [len(lines) - 1]), (what, result.output)


def _every_command(location: Path, manifest: Path, folder: Path, what: str, base: list) -> bool:
    """Reading, stats, verify, verify --manifest and manifest on a damaged store: each gives the data
    unchanged or one brainprep error line, never another exception; the manifest always tells. True when
    reading refused the store."""
    from brainprep.errors import BrainprepError

    refused = False
    try:
        got = _read_everything(location)
    except BrainprepError as error:
        assert "\n" not in str(error), what
        refused = True
    else:  # a change that reads the same (a compression level, say) must read exactly the same
        assert len(got) == len(base) and all(
            a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
            for a, b in zip(got, base, strict=True)
        ), f"{what}: read other values without an error"
    runner = CliRunner()
    for args in (
        ["stats", str(location)],
        ["verify", str(location), "--no-progress"],
        ["manifest", str(location), "-o", str(folder / "m.json"), "--no-progress"],
    ):
        _assert_one_line_or_fine(runner.invoke(brainprep_main, args), f"{what}: {args[0]}")
    result = runner.invoke(
        brainprep_main, ["verify", str(location), "--manifest", str(manifest), "--no-progress"]
    )
    _assert_one_line_or_fine(result, f"{what}: verify --manifest")
    assert result.exit_code == 1, f"{what}: verify --manifest found nothing"
    return refused


@pytest.mark.parametrize("kind", ["patches", "volumes"])
def test_damaged_metadata_documents_are_one_line_on_every_command(
    tiny_stores: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """Every zarr.json of a Zarr folder cut short or with a bit flipped, and every member of the packed
    store damaged (its CRC-32 fails): JSONDecodeError, UnknownCodecError, MetadataValidationError,
    KeyError 'codecs', ZeroDivisionError or BadZipFile were tracebacks from stats, verify and manifest."""
    import zipfile

    source, manifest = tiny_stores[kind], tiny_stores[kind].with_suffix(".json")
    base = _read_everything(source)
    trials = refused = 0
    # every document but those of the second case of a volume store (the first's are alike)
    keys = [p.relative_to(source).as_posix() for p in sorted(source.rglob("zarr.json"))]
    keys = [key for key in keys if "/000001/" not in key]
    for key in keys:
        document = source / key
        for label, damaged in _document_damages(document.read_bytes()).items():
            store = tmp_path / label / source.name
            shutil.copytree(source, store)
            (store / key).write_bytes(damaged)
            refused += _every_command(store, manifest, store.parent, f"{key} {label}", base)
            trials += 1
            shutil.rmtree(store.parent)
    packed = tiny_stores[f"{kind}.zip"]
    with zipfile.ZipFile(packed) as archive:
        members = [(i.filename, i.header_offset, i.compress_size) for i in archive.infolist()]
    for name, header, size in members:
        if name not in keys:
            continue
        copy = tmp_path / name.replace("/", "_") / packed.name
        copy.parent.mkdir()
        shutil.copy(packed, copy)
        raw = bytearray(copy.read_bytes())
        start = header + 30 + int.from_bytes(raw[header + 26 : header + 28], "little")
        start += int.from_bytes(raw[header + 28 : header + 30], "little")
        raw[start + size // 2] ^= 0x01
        copy.write_bytes(bytes(raw))
        refused += _every_command(copy, manifest, copy.parent, f"zip member {name}", base)
        trials += 1
    # most damage is refused on read; the rest (a group's document, a compression level) reads the same
    assert refused > trials // 2
