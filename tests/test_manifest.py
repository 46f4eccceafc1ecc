"""Manifest and verify: hashes of every shard/chunk, a flipped byte traced to its slot and case, the
store's internal consistency, and the MSD Task01 recipe."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import copy_store, flip_byte

from brainprep.cli import main
from brainprep.errors import ConfigError
from brainprep.manifest import (
    Difference,
    build_manifest,
    chunk_key,
    load_manifest,
    verify_against_manifest,
)
from brainprep.params import BuildParams, SamplingParams
from brainprep.recipe import load_recipe, msd_task01_recipe, recipe_dict, write_recipe
from brainprep.spec import MSD_SPEC
from brainprep.store.shards import chunk_ranges, crc32c
from brainprep.verify import check_store_consistency

REPO = Path(__file__).resolve().parents[1]
PATCHES_PER_CASE = 4
CASE_IDS = ("BRATS_001", "BRATS_002", "BRATS_003", "BRATS_004")


# -------------------------------------------------------------------------------------------------------
# Pure pieces.


def test_chunk_key_encodings() -> None:
    assert chunk_key((1, 0, 2), {"name": "default", "configuration": {"separator": "/"}}) == "c/1/0/2"
    assert chunk_key((1, 0), {"name": "default", "configuration": {"separator": "."}}) == "c.1.0"
    assert chunk_key((3, 4), {"name": "v2", "configuration": {"separator": "."}}) == "3.4"
    assert chunk_key((), {"name": "v2"}) == "0"


def test_chunk_ranges_reads_the_checked_index() -> None:
    # three inner chunks: 5 bytes at 0, empty, 3 bytes at 5; index (3 x (offset, nbytes) uint64) + crc32c
    empty = 2**64 - 1
    index = np.array([[0, 5], [empty, empty], [5, 3]], dtype="<u8").tobytes()
    shard = b"AAAAABBB" + index + crc32c(index)
    assert chunk_ranges(shard, 3) == [(0, 5), None, (5, 3)]
    assert chunk_ranges(b"AAAAABBB" + index + b"CRC!", 3) is None  # the index fails its crc32c
    broken = np.array([[0, 5], [empty, empty], [5, 300]], dtype="<u8").tobytes()
    assert chunk_ranges(b"AAAAABBB" + broken + crc32c(broken), 3) is None  # points outside the shard
    assert chunk_ranges(b"short", 3) is None


def test_difference_names_slots_and_case() -> None:
    text = str(Difference("images", "c/1/0/0/0/0", "sha256 ab != manifest cd", (4, 7), ("BRATS_002",)))
    assert text == "images c/1/0/0/0/0: sha256 ab != manifest cd [slots 4-7; case BRATS_002]"
    assert str(Difference("labels", "c/5/0/0/0", "changed", (5, 5), ("A", "B"))).endswith(
        "[slot 5; cases A, B]"
    )


# -------------------------------------------------------------------------------------------------------
# Built stores (4 synthetic cases, K=4 slots each; BRATS_004's tumour is too small: its slots stay empty).


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from brainprep.builder import build_patches
    from brainprep.synth import SynthParams, write_synthetic_dataset

    root = tmp_path_factory.mktemp("manifest")
    data = write_synthetic_dataset(root / "data", SynthParams(n_cases=4, shape=(64, 64, 32), seed=0))
    params = BuildParams(sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=PATCHES_PER_CASE))
    stores = {}
    for suffix in ("zarr", "h5"):
        stores[suffix] = root / f"store.{suffix}"
        build_patches(data, stores[suffix], params, workers=1)
    return stores


def test_zarr_manifest_content(built: dict[str, Path]) -> None:
    store = built["zarr"]
    manifest = build_manifest(store)
    assert manifest["kind"] == "brainprep-manifest" and manifest["store"]["format"] == "zarr"
    assert BuildParams.from_dict(manifest["params"]).sampling.patches_per_case == PATCHES_PER_CASE
    assert manifest["spec"] == MSD_SPEC.to_dict()  # the dataset spec travels with the manifest
    assert [row["case_id"] for row in manifest["cases"]] == list(CASE_IDS)
    assert [row["first_slot"] for row in manifest["cases"]] == [0, 4, 8, 12]
    assert manifest["cases"][3]["valid_patches"] == 0 and manifest["cases"][3]["skip_reason"]
    assert sorted(manifest["split"]["train"] + manifest["split"]["val"]) == list(CASE_IDS)
    images = manifest["arrays"]["images"]
    assert images["shape"] == [16, 4, 32, 32, 8] and images["dtype"] == "float16"
    assert images["chunks"] == [1, 4, 32, 32, 8] and images["shards"] == [4, 4, 32, 32, 8]
    assert [c["name"] for c in images["codecs"]] == ["bytes", "blosc", "crc32c"]
    # every hash is the sha256 of the file on disk; empty shards (the skipped case) are not stored
    on_disk = {
        p.relative_to(store / "images").as_posix() for p in (store / "images" / "c").rglob("*") if p.is_file()
    }
    assert set(images["stored"]) == on_disk == {"c/0/0/0/0/0", "c/1/0/0/0/0", "c/2/0/0/0/0"}
    for key, entry in images["stored"].items():
        data = (store / "images" / key).read_bytes()
        assert entry == {**entry, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        assert len(entry["inner"]) == PATCHES_PER_CASE
    assert (
        manifest["documents"]["zarr.json"] == hashlib.sha256((store / "zarr.json").read_bytes()).hexdigest()
    )
    assert "labels/zarr.json" in manifest["documents"]


def test_unchanged_stores_verify(built: dict[str, Path]) -> None:
    for store in built.values():
        assert verify_against_manifest(store, build_manifest(store)) == []
        assert check_store_consistency(store) == []


def test_flipped_byte_in_a_zarr_shard_is_traced_to_slot_and_case(
    built: dict[str, Path], tmp_path: Path
) -> None:
    manifest_path = tmp_path / "m.json"
    runner = CliRunner()
    result = runner.invoke(main, ["manifest", str(built["zarr"]), "-o", str(manifest_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    store = copy_store(built["zarr"], tmp_path)
    shard = store / "images" / "c" / "1" / "0" / "0" / "0" / "0"  # case 1 = BRATS_002, slots 4..7
    ranges = chunk_ranges(shard.read_bytes(), PATCHES_PER_CASE)
    offset, nbytes = ranges[2]  # inner chunk 2 = slot 6
    flip_byte(shard, offset + nbytes // 2)

    differences = verify_against_manifest(store, load_manifest(manifest_path))
    assert [(d.array, d.key, d.slots, d.case_ids) for d in differences] == [
        ("images", "c/1/0/0/0/0", (6, 6), ("BRATS_002",)),  # the store's own check: the chunk's crc32c
        ("images", "c/1/0/0/0/0", (4, 7), ("BRATS_002",)),  # then the hashes
        ("images", "c/1/0/0/0/0 inner chunk 2", (6, 6), ("BRATS_002",)),
    ]
    assert "checksum mismatch (crc32c)" in differences[0].problem
    result = runner.invoke(main, ["verify", str(store), "--manifest", str(manifest_path), "--no-progress"])
    assert result.exit_code == 1
    assert "images c/1/0/0/0/0: sha256" in result.output
    assert (
        "images c/1/0/0/0/0 inner chunk 2: inner chunk bytes changed [slot 6; case BRATS_002]"
        in result.output
    )


def test_flipped_byte_in_an_hdf5_chunk_is_traced_to_slot_and_case(
    built: dict[str, Path], tmp_path: Path
) -> None:
    manifest_path = tmp_path / "m.json"
    result = CliRunner().invoke(
        main, ["manifest", str(built["h5"]), "-o", str(manifest_path), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    manifest = load_manifest(manifest_path)
    assert manifest["arrays"]["labels"]["chunks"] == [1, 32, 32, 8]
    assert {c["name"] for c in manifest["arrays"]["labels"]["codecs"]} == {"shuffle", "gzip", "fletcher32"}
    store = copy_store(built["h5"], tmp_path)
    with h5py.File(store, "r") as handle:
        info = handle["labels"].id.get_chunk_info_by_coord((5, 0, 0, 0))
    flip_byte(store, info.byte_offset + info.size // 2)

    differences = verify_against_manifest(store, manifest)
    assert [(d.array, d.key, d.slots, d.case_ids) for d in differences] == [
        ("table", "slot 5", (5, 5), ("BRATS_002",)),  # the store's own check: the chunk does not decode
        ("labels", "c/5/0/0/0", (5, 5), ("BRATS_002",)),
    ]
    result = CliRunner().invoke(
        main, ["verify", str(store), "--manifest", str(manifest_path), "--no-progress"]
    )
    assert result.exit_code == 1
    assert "labels c/5/0/0/0: sha256" in result.output and "[slot 5; case BRATS_002]" in result.output


def test_changed_metadata_document_is_reported(built: dict[str, Path], tmp_path: Path) -> None:
    manifest = build_manifest(built["zarr"])
    store = copy_store(built["zarr"], tmp_path)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["brainprep"]["summary"]["seconds"] = 123.0
    (store / "zarr.json").write_text(json.dumps(meta))
    differences = verify_against_manifest(store, manifest)
    assert [(d.array, d.key) for d in differences] == [("metadata", "brainprep"), ("metadata", "zarr.json")]
    assert "recorded digest" in differences[0].problem


def test_a_damaged_store_gets_no_manifest(built: dict[str, Path], tmp_path: Path) -> None:
    """A manifest sealed a store with a bad chunk, and `verify --manifest` then said OK: a manifest is
    written only for a store that passes its own checks."""
    store = copy_store(built["zarr"], tmp_path)
    shard = store / "labels" / "c" / "1" / "0" / "0" / "0"
    offset, nbytes = chunk_ranges(shard.read_bytes(), PATCHES_PER_CASE)[2]
    flip_byte(shard, offset + nbytes // 2)
    output = tmp_path / "m.json"
    result = CliRunner().invoke(main, ["manifest", str(store), "-o", str(output), "--no-progress"])
    assert result.exit_code == 1 and not output.exists()
    (line,) = result.output.splitlines()
    assert line.startswith(
        f"Error: {store} fails its own checks, so no manifest was written: labels c/1/0/0/0"
    )
    assert "checksum mismatch (crc32c)" in line and "[slot 6; case BRATS_002]" in line


def test_verify_with_a_manifest_runs_the_stores_own_checks_too(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest written over damage (as brainprep wrote them before it checked the store first): the
    hashes match, the chunk's crc32c does not, and verify --manifest says so."""
    import brainprep.manifest as manifest_module

    store = copy_store(built["zarr"], tmp_path)
    shard = store / "images" / "c" / "1" / "0" / "0" / "0" / "0"
    offset, nbytes = chunk_ranges(shard.read_bytes(), PATCHES_PER_CASE)[1]
    flip_byte(shard, offset + nbytes // 2)
    monkeypatch.setattr(manifest_module, "_refuse_damaged", lambda location, differences: None)
    sealed = tmp_path / "sealed.json"
    manifest_module.write_manifest(store, sealed)
    monkeypatch.undo()
    result = CliRunner().invoke(main, ["verify", str(store), "--manifest", str(sealed), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "images c/1/0/0/0/0: chunk 1 checksum mismatch (crc32c)" in result.output
    assert "[slot 5; case BRATS_002]" in result.output and "sha256" not in result.output


def test_manifest_versions(built: dict[str, Path], tmp_path: Path) -> None:
    """Version 1 manifests still load (and verify, see test_volume_integrity); an unknown one is refused
    in one line saying what to do."""
    manifest = build_manifest(built["zarr"])
    assert manifest["version"] == 2
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**manifest, "version": 1}))
    assert verify_against_manifest(built["zarr"], load_manifest(path)) == []
    path.write_text(json.dumps({**manifest, "version": 9}))
    with pytest.raises(
        ConfigError, match=r"has version 9, this brainprep reads versions 1, 2: write it again"
    ):
        load_manifest(path)


