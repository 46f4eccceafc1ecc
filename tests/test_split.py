"""Split stage: seeded case split and the JSON split file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainprep.errors import ConfigError
from brainprep.split import read_split_file, split_cases

CASES = [f"BRATS_{i:03d}" for i in range(1, 21)]


def val_of(split: dict[str, str]) -> set[str]:
    return {case_id for case_id, name in split.items() if name == "val"}


def test_split_is_deterministic_and_covers_every_case() -> None:
    split = split_cases(CASES, 0.2, seed=0)
    assert split == split_cases(CASES, 0.2, seed=0)
    assert sorted(split) == CASES
    assert set(split.values()) == {"train", "val"}
    assert len(val_of(split)) == 4


def test_split_is_independent_of_input_order() -> None:
    assert split_cases(CASES, 0.3, seed=4) == split_cases(list(reversed(CASES)), 0.3, seed=4)
    assert split_cases(tuple(CASES[::3] + CASES[1::3] + CASES[2::3]), 0.3, seed=4) == split_cases(
        CASES, 0.3, 4
    )


def test_split_depends_on_seed() -> None:
    draws = {frozenset(val_of(split_cases(CASES, 0.2, seed))) for seed in range(5)}
    assert len(draws) > 1


def test_adding_a_case_moves_at_most_one_other_case() -> None:
    before = val_of(split_cases(CASES, 0.2, seed=1))
    after = val_of(split_cases([*CASES, "BRATS_999"], 0.2, seed=1))  # round(21 * 0.2) = 4, as before
    assert len(after) == len(before) == 4
    assert len((before - after) | (after - before - {"BRATS_999"})) <= 1


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [
        (10, 0.2, 2),
        (10, 0.25, 2),  # round(2.5) = 2 (half to even)
        (10, 0.0, 0),
        (2, 0.1, 1),  # at least one val case when val_fraction > 0 and n >= 2
        (3, 0.9, 2),  # round(2.7) = 3, capped at n - 1: at least one case trains
        (1, 0.6, 0),
        (0, 0.5, 0),
    ],
)
def test_val_count(n: int, fraction: float, n_val: int) -> None:
    split = split_cases(CASES[:n], fraction, seed=0)
    assert len(split) == n
    assert len(val_of(split)) == n_val


def test_split_rejects_duplicates_and_bad_fraction() -> None:
    with pytest.raises(ConfigError, match="BRATS_001"):
        split_cases(["BRATS_001", "BRATS_002", "BRATS_001"], 0.5, seed=0)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_cases(CASES, 1.0, seed=0)


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data))
    return path


def test_read_split_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"train": ["BRATS_003", "BRATS_001"], "val": ["BRATS_002"]})
    split = read_split_file(path, ["BRATS_001", "BRATS_002", "BRATS_003"])
    assert split == {"BRATS_001": "train", "BRATS_002": "val", "BRATS_003": "train"}
    assert list(split) == ["BRATS_001", "BRATS_002", "BRATS_003"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": ["BRATS_001", "BRATS_002"], "val": ["BRATS_002", "BRATS_003"]}, "in both.*BRATS_002"),
        ({"train": ["BRATS_001", "BRATS_002"], "val": ["BRATS_003", "BRATS_777"]}, "unknown.*BRATS_777"),
        ({"train": ["BRATS_001"], "val": ["BRATS_003"]}, "neither.*BRATS_002"),
        ({"train": ["BRATS_001", "BRATS_002"], "valid": ["BRATS_003"]}, "found keys.*valid"),
        (["BRATS_001"], "found keys list"),
        ({"train": "BRATS_001", "val": []}, '"train" must be a list'),
    ],
)
def test_read_split_file_errors(tmp_path: Path, data: object, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=message) as info:
        read_split_file(path, ["BRATS_001", "BRATS_002", "BRATS_003"])
    text = str(info.value)
    assert str(path) in text
    assert "\n" not in text


def test_read_split_file_lists_few_ids(tmp_path: Path) -> None:
    path = write(tmp_path, {"train": [], "val": []})
    with pytest.raises(ConfigError, match="and 15 more") as info:
        read_split_file(path, CASES)
    assert "\n" not in str(info.value)


def test_read_split_file_missing_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_split_file(tmp_path / "absent.json", ["BRATS_001"])
    path = tmp_path / "broken.json"
    path.write_text("{train: ")
    with pytest.raises(ConfigError, match="not readable JSON") as info:
        read_split_file(path, ["BRATS_001"])
    assert str(path) in str(info.value)
