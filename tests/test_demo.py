"""The end-to-end demo on a tiny configuration: every stage runs and leaves its outputs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from brainnet.cli import main
from brainnet.demo import DemoParams, format_result, run_demo

TINY = DemoParams(
    n_cases=4,
    small_tumour_every=0,
    shape=(48, 48, 24),
    patch_size=(16, 16, 8),
    patches_per_case=4,
    base_filters=2,
    depth=2,
    epochs=1,
    steps_per_epoch=2,
    batch_size=2,
)


@pytest.mark.parametrize("kind", ["volumes", "patches"])
def test_run_demo_writes_every_output(tmp_path, kind):
    result = run_demo(tmp_path / "demo", TINY.replace(kind=kind), progress=False, echo=lambda _: None)

    for name, path in result.outputs.items():
        assert path.exists(), name
    prediction = nib.load(result.outputs["prediction"])
    source = nib.load(tmp_path / "demo" / "data" / "labelsTr" / result.outputs["prediction"].name)
    assert prediction.shape == source.shape
    np.testing.assert_allclose(prediction.affine, source.affine)
    assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3}
    metrics = json.loads(result.outputs["evaluation json"].read_text())
    assert metrics["split"] == "val"
    # a volume store scores whole validation crops, a patch store its validation patches
    assert metrics["unit"] == ("crops" if kind == "volumes" else "patches")
    assert (tmp_path / "demo" / f"{kind}.zarr" / "zarr.json").exists()
    assert result.outputs["training patches picture"].read_bytes().startswith(b"\x89PNG")
    assert result.outputs["training curves"].read_bytes().startswith(b"\x89PNG")
    assert set(result.val_dice) == set(metrics["overall"])
    assert all(0.0 <= v <= 1.0 for v in result.val_dice.values())
    assert result.scan_metrics is not None
    report = format_result(result)
    assert "validation dice_labelmap" in report and str(result.outputs["checkpoint"]) in report
    assert ("whole validation cases" in report) == (kind == "volumes")


def test_demo_cli_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "old.txt").write_text("earlier run")
    outcome = CliRunner().invoke(main, ["demo", str(tmp_path), "--no-progress"])
    assert outcome.exit_code == 2
    assert "is not empty" in outcome.output
    assert (tmp_path / "old.txt").exists()


def test_demo_refuses_an_unknown_kind():
    from brainprep.errors import ConfigError

    with pytest.raises(ConfigError, match="demo store kind must be one of"):
        DemoParams(kind="slices")