def test_consistency_finds_a_wrong_table_row(built: dict[str, Path], tmp_path: Path) -> None:
    import zarr

    store = copy_store(built["zarr"], tmp_path)
    fractions = zarr.open_array(store / "patch_tumour_fraction", mode="r+")
    values = fractions[:]
    values[5] += 0.25
    fractions[:] = values
    differences = check_store_consistency(store, check_images=False)
    assert len(differences) == 2
    assert (differences[0].array, differences[0].key) == ("patch_tumour_fraction", "(table)")
    assert "recorded digest" in differences[0].problem
    assert (differences[1].key, differences[1].slots, differences[1].case_ids) == (
        "slot 5",
        (5, 5),
        ("BRATS_002",),
    )
    assert "tumour fraction" in differences[1].problem
    result = CliRunner().invoke(main, ["verify", str(store), "--no-progress"])
    assert result.exit_code == 1 and "table slot 5: tumour fraction" in result.output


def test_consistency_finds_a_damaged_label_chunk(built: dict[str, Path], tmp_path: Path) -> None:
    store = copy_store(built["zarr"], tmp_path)
    shard = store / "labels" / "c" / "1" / "0" / "0" / "0"
    offset, nbytes = chunk_ranges(shard.read_bytes(), PATCHES_PER_CASE)[2]
    flip_byte(shard, offset + nbytes // 2)
    differences = check_store_consistency(store, check_images=False)
    assert differences and {d.slots for d in differences} == {(6, 6)}


def test_consistency_reports_an_incomplete_store(built: dict[str, Path], tmp_path: Path) -> None:
    store = copy_store(built["zarr"], tmp_path)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["brainprep"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(meta))
    differences = check_store_consistency(store)
    assert [(d.array, d.key) for d in differences] == [("metadata", "complete")]


def test_load_manifest_refuses_other_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"kind": "brainprep-recipe"}))
    with pytest.raises(ConfigError, match="is not a brainprep manifest"):
        load_manifest(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read manifest"):
        load_manifest(path)


# -------------------------------------------------------------------------------------------------------
# Recipes.


def test_committed_msd_recipe_is_the_generated_one(tmp_path: Path) -> None:
    committed = REPO / "manifests" / "msd-task01-default.json"
    fresh = tmp_path / "fresh.json"
    recipe = msd_task01_recipe()
    write_recipe(fresh, BuildParams.from_dict(recipe["params"]), recipe["splits"], recipe["description"])
    assert committed.read_text() == fresh.read_text()
    params, splits = load_recipe(committed)
    assert params == BuildParams()
    assert params.sampling.patch_size == (160, 160, 16) and params.sampling.patches_per_case == 20
    assert len(splits) == 484 and min(splits) == "BRATS_001" and max(splits) == "BRATS_484"
    assert (
        sum(v == "train" for v in splits.values()) == 387 and sum(v == "val" for v in splits.values()) == 97
    )


def test_recipe_round_trip_and_errors(tmp_path: Path) -> None:
    params = BuildParams(sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=3), seed=7)
    path = write_recipe(tmp_path / "r.json", params, {"B": "val", "A": "train"}, "tiny")
    assert load_recipe(path) == (params, {"A": "train", "B": "val"})

    def broken(**changes) -> Path:
        data = {**recipe_dict(params, {"A": "train"}), **changes}
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(data))
        return bad

    with pytest.raises(ConfigError, match="expected kind 'brainprep-recipe'"):
        load_recipe(broken(kind="other"))
    with pytest.raises(ConfigError, match="version 2"):
        load_recipe(broken(version=2))
    with pytest.raises(ConfigError, match=r"split values must be one of .* A='test'"):
        load_recipe(broken(splits={"A": "test"}))
    with pytest.raises(ConfigError, match=r"bad params: .*no parameter"):
        load_recipe(broken(params={**params.to_dict(), "colour": 1}))
    with pytest.raises(ConfigError, match="bad params: patches_per_case must be >= 1"):
        load_recipe(broken(params={**params.to_dict(), "sampling": {"patches_per_case": 0}}))
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"seed": "x"}, "BuildParams.seed: expected int, found 'x'"),
        ({"store": None}, "BuildParams.store: expected an object of StoreParams, found null"),
        ({"sampling": "x"}, "BuildParams.sampling: expected an object of SamplingParams, found 'x'"),
        ({"sampling": {"patch_size": "abc"}}, "SamplingParams.patch_size: expected a list, found 'abc'"),
        ({"sampling": {"patch_size": [8, "a", 8]}}, "SamplingParams.patch_size: expected int, found 'a'"),
        ({"split": {"val_fraction": True}}, "SplitParams.val_fraction: expected float, found True"),
    ],
)
def test_params_of_another_type_are_refused_naming_the_field(change, expected) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        BuildParams.from_dict({**BuildParams().to_dict(), **change})


def test_an_int_for_a_float_and_null_for_an_optional_field_are_read() -> None:
    params = BuildParams.from_dict({"split": {"val_fraction": 0, "split_file": None}})
    assert params.split.val_fraction == 0.0 and params.split.split_file is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not json", "is not readable JSON"),
        ("[1, 2]", "is not a brainprep recipe: expected kind 'brainprep-recipe', found 'list'"),
        ('{"a": 1}', "is not a brainprep recipe"),
        (None, "BuildParams.seed: expected int, found 'x'"),
    ],
)
def test_build_patches_with_a_bad_recipe_is_one_line(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    recipe = tmp_path / "recipe.json"
    if content is None:
        content = json.dumps({**recipe_dict(BuildParams(), {"A": "train"}), "params": {"seed": "x"}})
    recipe.write_text(content)
    store = tmp_path / "s.zarr"
    result = CliRunner().invoke(main, ["build-patches", str(tmp_path), str(store), "--recipe", str(recipe)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--recipe" in errors[0] and str(recipe) in errors[0], result.output
    assert expected in errors[0]
    assert not store.exists()
