"""The volume store distrusts what it reads: damaged array metadata, lost staged parts, reused buffers,
flat channels and values float16 cannot hold.

Small synthetic data (3 cases of 48x48x16, 16x16x8 patches); damage is done by hand, one byte or one JSON
field at a time, on copies of stores built once per module."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import copy_store, edit_store_metadata, write_brats_case

import brainprep.builder.driver as driver
from brainprep.builder import build_patches
from brainprep.errors import InvalidValueError, StoreCorruptError, StoreError
from brainprep.manifest import build_manifest, verify_against_manifest
from brainprep.params import BuildParams, SamplingParams, StoreParams
from brainprep.standardize import resolved_std
from brainprep.store import integrity, open_store, volume_hdf5
from brainprep.store.volume_reader import standardize_window
from brainprep.synth import SynthParams, write_synthetic_dataset
from brainprep.verify import check_store_consistency

PATCH = (16, 16, 8)
PATCHES = BuildParams(sampling=SamplingParams(patch_size=PATCH, patches_per_case=2), seed=3)
VOLUMES = PATCHES.replace(store=StoreParams(kind="volumes"))
ONE_SPLIT = VOLUMES.replace(split=VOLUMES.split.replace(val_fraction=0.0))
#: HDF5's float16 datatype message (version 1, class float, little-endian IEEE: 16 bits, exponent 10..14,
#: mantissa 0..9, exponent bias 15). One bit of its exponent size (byte 13: 5 -> 4) keeps numpy's float16
#: and reads other values; one bit of its bias (byte 16: 15 -> 14) makes h5py read float32 (values x 2).
FLOAT16_MESSAGE = bytes.fromhex("11200f0002000000000010000a05000a0f000000")
EXPONENT_SIZE_BYTE, BIAS_BYTE = 13, 16
#: HDF5's uint8 datatype message (version 1, class fixed-point, unsigned); the sign flag is bit 3 of byte 1
UINT8_MESSAGE = bytes.fromhex("100000000100000000000800")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    return write_synthetic_dataset(
        root / "data", SynthParams(n_cases=3, shape=(48, 48, 16), seed=5, small_tumour_every=0)
    )


@pytest.fixture(scope="module")
def stores(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Volume stores (Zarr, HDF5, HDF5 in HDF5's earliest file format as stores were written before) and
    an HDF5 patch store, of ``data``."""
    root = tmp_path_factory.mktemp("stores")
    out = {
        "zarr": root / "v.zarr",
        "hdf5": root / "v.h5",
        "patches": root / "p.h5",
        "earliest": root / "old.h5",
    }
    build_patches(data, out["zarr"], VOLUMES, workers=1)
    build_patches(data, out["hdf5"], VOLUMES, workers=1)
    build_patches(data, out["patches"], PATCHES, workers=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(volume_hdf5, "LIBVER", ("earliest", "latest"))
        build_patches(data, out["earliest"], VOLUMES, workers=1)
    return out


def header_at(path: Path, name: str) -> int:
    """File offset of dataset ``name``'s object header."""
    with h5py.File(path, "r") as handle:
        return int(h5py.h5o.get_info(handle[name].id).addr)


def damaged(source: Path, folder: Path, offset: int, value: int | None = None, bit: int = 0x01) -> Path:
    """A copy of the HDF5 file ``source`` in ``folder`` whose byte ``offset`` is ``value`` (default: one
    bit of it flipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = copy_store(source, folder)
    raw = bytearray(target.read_bytes())
    raw[offset] = raw[offset] ^ bit if value is None else value
    target.write_bytes(bytes(raw))
    return target


def dims_offset(path: Path, name: str) -> int:
    """File offset of the last dimension (8 bytes, little-endian) in dataset ``name``'s dataspace."""
    with h5py.File(path, "r") as handle:
        shape = handle[name].shape
    dims = np.array(shape, dtype="<u8").tobytes()
    return path.read_bytes().index(dims, header_at(path, name)) + 8 * (len(shape) - 1)


def problems(store: Path) -> list[tuple[str, str]]:
    """(key, problem) of every row ``verify`` reports for ``store``."""
    return [(d.key, d.problem) for d in check_store_consistency(store, progress=False)]


def refusal(store: Path, read: Callable[[Any], object]) -> str:
    """The message of the :class:`StoreCorruptError` that ``read(the opened store)`` raises."""
    with pytest.raises(StoreCorruptError) as refused, open_store(store) as opened:
        read(opened)
    return str(refused.value)


def read_case(index: int) -> Callable[[Any], object]:
    return lambda opened: opened.read_volume(index)


# -- 1. HDF5 object headers are checksummed ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hdf5", "patches"])
def test_hdf5_stores_are_written_with_checksummed_headers(
    stores: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """Both HDF5 writers use the 1.10 file format: its object headers ("OHDR") carry a checksum, so a
    flipped bit in an image dataset's datatype or shape is refused when the dataset is opened, never
    read (the patch store's reader has no other check of them)."""
    store = stores[kind]
    name = "images/000000" if kind == "hdf5" else "images"
    start = header_at(store, name)
    assert store.read_bytes()[start : start + 4] == b"OHDR"
    message = store.read_bytes().index(FLOAT16_MESSAGE, start)
    read = read_case(0) if kind == "hdf5" else (lambda opened: opened.read_image(0))
    for offset in (message + EXPONENT_SIZE_BYTE, message + BIAS_BYTE, dims_offset(store, name)):
        flipped = damaged(store, tmp_path / f"{offset}", offset)
        message = refusal(flipped, read)  # HDF5's own words: "incorrect metadata checksum ..."
        assert f"array {name} missing or unreadable (" in message and "checksum" in message
        assert str(flipped) in message and "\n" not in message


def test_a_damaged_hdf5_datatype_is_refused_on_read_and_by_verify(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    """A store of HDF5's earliest file format (no header checksums, as stores were written before): the
    reader compares each case array's datatype with the store's, field by field."""
    store = stores["earliest"]
    start = header_at(store, "images/000000")
    assert store.read_bytes()[start : start + 4] != b"OHDR"
    message = store.read_bytes().index(FLOAT16_MESSAGE, start)
    flipped = damaged(store, tmp_path / "exponent", message + EXPONENT_SIZE_BYTE)
    with h5py.File(flipped, "r") as handle:
        assert handle["images/000000"].dtype == np.float16  # numpy's dtype cannot tell
    problem = "datatype is not the native float16 (a damaged datatype message)"
    assert refusal(flipped, lambda opened: opened.read_window(0, (0, 0, 0))) == (
        f"images of case BRATS_001: {problem} in {flipped}/images/000000; run `brainprep verify {flipped}`"
    )
    with open_store(flipped) as opened:
        opened.read_volume(1)  # the other cases read
    assert problems(flipped) == [("images/000000", problem)]
    # and against a manifest of the store, which records each HDF5 datatype message
    rows = verify_against_manifest(flipped, build_manifest(store))
    # the store's own check first (as verify without a manifest), then the manifest's schema
    assert [(d.array, d.key) for d in rows] == [("images", "images/000000"), ("images/000000", "(schema)")]
    assert rows[0].problem == problem and rows[1].problem.startswith("datatype is ")

    flipped = damaged(store, tmp_path / "bias", message + BIAS_BYTE)
    assert f"dtype float32, expected float16 in {flipped}/images/000000;" in refusal(flipped, read_case(0))
    assert problems(flipped) == [("images/000000", "dtype float32, expected float16")]

    sign = store.read_bytes().index(UINT8_MESSAGE, header_at(store, "labels/000002")) + 1
    flipped = damaged(store, tmp_path / "sign", sign, bit=0x08)
    assert f"labels of case BRATS_003: dtype int8, expected uint8 in {flipped}/labels/000002;" in refusal(
        flipped, read_case(2)
    )
    assert problems(flipped) == [("labels/000002", "dtype int8, expected uint8")]


def test_a_damaged_hdf5_shape_is_refused(stores: dict[str, Path], tmp_path: Path) -> None:
    store = stores["earliest"]
    with open_store(store) as opened:
        crop = list(opened.crop(0).shape)
    flipped = damaged(store, tmp_path, dims_offset(store, "images/000000"), value=crop[2] - 1)  # z short
    problem = f"shape {[4, *crop[:2], crop[2] - 1]}, expected {[4, *crop]}"
    assert f"{problem} in {flipped}/images/000000;" in refusal(flipped, read_case(0))
    assert problems(flipped) == [("images/000000", problem)]


@pytest.mark.parametrize(("store", "manifest_of"), [("zarr", "patches"), ("patches", "hdf5")])
def test_a_manifest_of_the_other_store_kind_is_one_line(
    stores: dict[str, Path], store: str, manifest_of: str, tmp_path: Path
) -> None:
    """A patch store's manifest for a volume store (or the reverse) was a KeyError traceback."""
    from click.testing import CliRunner

    from brainprep.cli import main
    from brainprep.errors import ConfigError

    manifest = build_manifest(stores[manifest_of])
    with pytest.raises(ConfigError, match=r"the manifest is of a \w+ store, .* is a \w+ store"):
        verify_against_manifest(stores[store], manifest)
    path = tmp_path / "other.json"
    path.write_text(json.dumps(manifest))
    result = CliRunner().invoke(
        main, ["verify", str(stores[store]), "--manifest", str(path), "--no-progress"]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output and "manifest is of a" in result.output


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_volume_manifest_covers_the_group_documents(
    stores: dict[str, Path], tmp_path: Path, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The groups' zarr.json (images/, labels/, tumour_corners/...) were not hashed: a flipped or deleted
    one verified OK against the manifest. A version 1 manifest (without them) still verifies."""
    manifest = build_manifest(stores[fmt])
    groups = ("images", "labels", "tumour_corners", "tumour_voxels", "class_locations")
    if fmt == "hdf5":  # HDF5 groups carry no attributes: nothing more to hash (their headers are checked)
        assert not any(key.split("/")[0] in groups and "/attrs/" in key for key in manifest["documents"])
        return
    assert {f"{group}/zarr.json" for group in groups} <= set(manifest["documents"]), manifest["documents"]
    for damage in ("flip", "delete"):
        store = copy_store(stores[fmt], tmp_path / damage)
        document = store / "tumour_corners" / "zarr.json"
        if damage == "delete":
            document.unlink()
        else:
            document.write_text(document.read_text().replace('"group"', '"groop"'))
        rows = verify_against_manifest(store, manifest)
        assert [(d.array, d.key) for d in rows] == [("metadata", "tumour_corners/zarr.json")], rows
    old = {**manifest, "version": 1}
    group_documents = {f"{group}/zarr.json" for group in groups}
    old["documents"] = {k: v for k, v in manifest["documents"].items() if k not in group_documents}
    with caplog.at_level("WARNING"):
        assert verify_against_manifest(stores[fmt], old) == []
    assert any("version 1: its group documents are not covered" in r.message for r in caplog.records)


# -- 2. Zarr array metadata against the store and the case table ---------------------------------------
@pytest.mark.parametrize(
    ("key", "field", "damage", "problem"),
    [
        ("images/000000", "shape", lambda s: [s[0], s[1] + 1, s[2], s[3]], "shape {new}, expected {old}"),
        ("images/000001", "shape", lambda s: [s[0], s[1], s[2], s[3] - 1], "shape {new}, expected {old}"),
        ("labels/000002", "shape", lambda s: [s[0], s[1], s[2] - 1], "shape {new}, expected {old}"),
        ("images/000000", "data_type", lambda d: "int16", "dtype int16, expected float16"),
        ("labels/000001", "data_type", lambda d: "int8", "dtype int8, expected uint8"),
    ],
)
def test_a_damaged_zarr_array_metadata_is_refused_on_read_and_by_verify(
    stores: dict[str, Path], tmp_path: Path, key: str, field: str, damage: Callable, problem: str
) -> None:
    """An edited ``zarr.json`` passes every chunk checksum (it is not a chunk): a wrong shape read a crop
    of another shape (or a bare ValueError from the window reader), a same-size dtype other values."""
    store = copy_store(stores["zarr"], tmp_path)
    meta = store / key / "zarr.json"
    doc = json.loads(meta.read_text())
    old, doc[field] = doc[field], damage(doc[field])
    meta.write_text(json.dumps(doc))
    problem = problem.format(new=doc[field], old=old)
    index = int(key.split("/")[1])
    name = key.split("/")[0]
    assert refusal(store, read_case(index)) == (
        f"{name} of case BRATS_00{index + 1}: {problem} in {store}/{key}; run `brainprep verify {store}`"
    )
    window = refusal(store, lambda opened: opened.read_window(index, (0, 0, 0), standardize="volume-nonzero"))
    assert problem in window
    assert problems(store) == [(key, problem)]


@pytest.mark.parametrize(("key", "order"), [("images/000000", [0, 3, 1, 2]), ("labels/000001", [2, 0, 1])])
def test_an_edited_chunk_axis_order_is_refused_on_read_and_by_verify(
    stores: dict[str, Path], tmp_path: Path, key: str, order: list[int]
) -> None:
    """The TransposeCodec's order says how a chunk's bytes map to voxels: another order reads the same
    bytes, checksums and all, scrambled (plain zarr does so)."""
    store = copy_store(stores["zarr"], tmp_path)
    meta = store / key / "zarr.json"
    doc = json.loads(meta.read_text())
    transpose = doc["codecs"][0]["configuration"]["codecs"][0]
    assert transpose["name"] == "transpose"
    want, transpose["configuration"]["order"] = tuple(transpose["configuration"]["order"]), order
    meta.write_text(json.dumps(doc))
    problem = f"chunk axis order (TransposeCodec) {tuple(order)}, expected {want}"
    index = int(key.split("/")[1])
    assert problem in refusal(store, read_case(index))
    assert problems(store) == [(key, problem)]


# -- 3. a resume rebuilds a done case whose data is gone -----------------------------------------------
def interrupted_build(data: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build killed after every case is done, before sealing."""

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed before sealing")

    with monkeypatch.context() as patch:
        patch.setattr(driver, "_seal", killed)
        with pytest.raises(KeyboardInterrupt):
            build_patches(data, store, VOLUMES, workers=1)


@pytest.mark.parametrize(
    ("suffix", "lost"),
    [
        ("h5", "v.h5.build/parts/000001.npz"),
        ("zarr", "v.zarr/images/000001/c/0/0/0/0"),
        ("zarr", "v.zarr/labels/000001/zarr.json"),
    ],
)
def test_resume_rebuilds_a_done_case_whose_data_is_gone(
    data: Path,
    stores: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
    lost: str,
) -> None:
    store = tmp_path / f"v.{suffix}"
    interrupted_build(data, store, monkeypatch)
    (tmp_path / lost).unlink()
    summary = build_patches(data, store, VOLUMES, workers=1)
    assert summary.resumed_cases == 2 and summary.cases == 3  # case 1 was built again
    assert problems(store) == []
    with open_store(store) as resumed, open_store(stores["hdf5" if suffix == "h5" else "zarr"]) as whole:
        assert resumed.metadata["cases"] == whole.metadata["cases"]
        for index in whole.case_indices():
            for got, want in zip(resumed.read_volume(index), whole.read_volume(index), strict=True):
                np.testing.assert_array_equal(got, want)


def test_seal_refuses_a_done_case_whose_part_is_gone(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last guard: a part lost after the resume looked (here: never looked) is not sealed as complete."""
    store = tmp_path / "v.h5"
    interrupted_build(data, store, monkeypatch)
    part = tmp_path / "v.h5.build" / "parts" / "000002.npz"
    part.unlink()
    monkeypatch.setattr(driver, "_forget_lost", lambda store, params, state, done: done)
    with pytest.raises(
        StoreError, match=rf"cannot seal .*: case BRATS_003 is marked done but {part} is missing"
    ):
        build_patches(data, store, VOLUMES, workers=1)
    assert not store.exists()


# -- 5. a raw window is the caller's own array -----------------------------------------------------------
@pytest.mark.parametrize("size", [(1, 1, 8), (1, 8, 1), (8, 8, 8), (16, 16, 8)])
def test_raw_windows_never_share_memory(stores: dict[str, Path], size: tuple[int, int, int]) -> None:
    """(1, 1, 8) is C-contiguous in the slice-major scratch buffer: np.ascontiguousarray returned the buffer
    itself, which the next read overwrote."""
    with open_store(stores["zarr"]) as opened:
        first, _ = opened.read_window(0, (10, 10, 2), size)
        kept = first.copy()
        second, _ = opened.read_window(1, (12, 14, 3), size)
        assert not np.shares_memory(first, second)
        np.testing.assert_array_equal(first, kept)
        assert first.flags.c_contiguous and first.dtype == np.float16 and first.shape == (4, *size)
        image, _ = opened.read_volume(0)
        np.testing.assert_array_equal(first, image[:, 10 : 10 + size[0], 10 : 10 + size[1], 2 : 2 + size[2]])


# -- 4. a channel flat over the brain standardizes to 0 --------------------------------------------------
def test_resolved_std_is_zero_below_the_dtypes_resolution() -> None:
    mean, std = np.array([1000.0, 1000.0, 0.0, 5.0]), np.array([0.0, 0.4, 0.0, 1.0])
    # float16 near 1000: half an ulp is 1000 * 2**-11 = 0.488
    np.testing.assert_array_equal(resolved_std(mean, std, np.float16), [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(resolved_std(mean, std, np.float32), [0.0, 0.4, 0.0, 1.0])
    np.testing.assert_array_equal(resolved_std(mean, std, np.int16), [0.0, 0.4, 0.0, 1.0])


def test_a_channel_constant_over_the_brain_reads_as_zero(tmp_path: Path) -> None:
    """T2w is 1000.3 over the whole brain: float16 stores it as 1000.5. Its statistics are those of the
    stored values (std exactly 0), and a read gives 0 there, as the course's std-0 rule does, not the
    0.2 rounding error divided by max(std, 1e-8) = 2e7."""
    rng = np.random.default_rng(0)
    image = np.zeros((4, 30, 30, 20), np.float32)
    image[:, 8:22, 8:22, 4:16] = rng.integers(1, 900, (4, 14, 14, 12))
    image[3, 8:22, 8:22, 4:16] = 1000.3
    label = np.zeros((30, 30, 20), np.uint8)
    label[10:20, 10:20, 6:14] = 1
    write_brats_case(tmp_path / "d", "BraTS-GLI-00001-000", image, label, image_dtype="float32")
    build_patches(tmp_path / "d", tmp_path / "c.zarr", ONE_SPLIT, workers=1)
    with open_store(tmp_path / "c.zarr") as opened:
        entry = opened.cases[0]
        assert entry["mean"][3] == 1000.5 and entry["std"][3] == 0.0
        window, _ = opened.read_window(0, (0, 0, 0), standardize="volume-nonzero")
        np.testing.assert_array_equal(window[3], 0)
        brain = (window[:3] != 0).any(axis=0)
        np.testing.assert_allclose(window[:3, brain].std(axis=1), 1.0, rtol=0.2)  # the others standardized
        out = (np.empty((4, *PATCH), np.float16), np.empty(PATCH, np.uint8))
        into, _ = opened.read_window(0, (0, 0, 0), standardize="volume-nonzero", out=out)
        assert np.isfinite(into).all() and (into[3] == 0).all()
        # a store built before: statistics of the float32 values (mean 1000.3, std 0) still read as 0
        raw, _ = opened.read_window(0, (0, 0, 0))
        before = {**entry, "mean": [*entry["mean"][:3], 1000.300048828125], "std": entry["std"]}
        old = standardize_window(raw, "volume-nonzero", before, np.empty(raw.shape, np.float32))
        np.testing.assert_array_equal(old[3], 0)
        np.testing.assert_array_equal(old[:3], window[:3])


# -- 6. float16 refusals name the source file --------------------------------------------------------------
@pytest.mark.parametrize(
    ("channel", "value", "problem"),
    [
        (1, 70000.0, r"intensity 70000 in channel T1w exceeds the float16 range"),
        (3, 1e-9, r"1 nonzero voxels of channel T2w round to 0 in float16"),
    ],
)
def test_float16_refusals_name_the_source_file(
    tmp_path: Path, channel: int, value: float, problem: str
) -> None:
    image = np.zeros((4, 30, 30, 20), np.float32)
    image[:, 8:22, 8:22, 4:16] = 100.0
    image[channel, 12, 12, 8] = value
    label = np.zeros((30, 30, 20), np.uint8)
    label[10:20, 10:20, 6:14] = 1
    case = write_brats_case(tmp_path / "d", "BraTS-GLI-00001-000", image, label, image_dtype="float32")
    with pytest.raises(InvalidValueError, match=problem) as refused:
        build_patches(tmp_path / "d", tmp_path / "s.zarr", ONE_SPLIT, workers=1)
    assert str(refused.value).endswith(f"in case BraTS-GLI-00001-000 ({case.image_paths[channel]})")
    shutil.rmtree(tmp_path / "s.zarr", ignore_errors=True)


def test_the_training_loops_torch_standardization_zeroes_a_flat_channel_as_the_reader_does() -> None:
    """A float16 window of an old store (statistics of the float32 values: T2w std 0.01 around 1000, below
    float16's resolution there): the training loop's torch formula gives 0 in that channel, as
    ``standardize_window`` does, and the reader's values in the others."""
    import torch

    from brainnet.data.standardize import standardize_with_statistics_torch

    rng = np.random.default_rng(0)
    window = (rng.normal(100.0, 10.0, (4, 8, 8, 4)) + 200.0).astype(np.float16)
    window[3] = 1000.5
    case = {"mean": np.array([300.0, 300.0, 300.0, 1000.3]), "std": np.array([10.0, 10.0, 10.0, 0.01])}
    read = standardize_window(window, "volume-nonzero", case, np.empty(window.shape, np.float32))
    got = standardize_with_statistics_torch(
        torch.from_numpy(window)[None], torch.tensor(case["mean"])[None], torch.tensor(case["std"])[None]
    )[0].numpy()
    assert (read[3] == 0).all() and (got[3] == 0).all()
    np.testing.assert_allclose(got, read, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["zarr", "hdf5"])
def test_a_volume_store_without_its_integrity_block_is_refused(
    stores: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """Every volume store was written sealed: one without its block has had its metadata edited."""
    store = copy_store(stores[kind], tmp_path)
    edit_store_metadata(store, lambda metadata: metadata.pop(integrity.INTEGRITY_KEY))
    with pytest.raises(StoreCorruptError, match="integrity block is missing"):
        open_store(store)
    assert (integrity.INTEGRITY_KEY, integrity.MISSING_SEAL) in problems(store)
