"""Tests of the nnU-Net baseline's own pieces (no nnU-Net run): ``python -m pytest benchmarks/ -q``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_baseline import _dataset_id, _nnunet_dataset_json, case_data_bytes, nnunet_patch_size


def test_dataset_json_as_nnunet_converts_msd(tmp_path: Path) -> None:
    msd = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(msd))
    out = _nnunet_dataset_json(tmp_path, 1)
    assert out["channel_names"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert out["labels"] == {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}
    assert out["numTraining"] == 1
    assert out["file_ending"] == ".nii.gz"
    assert "training" not in out and "modality" not in out


@pytest.mark.parametrize(
    ("transpose", "expected"), [([0, 1, 2], (16, 160, 96)), ([2, 0, 1], (96, 16, 160))]
)  # fmt: skip
def test_patch_size_follows_sitk_order_and_transpose(tmp_path: Path, transpose: list[int], expected) -> None:
    folder = tmp_path / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps({"transpose_forward": transpose}))
    # ours (X, Y, Z) = (96, 160, 16); SimpleITK's arrays are (z, y, x) = (16, 160, 96)
    assert nnunet_patch_size(folder, (96, 160, 16)) == expected


def test_case_data_bytes_counts_case_files_only(tmp_path: Path) -> None:
    (tmp_path / "BRATS_001.b2nd").write_bytes(b"x" * 100)
    (tmp_path / "BRATS_001_seg.b2nd").write_bytes(b"x" * 10)
    (tmp_path / "BRATS_001.pkl").write_bytes(b"x" * 1)
    (tmp_path / "notes.json").write_bytes(b"x" * 1000)
    assert case_data_bytes(tmp_path) == (111, 1)


def test_dataset_id_from_folder_name() -> None:
    assert _dataset_id(Path("/raw/Dataset501_BRATSsynth")) == 501
    with pytest.raises(ValueError, match="DatasetXXX_Name"):
        _dataset_id(Path("/raw/Task01_BrainTumour"))
