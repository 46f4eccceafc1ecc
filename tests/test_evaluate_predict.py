"""brainnet.evaluate and brainnet.predict: store metrics, whole-scan prediction, their CLIs."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from brainnet.cli import main
from brainnet.evaluate import confusion_counts, evaluate_store, metrics_from_counts
from brainnet.metrics import probabilities_to_labels, segmentation_metrics
from brainnet.model import ModelConfig, build_model
from brainnet.predict import (
    model_probabilities,
    predict_case,
    prepare_volume,
    round_through,
    segment_case,
    window_predictor,
)
from brainnet.train.checkpoint import load_model, save_checkpoint
from brainprep import discover_cases, read_case
from brainprep.params import BuildParams, SamplingParams, SplitParams, StandardizeParams
from brainprep.spec import MSD_SPEC
from brainprep.standardize import brain_mask

TARGETS = MSD_SPEC.targets

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_CASE = DATA / "brats2023-with-seg"
TINY_MODEL = ModelConfig(depth=2, base_filters=2)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _build(root: Path, name: str, params: BuildParams, n_cases: int = 6) -> tuple[Path, Path]:
    from brainprep.builder import build_patches
    from brainprep.synth import SynthParams, write_synthetic_dataset

    data = root / f"synth{n_cases}"
    if not data.exists():
        write_synthetic_dataset(data, SynthParams(n_cases=n_cases, shape=(64, 64, 32), seed=0))
    build_patches(data, root / name, params, workers=1, progress=False)
    return data, root / name


def _checkpoint(path: Path, build_params: BuildParams, store: str = "") -> Path:
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    payload = {
        "format_version": 1,
        "model": model.state_dict(),
        "model_config": TINY_MODEL.to_dict(),
        "build_params": build_params.to_dict(),
        "store": store,
        "epoch": 0,
    }
    return save_checkpoint(payload, path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(data folder, store, checkpoint): 6 synthetic cases, val = BRATS_003 and BRATS_005."""
    from brainprep.store import open_store

    root = tmp_path_factory.mktemp("evaluate")
    params = BuildParams(
        sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=4),
        split=SplitParams(val_fraction=0.34),
        seed=1,
    )
    data, store = _build(root, "store.zarr", params)
    checkpoint = _checkpoint(root / "tiny.pt", open_store(store).params, str(store))
    return data, store, checkpoint


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_from_counts_by_hand():
    pred = np.array([0, 1, 1, 0, 3], dtype=np.uint8)
    true = np.array([0, 1, 0, 0, 0], dtype=np.uint8)
    counts = confusion_counts(pred, true)
    assert counts[TARGETS.index("edema")].tolist() == [1, 1, 0, 3]  # tp, fp, fn, tn
    metrics = metrics_from_counts(counts)
    assert metrics["edema"] == pytest.approx({"dice": 2 / 3, "sensitivity": 1.0, "specificity": 3 / 4})
    assert metrics["non_enhancing"] == {"dice": 1.0, "sensitivity": 1.0, "specificity": 1.0}  # empty/empty
    assert metrics["enhancing"] == pytest.approx({"dice": 0.0, "sensitivity": 0.0, "specificity": 4 / 5})
    # whole tumour: pred [0,1,1,0,1] vs true [0,1,0,0,0] -> tp 1, fp 2, fn 0, tn 2
    assert metrics["whole_tumour"] == pytest.approx({"dice": 2 / 4, "sensitivity": 1.0, "specificity": 2 / 4})


def test_summed_counts_equal_segmentation_metrics_of_the_concatenation():
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 4, (6, 5, 4)), rng.integers(0, 3, (6, 5, 4))) for _ in range(3)]
    total = sum(confusion_counts(p, t) for p, t in parts)
    expected = segmentation_metrics(
        np.concatenate([p for p, _ in parts]), np.concatenate([t for _, t in parts])
    )
    got = metrics_from_counts(total)
    for target in TARGETS:
        assert got[target] == pytest.approx(expected[target])


# -------------------------------------------------------------------------------- preprocessing
def _case_of_slot(store, data: Path, slot: int):
    case_index = int(store.table.case[slot])
    case_id = next(c["case_id"] for c in store.cases if c["index"] == case_index)
    return read_case(discover_cases(data).case(case_id))


def test_window_predictor_standardizes_each_window_as_the_store_did(built):
    from brainprep.store import open_store

    data, store_path, _ = built
    store = open_store(store_path)
    torch.manual_seed(0)
    model = build_model(TINY_MODEL).eval()
    slots = store.patch_indices("val")[:3]
    predictor = window_predictor(model, store.params)
    for slot in slots:
        case = _case_of_slot(store, data, int(slot))
        x, y, z = store.table.corner[slot]
        raw = prepare_volume(case.image, store.params)[:, x : x + 32, y : y + 32, z : z + 8]
        np.testing.assert_array_equal(raw, case.image[:, x : x + 32, y : y + 32, z : z + 8])  # raw
        stored = torch.from_numpy(store.read_image(int(slot)).astype(np.float32))[None]
        assert torch.equal(predictor(torch.from_numpy(raw)[None]), model_probabilities(model, stored))


