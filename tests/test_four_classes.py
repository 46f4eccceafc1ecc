"""A 4-class dataset (BraTS 2024 GLI post-treatment: 4 = resection cavity) end to end.

Builds a store with ``--labels brats2024-gli``, trains a tiny model (4 output channels), evaluates it and
predicts a scan written back in the source values; the Dice of the one checkpoint is the same number in
the training log and in ``evaluate``, and ``predict`` scores the file it writes by the same definition.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import box_label, orient_from_ras, ras_affine, small_case, write_brats_case, write_nifti_file

from brainprep.read import convention_spec, discover_cases, read_case

SPEC = convention_spec("brats2024-gli")
#: canonical class -> BraTS 2024 GLI value (NETC 1, SNFH 2, ET 3, RC 4), by hand.
TO_SOURCE = np.array([0, 2, 1, 3, 4], dtype=np.uint8)
IDS = tuple(f"BraTS-GLI-{i:05d}-100" for i in range(1, 5))


def four_class_label(offset: tuple[int, int, int]) -> np.ndarray:
    """:func:`box_label` plus a 4x10x5 resection cavity (class 4) beside the edema box."""
    label = box_label(offset=offset)
    ox, oy, oz = offset
    label[20 + ox : 24 + ox, 10 + oy : 20 + oy, 5 + oz : 10 + oz] = 4
    return label


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """4 cases in the BraTS 2023+ folder layout, labels in the BraTS 2024 GLI values, LPS on disk."""
    root = tmp_path_factory.mktemp("four") / "data"
    for seed, case_id in enumerate(IDS):
        image, _ = small_case(seed=seed)
        label = four_class_label((seed % 3, seed % 2, seed % 4))
        write_brats_case(root, case_id, image, None, layout="brats2023")
        folder = root / case_id
        affine = nib.load(next(folder.glob("*-t1c.nii.gz"))).affine
        source = orient_from_ras(TO_SOURCE[label], ras_affine(), "LPS")[0]
        write_nifti_file(folder / f"{case_id}-seg.nii.gz", source, affine, "uint8")
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> dict[str, Path]:
    from brainnet.model import ModelConfig
    from brainnet.train import TrainConfig, train
    from brainprep.builder import build_patches
    from brainprep.params import BuildParams, SamplingParams, SplitParams

    root = tmp_path_factory.mktemp("four-run")
    params = BuildParams(
        sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=2),
        split=SplitParams(val_fraction=0.5),
        seed=1,
    )
    store = root / "store.zarr"
    build_patches(data, store, params, workers=1, progress=False, labels="brats2024-gli")
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, lr=1e-3, device="cpu", seed=0, workers=0)
    train(store, root / "run", config, ModelConfig(out_channels=4, depth=2, base_filters=2))
    return {"store": store, "run": root / "run", "root": root}


def test_store_holds_the_spec_and_four_class_fractions(run):
    from brainprep.store import open_store
    from brainprep.verify import check_store_consistency

    store = open_store(run["store"])
    assert store.spec == SPEC and store.metadata["class_names"][-1] == "resection_cavity"
    table = store.table
    valid = np.asarray(table.valid)
    fractions = np.asarray(table.class_fractions)[valid]
    assert fractions.shape[1] == 4 and (fractions[:, 3] > 0).any()  # the cavity is in the table
    for slot in np.flatnonzero(valid)[:3]:  # the fractions are the stored label's
        label = store.read_label(int(slot))
        want = [np.count_nonzero(label == c) / label.size for c in (1, 2, 3, 4)]
        np.testing.assert_allclose(np.asarray(table.class_fractions)[slot], want, atol=1e-6)
    assert check_store_consistency(run["store"]) == []


def test_a_three_channel_model_is_refused(run, tmp_path):
    from brainnet.model import ModelConfig
    from brainnet.train import TrainConfig, train
    from brainprep.errors import ConfigError

    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, device="cpu", workers=0)
    with pytest.raises(ConfigError, match=r"3 output channels.*4 classes"):
        train(run["store"], tmp_path / "bad", config, ModelConfig(depth=2, base_filters=2))
    two_scans = ModelConfig(depth=2, base_filters=2, in_channels=2, out_channels=4)
    with pytest.raises(ConfigError, match=r"2 input channels, the dataset spec 4 channels"):
        train(run["store"], tmp_path / "bad", config, two_scans)


def test_log_evaluate_and_predict_give_the_four_class_dice(run, data, tmp_path):
    from brainnet.cli import main as brainnet_main
    from brainnet.evaluate import evaluate_store
    from brainnet.metrics import confusion_counts, metrics_from_counts
    from brainnet.predict import segment_case
    from brainnet.train import load_checkpoint, load_model
    from brainprep.store import open_store

    best = run["run"] / "best.pt"
    assert load_checkpoint(best)["spec"] == SPEC.to_dict()
    loaded = load_model(best)
    assert loaded.spec == SPEC and loaded.model.head.out_channels == 4
    with (run["run"] / "log.csv").open() as file:
        row = next(csv.DictReader(file))
    evaluation = evaluate_store(loaded.model, open_store(run["store"]), "val", batch_size=2)
    assert set(evaluation.overall) == set(SPEC.targets) and "resection_cavity" in evaluation.overall
    for target in SPEC.targets:
        assert float(row[f"val_dice_labelmap_{target}"]) == pytest.approx(
            evaluation.overall[target]["dice"], abs=1e-12
        )
    assert float(row["val_dice_labelmap"]) == pytest.approx(evaluation.score, abs=1e-12)
    # predict: one case, written back in the BraTS 2024 values, scored by the same definition
    files = discover_cases(data, "brats2024-gli").case(IDS[0])
    out = tmp_path / "pred.nii.gz"
    result = segment_case(loaded, files, out, batch_size=8, source_labels=True)
    assert result.warning is None and set(result.metrics) == set(SPEC.targets)
    written = np.asarray(nib.load(out).dataobj).astype(np.uint8)
    np.testing.assert_array_equal(written, SPEC.to_source(np.flip(result.labels, (0, 1))))  # LPS on disk
    truth = read_case(files).label
    assert result.metrics == metrics_from_counts(confusion_counts(result.labels, truth, SPEC), SPEC)
    # the commands print the 4-class tables
    args = ["evaluate", "--checkpoint", str(best), "--store", str(run["store"]), "--batch-size", "2"]
    args += ["--device", "cpu", "--no-progress", "--out", str(tmp_path / "eval")]
    command = CliRunner().invoke(brainnet_main, args)
    assert command.exit_code == 0, command.output
    assert "resection_cavity" in command.output and " RC" in command.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["score"] == pytest.approx(
        evaluation.score
    )
    args = ["predict", "--checkpoint", str(best), "--input", str(data), "--case", IDS[1], "--labels"]
    args += ["brats2024-gli", "--out", str(tmp_path / "p2.nii.gz"), "--device", "cpu", "--no-progress"]
    command = CliRunner().invoke(brainnet_main, args)
    assert command.exit_code == 0, command.output
    assert "voxels per label value 0/1/2/3/4" in command.output and "resection_cavity" in command.output
    # with --source-labels the counts are named by the values the file holds, and are its counts
    source = tmp_path / "p3.nii.gz"
    args[args.index(str(tmp_path / "p2.nii.gz"))] = str(source)
    command = CliRunner().invoke(brainnet_main, [*args, "--source-labels"])
    assert command.exit_code == 0, command.output
    values = [int(v) for v in SPEC.source_values]
    stored = np.asarray(nib.load(source).dataobj)
    counts = "/".join(str(int((stored == v).sum())) for v in values)
    assert f"voxels per label value {'/'.join(map(str, values))}: {counts})" in command.output