def test_volume_nonzero_volume_matches_the_stored_patches(tmp_path):
    from brainprep.store import open_store

    params = BuildParams(
        sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=2),
        standardize=StandardizeParams(method="volume-nonzero"),
    )
    data, store_path = _build(tmp_path, "nonzero.zarr", params, n_cases=2)
    store = open_store(store_path)
    for slot in store.patch_indices()[:3]:
        case = _case_of_slot(store, data, int(slot))
        x, y, z = store.table.corner[slot]
        volume = prepare_volume(case.image, store.params)
        np.testing.assert_array_equal(
            volume[:, x : x + 32, y : y + 32, z : z + 8], store.read_image(int(slot)).astype(np.float32)
        )


def test_predict_case_covers_the_scan(built):
    data, _, checkpoint = built
    loaded = load_model(checkpoint)
    case = read_case(discover_cases(data).cases[0])
    labels, probabilities = predict_case(loaded.model, case, loaded.build_params, overlap=0.5, batch_size=8)
    assert labels.shape == case.shape and labels.dtype == np.uint8
    assert probabilities.shape == (3, *case.shape) and probabilities.dtype == np.float32
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    np.testing.assert_array_equal(labels, probabilities_to_labels(probabilities))
    outside = ~brain_mask(case.image)
    assert outside.any() and not labels[outside].any() and not probabilities[:, outside].any()


# ---------------------------------------------------------------------------------------- evaluate
def test_evaluate_store_per_case_and_overall(built):
    from brainprep.store import open_store

    _, store_path, checkpoint = built
    store = open_store(store_path)
    loaded = load_model(checkpoint)
    result = evaluate_store(loaded.model, store, "val", batch_size=3)
    assert sorted(result.cases) == ["BRATS_003", "BRATS_005"]
    assert result.counts == {"BRATS_003": 4, "BRATS_005": 4} and result.unit == "patches"
    predictions, truths = [], []
    for case_id in sorted(result.cases):
        index = next(c["index"] for c in store.cases if c["case_id"] == case_id)
        slots = store.patch_indices("val")[store.table.case[store.patch_indices("val")] == index]
        images, labels = store.read_patches(slots)
        probabilities = model_probabilities(loaded.model, torch.from_numpy(images.astype(np.float32)))
        predicted = probabilities_to_labels(probabilities, axis=1).numpy()
        for target, metrics in segmentation_metrics(predicted, labels).items():
            assert result.cases[case_id][target] == pytest.approx(metrics)
        predictions.append(predicted)
        truths.append(labels)
    overall = segmentation_metrics(np.concatenate(predictions), np.concatenate(truths))
    for target in TARGETS:
        assert result.overall[target] == pytest.approx(overall[target])
    assert len(result.overlays) == 2


@pytest.mark.parametrize("failing", ["picture", "nifti"])
def test_predict_writes_its_nifti_and_picture_both_or_neither(built, tmp_path, monkeypatch, failing):
    """A failure writing either output leaves neither (nor a temporary): never a label map without the
    picture asked for, nor a picture of a prediction that was not written."""
    import brainnet.evaluate
    import brainnet.predict

    data, _, checkpoint = built
    loaded = load_model(checkpoint)
    files = discover_cases(data).case("BRATS_002")

    def fail(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = {
        "picture": (brainnet.evaluate, "draw_overlays"),
        "nifti": (brainnet.predict, "write_label_in_source_space"),
    }
    monkeypatch.setattr(*target[failing], fail)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        segment_case(loaded, files, out / "pred.nii.gz", batch_size=16, png=out / "pred.png")
    assert not out.exists() or list(out.iterdir()) == []
    monkeypatch.undo()
    result = segment_case(loaded, files, out / "pred.nii.gz", batch_size=16, png=out / "pred.png")
    assert sorted(p.name for p in out.iterdir()) == ["pred.nii.gz", "pred.png"]
    assert result.png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "change",
    [
        {"classes": ("background", "enhancing", "edema", "non_enhancing")},  # the same classes, reordered
        {"channels": ("T1w", "FLAIR", "T1gd", "T2w")},
    ],
)
def test_evaluate_refuses_a_model_of_other_classes_or_channels(built, tmp_path, change):
    """Output channel k is the model's class k + 1: scored on a store of other classes (or fed other
    channels) every number would be of something else, so it is refused before any prediction."""
    from brainprep.errors import StoreMismatchError
    from brainprep.store import open_store

    _, store_path, checkpoint = built
    payload = torch.load(checkpoint, weights_only=True)
    payload["spec"] = dataclasses.replace(MSD_SPEC, **change).to_dict()
    other = save_checkpoint(payload, tmp_path / "other.pt")
    loaded = load_model(other)
    what = next(iter(change))
    with open_store(store_path) as store, pytest.raises(StoreMismatchError, match=f"trained on {what}"):
        evaluate_store(loaded.model, store, "val", model_spec=loaded.spec)
    args = ["evaluate", "--checkpoint", str(other), "--store", str(store_path), "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--no-progress"])
    assert result.exit_code == 1 and f"the model was trained on {what}" in result.output, result.output
    assert "whole_tumour" not in result.output  # no table of scores


def test_cli_evaluate_names_the_build_parameters_that_differ(built, tmp_path):
    _, store_path, checkpoint = built
    payload = torch.load(checkpoint, weights_only=True)
    payload["build_params"]["standardize"]["method"] = "volume-nonzero"
    other = save_checkpoint(payload, tmp_path / "other.pt")
    args = ["evaluate", "--checkpoint", str(other), "--store", str(store_path), "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert 'standardize.method: "patch-slice" against "volume-nonzero"' in result.output


def test_cli_evaluate_writes_table_csv_json_png(built, tmp_path):
    _, store_path, checkpoint = built
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--store", str(store_path), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "whole_tumour" in result.output and "BRATS_005" in result.output
    assert "dice_labelmap: Dice per class/region on the label map" in result.output  # the definition, named
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "case,patches,target,dice_labelmap,sensitivity,specificity"
    assert len(rows) == 1 + 3 * len(TARGETS)  # 2 cases + overall
    assert rows[-1].startswith("overall,8,enhancing_tumour,")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["split"] == "val" and set(saved["overall"]) == set(TARGETS)
    classes = ("edema", "non_enhancing", "enhancing")
    assert saved["score"] == pytest.approx(np.mean([saved["overall"][c]["dice"] for c in classes]))
    assert f"best.pt is chosen by it): {saved['score']:.4f}" in result.output
    assert saved["checkpoint"] == str(checkpoint)
    assert (out / "overlay.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("previous", [False, True])
def test_write_evaluation_is_all_or_nothing(built, tmp_path, monkeypatch, previous):
    """The picture failing leaves the folder's previous metrics.csv, metrics.json and overlay.png as they
    were (or none), and no temporary: never new metrics beside the picture of another prediction."""
    import brainnet.evaluate
    from brainnet.evaluate import write_evaluation
    from brainprep.store import open_store

    _, store_path, checkpoint = built
    loaded = load_model(checkpoint)
    with open_store(store_path) as store:
        result = evaluate_store(loaded.model, store, "val", batch_size=4, n_overlays=1)
    out = tmp_path / "eval"
    before: dict[str, bytes] = {}
    if previous:
        for name in ("metrics.csv", "metrics.json", "overlay.png"):
            (out / name).parent.mkdir(exist_ok=True)
            (out / name).write_bytes(f"previous {name}".encode())
        before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(brainnet.evaluate, "draw_overlays", fail)
    with pytest.raises(OSError, match="No space left"):
        write_evaluation(result, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary either
    monkeypatch.undo()
    paths = write_evaluation(result, out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json", "overlay.png"]
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC
    assert json.loads(paths["json"].read_text())["score"] == pytest.approx(result.score)
    # a result without a picture removes the previous one, which showed another prediction
    write_evaluation(dataclasses.replace(result, overlays=[]), out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]


def _edited_checkpoint(checkpoint: Path, path: Path, **changes) -> Path:
    payload = torch.load(checkpoint, weights_only=True)
    payload.update(changes)
    return save_checkpoint(payload, path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (  # weights of a wider network than its model_config says
            {"model": build_model(dataclasses.replace(TINY_MODEL, base_filters=4)).state_dict()},
            "weights do not match its model_config: size mismatch for encoder.0.0.0.weight",
        ),
        (
            {"model": {}},
            'weights do not match its model_config: Missing key(s) in state_dict: "encoder.0.0.0.weight"',
        ),
        (  # 4 sigmoids for the 3 classes of its spec
            {"model_config": dataclasses.replace(TINY_MODEL, out_channels=4).to_dict()},
            "the model has 4 output channels, the dataset spec 3 classes (edema, non_enhancing, enhancing)",
        ),
        (
            {"model_config": dataclasses.replace(TINY_MODEL, in_channels=2).to_dict()},
            "the model has 2 input channels, the dataset spec 4 channels (FLAIR, T1w, T1gd, T2w)",
        ),
        (  # the parameters' own errors named the field, not the file
            {"model_config": {**TINY_MODEL.to_dict(), "depth": 0}},
            "its parameters do not read: ",
        ),
        ({"train_config": {"lr": -1.0}}, "its parameters do not read: TrainConfig.lr must be > 0"),
    ],
    ids=["shapes", "keys", "out_channels", "in_channels", "model_config", "train_config"],
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cli_a_checkpoint_whose_model_does_not_fit_is_one_line(built, tmp_path, change, expected, command):
    """Weights that do not fit the checkpoint's model_config, or a model_config that does not fit its
    dataset spec, are one error naming the file, not a torch traceback (nor outputs read as other classes)."""
    from brainnet.train.checkpoint import CheckpointError

    data, store, checkpoint = built
    bad = _edited_checkpoint(checkpoint, tmp_path / "bad.pt", **change)
    with pytest.raises(CheckpointError, match=r"^checkpoint "):
        load_model(bad)
    args = ["--checkpoint", str(bad), "--device", "cpu", "--no-progress"]
    if command == "predict":
        args += ["--input", str(data), "--case", "BRATS_002", "--out", str(tmp_path / "p.nii.gz")]
    else:
        args += ["--store", str(store), "--out", str(tmp_path / "eval")]
    result = CliRunner().invoke(main, [command, *args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: checkpoint {bad}: {expected}"), result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]  # nothing written


# ----------------------------------------------------------------------------------------- predict
def test_cli_predict_data_folder_case_and_msd_file(built, tmp_path):
    data, _, checkpoint = built
    out = tmp_path / "pred.nii.gz"
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(data), "--case", "BRATS_002"]
    result = CliRunner().invoke(main, [*args, "--out", str(out), "--batch-size", "16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "BRATS_002: wrote" in result.output and "whole_tumour" in result.output  # the case has a label
    written = nib.load(out)
    source = nib.load(data / "imagesTr" / "BRATS_002.nii.gz")
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.shape == source.shape[:3] and written.get_data_dtype() == np.uint8
    # The 4D image file alone: its label is found through labelsTr beside imagesTr.
    args = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(data / "imagesTr" / "BRATS_002.nii.gz"),
    ]
    result = CliRunner().invoke(
        main, [*args, "--out", str(tmp_path / "b.nii.gz"), "--batch-size", "16", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(nib.load(tmp_path / "b.nii.gz").get_fdata(), written.get_fdata())
    # The image alone, without labelsTr/ beside it: segmented, no metrics.
    lone = tmp_path / "lone" / "imagesTr"
    lone.mkdir(parents=True)
    shutil.copy(data / "imagesTr" / "BRATS_002.nii.gz", lone)
    result = CliRunner().invoke(
        main,
        [
            *args[:3],
            "--input",
            str(lone / "BRATS_002.nii.gz"),
            "--out",
            str(tmp_path / "c.nii.gz"),
            "--batch-size",
            "16",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "whole_tumour" not in result.output
    np.testing.assert_array_equal(nib.load(tmp_path / "c.nii.gz").get_fdata(), written.get_fdata())
    # A data folder with two files of one case id: refused, naming both.
    double = tmp_path / "double"
    shutil.copytree(data, double)
    gz = double / "imagesTr" / "BRATS_002.nii.gz"
    (double / "imagesTr" / "BRATS_002.nii").write_bytes(gzip.decompress(gz.read_bytes()))
    result = CliRunner().invoke(
        main, [*args[:3], "--input", str(double), "--case", "BRATS_002", "--out", str(out)]
    )
    assert result.exit_code != 0 and f"{gz.with_suffix('')} and {gz}" in result.output
    # A scan with a blank channel is refused naming its file, and no segmentation is written.
    blank = tmp_path / "blank" / "imagesTr" / "BRATS_002.nii.gz"
    blank.parent.mkdir(parents=True)
    volume = np.asarray(source.dataobj).copy()
    volume[..., 2] = 0
    nib.save(nib.Nifti1Image(volume, source.affine), blank)
    result = CliRunner().invoke(
        main, [*args[:3], "--input", str(blank), "--out", str(tmp_path / "blank.nii.gz"), "--no-progress"]
    )
    assert result.exit_code != 0 and "constant" in result.output and str(blank) in result.output
    assert not (tmp_path / "blank.nii.gz").exists()
    # A data folder of several cases without --case is refused with the reason.
    result = CliRunner().invoke(
        main, ["predict", "--checkpoint", str(checkpoint), "--input", str(data), "--out", str(out)]
    )
    assert result.exit_code != 0 and "--case" in result.output


@pytest.mark.parametrize("option", ["--out", "--png"])
def test_cli_predict_into_a_folder_that_is_a_file_is_one_line_before_any_work(built, tmp_path, option):
    data, _, checkpoint = built
    (tmp_path / "file.txt").write_text("")
    # a name of the option's suffix: the folder is what is wrong (a name without one is refused first)
    bad = tmp_path / "file.txt" / {"--out": "x.nii.gz", "--png": "x.png"}[option]
    paths = {"--out": tmp_path / "pred.nii.gz", "--png": tmp_path / "pred.png", option: bad}
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(data), "--case", "BRATS_002"]
    args += ["--out", str(paths["--out"]), "--png", str(paths["--png"]), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert f"cannot write {bad}: {tmp_path / 'file.txt'} is a file, not a folder" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("random bytes", "is not a brainnet checkpoint (not a torch save file)"),
        ("text", "is not a brainnet checkpoint (not a torch save file)"),
        ("first half", "is a truncated or damaged checkpoint"),
        ("a list", "is not a brainnet checkpoint (it holds a list)"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cli_a_file_that_is_no_checkpoint_says_what_it_is(built, tmp_path, kind, expected, command):
    data, store, checkpoint = built
    bad = tmp_path / "bad.pt"
    if kind == "random bytes":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        bad.write_text("model weights: see the README\n")
    elif kind == "first half":
        whole = checkpoint.read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
    else:
        torch.save([1, 2], bad)
    args = ["--checkpoint", str(bad), "--device", "cpu", "--no-progress"]
    if command == "predict":
        args += ["--input", str(data), "--case", "BRATS_002", "--out", str(tmp_path / "p.nii.gz")]
    else:
        args += ["--store", str(store)]
    result = CliRunner().invoke(main, [command, *args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: {bad} {expected}"), result.output
    assert "code objects" not in result.output and "Errno" not in result.output
    assert not (tmp_path / "p.nii.gz").exists()


def test_predict_scores_the_label_map_it_writes_by_evaluates_definition(built, tmp_path):
    data, _, checkpoint = built
    loaded = load_model(checkpoint)
    files = discover_cases(data).case("BRATS_002")
    result = segment_case(loaded, files, tmp_path / "pred.nii.gz", batch_size=16)
    assert result.warning is None
    written = np.asarray(nib.load(tmp_path / "pred.nii.gz").dataobj)  # MSD labels, source space
    truth = np.asarray(nib.load(files.label_path).dataobj).astype(np.uint8)
    # evaluate's per-case definition (label-map counts pooled over the voxels scored) on the written file
    expected = metrics_from_counts(confusion_counts(written, truth))
    for target in TARGETS:
        assert result.metrics[target] == pytest.approx(expected[target]), target
    assert result.metrics == segmentation_metrics(result.labels, read_case(files).label)


@pytest.fixture(scope="module")
def valid_prediction(built, tmp_path_factory) -> np.ndarray:
    """BRATS_002 segmented with its valid label (which gave metrics and no warning), as written."""
    data, _, checkpoint = built
    out = tmp_path_factory.mktemp("valid") / "p.nii.gz"
    result = segment_case(load_model(checkpoint), discover_cases(data).case("BRATS_002"), out, batch_size=16)
    assert result.metrics is not None and result.warning is None
    return np.asarray(nib.load(out).dataobj)


def _case_copy(data: Path, root: Path, label_bytes: bytes | None) -> Path:
    """An MSD folder holding BRATS_002's image and, unless ``None``, ``label_bytes`` as its label."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shutil.copy(data / "imagesTr" / "BRATS_002.nii.gz", root / "imagesTr")
    if label_bytes is not None:
        (root / "labelsTr" / "BRATS_002.nii.gz").write_bytes(label_bytes)
    return root


def _bad_label(kind: str, label: Path, tmp_path: Path) -> bytes | None:
    """The bytes of a missing (``None``), truncated or out-of-convention copy of ``label``."""
    if kind == "missing":
        return None
    if kind == "truncated":
        whole = label.read_bytes()
        return whole[: len(whole) // 2]
    image = nib.load(label)
    values = np.asarray(image.dataobj).astype(np.uint8)
    values[values == 3] = 4  # a BraTS 2021 enhancing label in an MSD folder
    nib.save(nib.Nifti1Image(values, image.affine), tmp_path / "bad.nii.gz")
    return (tmp_path / "bad.nii.gz").read_bytes()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no label file"),
        ("truncated", "label not used, no metrics"),
        ("out of convention", "label not used, no metrics: label values"),
    ],
)
def test_predict_never_needs_a_valid_label(built, valid_prediction, tmp_path, caplog, kind, message):
    data, _, checkpoint = built
    label = _bad_label(kind, data / "labelsTr" / "BRATS_002.nii.gz", tmp_path)
    image = _case_copy(data, tmp_path / "case", label) / "imagesTr" / "BRATS_002.nii.gz"
    args = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(image),
        "--out",
        str(tmp_path / "p.nii.gz"),
    ]
    with caplog.at_level("WARNING", logger="brainnet.predict"):
        result = CliRunner().invoke(main, [*args, "--batch-size", "16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "whole_tumour" not in result.output  # no metrics
    warnings = [r.getMessage() for r in caplog.records if r.name == "brainnet.predict"]
    assert len(warnings) == 1 and warnings[0].startswith(message), warnings
    assert str(image.parent.parent / "labelsTr" / "BRATS_002.nii.gz") in warnings[0]
    # the segmentation is the one of the case with its valid label
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "p.nii.gz").dataobj), valid_prediction)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CASE.is_dir(), reason=f"real BraTS 2023 case not found at {REAL_CASE}")
def test_predict_real_case_writes_source_space_nifti(tmp_path):
    from brainprep.read.labels import convention_spec

    # Window = the store's patch size; a 240x240x16 slab with no overlap keeps the CPU test to 10 windows.
    params = BuildParams(sampling=SamplingParams(patch_size=(240, 240, 16)))
    loaded = load_model(_checkpoint(tmp_path / "tiny.pt", params))
    files = discover_cases(REAL_CASE).cases[0]
    out = tmp_path / "seg.nii.gz"
    result = segment_case(
        loaded, files, out, overlap=0.0, batch_size=2, source_labels=True, png=tmp_path / "seg.png"
    )
    written = nib.load(out)
    source = nib.load(REAL_CASE / "t1c.nii.gz")
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.shape == source.shape == (240, 240, 155)
    data = np.asarray(written.dataobj)
    assert data.dtype == np.uint8
    # The source is LPS: back in source space the RAS labels are flipped in x and y, in BraTS 2023 values.
    np.testing.assert_array_equal(
        data, convention_spec("brats2023").to_source(np.flip(result.labels, (0, 1)))
    )
    assert set(result.metrics) == set(TARGETS)  # the case has a segmentation: whole-scan metrics
    assert result.png is not None and result.png.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------------------ evaluate: volume store
def _volume_store(root: Path, method: str, dtype: str = "float16") -> tuple[Path, Path]:
    """(data folder, volume store) of the 6 synthetic cases, val = BRATS_003 and BRATS_005."""
    from brainprep.params import StoreParams

    params = BuildParams(
        sampling=SamplingParams(patch_size=(32, 32, 8)),
        standardize=StandardizeParams(method=method),
        store=StoreParams(kind="volumes", dtype=dtype),
        split=SplitParams(val_fraction=0.34),
        seed=1,
    )
    return _build(root, f"volumes-{method}-{dtype}.zarr", params)


@pytest.fixture(scope="module")
def volume_store(tmp_path_factory):
    return _volume_store(tmp_path_factory.mktemp("evaluate-volumes"), "volume-nonzero")


@pytest.mark.parametrize("method", ["patch-slice", "volume-nonzero"])
def test_evaluate_volume_store_is_the_whole_scan_prediction(tmp_path, method):
    """A volume store's evaluation of a case is ``predict_case`` of its scan, label for label: both slide
    the window over the brain's bounding box, the store's crop (float32, so no rounding tells them apart)."""
    from brainprep.store import open_store

    data, store_path = _volume_store(tmp_path, method, dtype="float32")
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    with open_store(store_path) as store:
        result = evaluate_store(model, store, "val", batch_size=2)
        params = store.params
    assert sorted(result.cases) == ["BRATS_003", "BRATS_005"]
    assert result.unit == "crops" and result.counts == {"BRATS_003": 1, "BRATS_005": 1}
    dataset = discover_cases(data)
    counts = torch.zeros((len(TARGETS), 4), dtype=torch.int64)
    for case_id, metrics in result.cases.items():
        case = read_case(dataset.case(case_id))
        labels, _ = predict_case(model, case, params, batch_size=2)
        case_counts = confusion_counts(labels, case.label)
        counts += case_counts
        whole = metrics_from_counts(case_counts)
        for target in TARGETS:  # specificity aside: the scan has more true negatives than the crop
            assert metrics[target]["dice"] == whole[target]["dice"], (case_id, target)
            assert metrics[target]["sensitivity"] == whole[target]["sensitivity"], (case_id, target)
    overall = metrics_from_counts(counts)
    assert all(result.overall[t]["dice"] == overall[t]["dice"] for t in TARGETS)
    assert 0.0 < result.overall["whole_tumour"]["dice"] < 1.0  # a real prediction, neither empty nor perfect
    assert len(result.overlays) == 2 and result.overlays[0].title.startswith("BRATS_003 crop z=")


@pytest.mark.parametrize(
    ("store_patch", "model_window"),
    [((48, 48, 32), (16, 16, 8)), ((16, 16, 8), (48, 48, 32))],  # crops wider / narrower than the window
)
def test_evaluate_volume_store_slides_the_models_window_as_predict_does(
    tmp_path, monkeypatch, store_patch, model_window
):
    """A model trained with one window, scored on a volume store built with another patch size: each case
    scores as ``predict`` segments it with that checkpoint (its window over its box of the brain), not by
    the store's patch size and crop (the store's window, a different segmentation, before)."""
    import importlib

    from brainprep.params import StoreParams
    from brainprep.store import open_store

    params = BuildParams(
        sampling=SamplingParams(patch_size=store_patch),
        store=StoreParams(kind="volumes", dtype="float32"),
        split=SplitParams(val_fraction=0.34),
        seed=1,
    )
    data, store_path = _build(tmp_path, "volumes.zarr", params, n_cases=3)
    sw = importlib.import_module("brainnet.infer.sliding_window")  # the package exports its function
    with open_store(store_path) as store:
        trained = store.params.replace(sampling=store.params.sampling.replace(patch_size=model_window))
        loaded = load_model(_checkpoint(tmp_path / "tiny.pt", trained, str(store_path)))
        windows: list[tuple[int, ...]] = []
        real = sw.window_regions

        def spy(spatial, window, overlap):
            windows.append(tuple(window))
            return real(spatial, window, overlap)

        monkeypatch.setattr(sw, "window_regions", spy)
        result = evaluate_store(
            loaded.model,
            store,
            "val",
            batch_size=4,
            standardize=loaded.build_params.standardize.method,
            window=loaded.build_params.sampling.patch_size,
        )
        monkeypatch.undo()
    assert result.cases and set(windows) == {model_window}
    dataset = discover_cases(data)
    for case_id, metrics in result.cases.items():
        case = read_case(dataset.case(case_id))
        labels, _ = predict_case(loaded.model, case, loaded.build_params, batch_size=4)
        whole = metrics_from_counts(confusion_counts(labels, case.label))
        for target in TARGETS:  # specificity aside: the scan has more true negatives than the crop
            assert metrics[target]["dice"] == whole[target]["dice"], (case_id, target)
            assert metrics[target]["sensitivity"] == whole[target]["sensitivity"], (case_id, target)
    assert 0.0 < result.overall["whole_tumour"]["dice"] < 1.0  # a real prediction, neither empty nor perfect
    # `brainnet evaluate` slides the checkpoint's window too: its numbers are these
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "tiny.pt"),
        "--store",
        str(store_path),
        "--out",
        str(out),
    ]
    command = CliRunner().invoke(main, [*args, "--device", "cpu", "--no-progress", "--batch-size", "4"])
    assert command.exit_code == 0, command.output
    saved = json.loads((out / "metrics.json").read_text())["overall"]
    assert all(saved[t]["dice"] == result.overall[t]["dice"] for t in TARGETS)


def test_the_autocast_dtype_reaches_every_forward_of_evaluate_and_predict(
    built, volume_store, tmp_path, monkeypatch
):
    """A model trained under float16 autocast is scored under float16, on a patch store's patches and on a
    volume store's crops alike (the crops went through the sliding window under bfloat16 before)."""
    import brainnet.evaluate as evaluate_module
    import brainnet.predict as predict_module
    from brainprep.store import open_store

    seen: list[tuple[bool, str]] = []
    real = predict_module.model_probabilities

    def spy(model, batch, amp=False, amp_dtype="bfloat16"):
        seen.append((amp, amp_dtype))
        return real(model, batch, amp, amp_dtype)

    monkeypatch.setattr(predict_module, "model_probabilities", spy)
    monkeypatch.setattr(evaluate_module, "model_probabilities", spy)
    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    for path in (built[1], volume_store[1]):
        seen.clear()
        with open_store(path) as store:
            evaluate_store(model, store, "val", amp=True, amp_dtype="float16", n_overlays=0)
        assert seen and set(seen) == {(True, "float16")}, path
    # predict: the checkpoint's own dtype
    from brainnet.train import TrainConfig

    data, _, checkpoint = built
    loaded = dataclasses.replace(load_model(checkpoint), train_config=TrainConfig(amp_dtype="float16"))
    seen.clear()
    segment_case(loaded, discover_cases(data).case("BRATS_002"), tmp_path / "p.nii.gz", amp=True)
    assert seen and set(seen) == {(True, "float16")}


def test_predict_case_slides_over_the_brain_box_only(built):
    """Nothing outside the brain's bounding box is predicted, and the scan's background never counts in a
    window's slice statistics: a scan padded with more empty field of view predicts the same labels."""
    data, _, checkpoint = built
    loaded = load_model(checkpoint)
    case = read_case(discover_cases(data).case("BRATS_003"))
    labels, probabilities = predict_case(loaded.model, case, loaded.build_params, batch_size=4)
    pad = ((0, 0), (20, 20), (20, 20), (8, 8))
    wider = dataclasses.replace(case, image=np.pad(case.image, pad), label=np.pad(case.label, pad[1:]))
    wider_labels, _ = predict_case(loaded.model, wider, loaded.build_params, batch_size=4)
    np.testing.assert_array_equal(wider_labels[20:-20, 20:-20, 8:-8], labels)
    assert not wider_labels[:20].any() and not wider_labels[:, :, :8].any()
    assert probabilities[:, ~brain_mask(case.image)].max() == 0.0


def test_cli_evaluate_volume_store(volume_store, tmp_path):
    """``brainnet evaluate`` on a volume store: whole crops, the CSV's count column says so."""
    from brainprep.store import open_store

    _, store_path = volume_store
    checkpoint = _checkpoint(tmp_path / "tiny.pt", open_store(store_path).params, str(store_path))
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--store", str(store_path), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "case,crops,target,dice_labelmap,sensitivity,specificity"
    assert rows[-1].startswith("overall,2,enhancing_tumour,")
    assert json.loads((out / "metrics.json").read_text())["unit"] == "crops"


def test_read_volume_standardized_and_refusal(volume_store):
    """A whole crop reads raw or with the stored brain statistics; patch-slice has no whole-crop form."""
    from brainprep.errors import StoreError
    from brainprep.standardize import standardize_with_statistics
    from brainprep.store import open_store

    _, store_path = volume_store
    with open_store(store_path) as store:
        index = int(store.case_indices("val")[0])
        raw, label = store.read_volume(index)
        standardized, same_label = store.read_volume(index, "volume-nonzero")
        entry = store.metadata["cases"][index]
        with pytest.raises(StoreError, match="patch-slice standardizes each window"):
            store.read_volume(index, "patch-slice")
    np.testing.assert_array_equal(label, same_label)
    assert standardized.dtype == np.float32 and standardized.shape == raw.shape
    want = standardize_with_statistics(raw, entry["mean"], entry["std"], mask=brain_mask(raw, 0.0))
    np.testing.assert_array_equal(standardized, want)
    brain = brain_mask(raw, 0.0)
    assert not standardized[:, ~brain].any()
    np.testing.assert_allclose(standardized[:, brain].mean(axis=1), 0.0, atol=0.02)


@pytest.mark.parametrize("method", ["patch-slice", "volume-nonzero"])
def test_brain_box_is_the_prepared_scan_cut_to_the_crop_with_zero_padding(method):
    # a scan thinner than the window along z: the crop is padded there, and stays 0 in the padding
    from brainnet.predict import brain_box
    from brainprep.standardize import background_values
    from brainprep.volume import cut_crop

    rng = np.random.default_rng(3)
    image = np.full((4, 30, 28, 6), 7.0, dtype=np.float32)  # background 7, not 0
    image[:, 8:20, 6:22, 1:5] += rng.random((4, 12, 16, 4), dtype=np.float32) * 100 + 1
    params = BuildParams(standardize=StandardizeParams(method=method))
    box = brain_box(image, params, (8, 8, 8))
    assert box.crop.padded and box.volume.shape == (4, *box.crop.shape)
    background = background_values(image)
    prepared = prepare_volume(image, params, background)
    if method == "patch-slice":
        prepared = prepared - background.astype(np.float32)[:, None, None, None]
    np.testing.assert_array_equal(box.volume, cut_crop(prepared, box.crop))
    assert box.mask.sum() == 12 * 16 * 4


def test_a_volume_model_trained_with_another_standardization_is_evaluated_as_it_was_trained(tmp_path):
    """``volume_sampling.standardize`` overrides the store's method in training: the checkpoint records
    the method trained with, and evaluate standardizes the crops so (it used the store's before)."""
    from brainnet.data.volume_sampler import WindowSamplingParams
    from brainnet.train import TrainConfig, train
    from brainprep.store import open_store

    _, slice_store = _volume_store(tmp_path / "a", "patch-slice", dtype="float32")
    _, nonzero_store = _volume_store(tmp_path / "b", "volume-nonzero", dtype="float32")
    sampling = WindowSamplingParams(standardize="volume-nonzero", draws_per_epoch=4)
    config = TrainConfig(epochs=1, batch_size=2, steps_per_epoch=2, val_steps=1, volume_sampling=sampling)
    train(slice_store, tmp_path / "run", config, TINY_MODEL)
    loaded = load_model(tmp_path / "run" / "last.pt")
    assert loaded.build_params.standardize.method == "volume-nonzero"
    with open_store(slice_store) as a, open_store(nonzero_store) as b:
        assert a.params.standardize.method == "patch-slice"
        method = loaded.build_params.standardize.method
        as_trained = evaluate_store(loaded.model, a, "val", batch_size=2, standardize=method)
        reference = evaluate_store(loaded.model, b, "val", batch_size=2)
        as_built = evaluate_store(loaded.model, a, "val", batch_size=2)
    assert as_trained.overall == reference.overall  # the same crops, standardized the same way
    assert as_built.overall != reference.overall
    # a resume on the same store is not taken for a store change
    config2 = dataclasses.replace(config, epochs=2)
    train(slice_store, tmp_path / "run", config2, TINY_MODEL, resume=True)


@pytest.mark.parametrize("method", ["patch-slice", "volume-nonzero"])
def test_a_float16_volume_models_scan_is_prepared_as_its_store_holds_it(tmp_path, method):
    """A volume store rounds the raw crop through float16 and training standardizes it in float32; a
    patch store rounds the standardized values. predict's box of the scan equals the store's crop read as
    training reads it (it rounded the standardized values for both kinds before)."""
    from brainnet.predict import brain_box
    from brainprep.store import open_store

    data, store_path = _volume_store(tmp_path, method, dtype="float16")
    with open_store(store_path) as store:
        params = store.params
        index = int(store.case_indices("val")[0])
        case = read_case(discover_cases(data).case(store.cases[index]["case_id"]))
        box = brain_box(case.image, params, params.sampling.patch_size)
        assert box.crop == store.crop(index)
        raw, _ = store.read_volume(index)
        if method == "patch-slice":  # raw: each window is standardized in the predictor
            np.testing.assert_array_equal(box.volume, np.asarray(raw, dtype=np.float32))
        else:
            trained = np.asarray(store.standardize(index, raw, method), dtype=np.float32)
            np.testing.assert_allclose(box.volume, trained, rtol=0, atol=1e-5)
            assert not np.array_equal(box.volume, round_through(box.volume, "float16"))  # not rounded after
