"""brainnet.train: checkpoints, exact resume, NaN stop, logs, DDP over two CPU processes, the CLI."""

from __future__ import annotations

import csv
import json
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from brainnet.augment import augment_preset
from brainnet.model import ModelConfig
from brainnet.train import (
    NonFiniteLossError,
    TrainConfig,
    load_checkpoint,
    load_model,
    save_checkpoint,
    train,
    train_on_batches,
)
from brainnet.train.checkpoint import capture_rng_state, restore_rng_state
from brainnet.train.progress import best_epoch
from brainnet.train.schedule import LR_SCHEDULES, learning_rate
from brainprep.errors import ConfigError
from brainprep.spec import MSD_SPEC

TARGETS = MSD_SPEC.targets

TINY_MODEL = ModelConfig(depth=2, base_filters=2)
#: every transform of the nnunet preset on every sample: a resume or a worker count that changed any draw
#: would change the weights.
EVERY_TRANSFORM = augment_preset(
    "nnunet",
    {
        "spatial.p_rotation": 1.0,
        "spatial.p_scaling": 1.0,
        "spatial.p_elastic": 1.0,
        **{f"{block}.p": 1.0 for block in ("noise", "blur", "brightness", "contrast", "low_resolution")},
        "gamma_inverted.p": 0.5,
        "gamma.p": 1.0,
    },
)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    from brainprep.builder import build_patches
    from brainprep.params import BuildParams, SamplingParams, SplitParams
    from brainprep.synth import SynthParams, write_synthetic_dataset

    root = tmp_path_factory.mktemp("train")
    data = write_synthetic_dataset(root / "synth", SynthParams(n_cases=6, shape=(64, 64, 32), seed=0))
    # seed 1 puts BRATS_003 and BRATS_005 in val; BRATS_004 (a small tumour) gives no patch: 12 train patches.
    params = BuildParams(
        sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=4),
        split=SplitParams(val_fraction=0.34),
        seed=1,
    )
    build_patches(data, root / "store.zarr", params, workers=1, progress=False)
    return root / "store.zarr"


def _config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, lr=1e-3, device="cpu", seed=0, workers=0)
    return base.replace(**changes)


# ------------------------------------------------------------------------------------- pure pieces
def test_rng_state_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, path)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------- training
def test_checkpoint_loads_with_weights_only_and_holds_the_run(store_path, tmp_path):
    from brainprep.store import open_store

    store = open_store(store_path)
    result = train(store, tmp_path / "run", _config(), TINY_MODEL)
    assert result.epochs == 1 and result.global_step == 2
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert payload["model_config"] == TINY_MODEL.to_dict()
    assert payload["train_config"] == _config().to_dict()
    assert payload["build_params"] == store.params.to_dict()
    assert payload["store"] == str(store.location)
    assert payload["epoch"] == 1 and payload["global_step"] == 2
    assert isinstance(payload["rng"]["torch"], torch.Tensor)
    # every key of the table in brainnet/train/checkpoint.py, built there by training_payload
    assert set(payload) == {
        *("format_version", "model", "model_config", "train_config", "build_params", "store", "store_id"),
        *("optimizer", "scaler", "epoch", "global_step", "sampler", "rng", "best_score", "best_metric"),
        *("history", "world_size", "spec"),
    }
    assert payload["spec"] == store.spec.to_dict() == MSD_SPEC.to_dict()  # the store's dataset spec
    assert payload["store_id"] == store.content_id and payload["world_size"] == 1
    assert payload["best_metric"] == "val_dice_labelmap"
    assert payload["best_score"] == payload["history"][0]["val_dice_labelmap"]
    assert (tmp_path / "run" / "best.pt").exists()
    loaded = load_model(tmp_path / "run" / "last.pt")
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    assert loaded.build_params.sampling.patch_size == (32, 32, 8)
    with (tmp_path / "run" / "log.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    columns = ["train_loss", "train_dice_labelmap", "val_loss", "val_dice_labelmap"]
    columns += [f"val_dice_labelmap_{target}" for target in TARGETS]
    for column in columns:
        assert 0.0 <= float(rows[0][column]) <= 1.0
    assert any((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    with Image.open(tmp_path / "run" / "progress.png") as picture:  # the curves, drawn from log.csv
        assert picture.format == "PNG"


def test_log_evaluate_and_the_metric_give_one_dice(store_path, tmp_path):
    """The validation row of the log, ``evaluate`` and the metric function: one number per target."""
    from brainnet.evaluate import evaluate_store
    from brainnet.metrics import class_score, dice_coefficient, probabilities_to_labels, segmentation_metrics
    from brainnet.predict import model_probabilities
    from brainprep.store import open_store

    store = open_store(store_path)
    train(store, tmp_path / "run", _config(), TINY_MODEL)
    with (tmp_path / "run" / "log.csv").open() as file:
        row = next(csv.DictReader(file))
    loaded = load_model(tmp_path / "run" / "best.pt")  # the model that was validated (1 epoch)
    evaluation = evaluate_store(loaded.model, store, "val", batch_size=2, threshold=0.5)
    images, labels = store.read_patches(store.patch_indices(split="val"))
    probabilities = model_probabilities(loaded.model, torch.from_numpy(images.astype(np.float32)))
    direct = segmentation_metrics(probabilities_to_labels(probabilities, axis=1), labels)
    for target in TARGETS:
        logged = float(row[f"val_dice_labelmap_{target}"])
        assert logged == pytest.approx(evaluation.overall[target]["dice"], abs=1e-12), target
        assert logged == pytest.approx(direct[target]["dice"], abs=1e-12), target
    assert float(row["val_dice_labelmap"]) == pytest.approx(evaluation.score, abs=1e-12)
    assert evaluation.score == pytest.approx(class_score(direct), abs=1e-12)
    assert load_checkpoint(tmp_path / "run" / "best.pt")["best_score"] == pytest.approx(evaluation.score)
    # the command, with the checkpoint's own threshold and precision, prints and writes that score
    from brainnet.cli import main

    args = ["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--store", str(store_path)]
    args += ["--batch-size", "2", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "eval")]
    command = CliRunner().invoke(main, args)
    assert command.exit_code == 0, command.output
    assert f"best.pt is chosen by it): {float(row['val_dice_labelmap']):.4f}" in command.output
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["score"] == pytest.approx(float(row["val_dice_labelmap"]), abs=1e-12)
    # this checkpoint's channels overlap, so the per-channel Dice of the old log would disagree
    onehot = torch.stack([torch.from_numpy(labels) == v for v in (1, 2, 3)], dim=1)
    per_channel = dice_coefficient(
        probabilities > 0.5, onehot, axis=(0, 2, 3, 4), epsilon=0.0, reduction="none"
    )
    label_map = torch.tensor([direct[name]["dice"] for name in ("edema", "non_enhancing", "enhancing")])
    assert not torch.allclose(per_channel, label_map.to(per_channel.dtype))


def test_resume_of_a_checkpoint_scored_by_an_older_dice_forgets_its_best(store_path, tmp_path):
    run = tmp_path / "run"
    train(store_path, run, _config(), TINY_MODEL)
    old = load_checkpoint(run / "last.pt")
    del old["best_metric"]  # as written before the label-map Dice
    old["best_score"] = 2.0  # no Dice reaches it: kept, best.pt would never move again
    save_checkpoint(old, run / "last.pt")
    result = train(store_path, run, _config(epochs=2), TINY_MODEL, resume=True)
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == 2 and best["best_metric"] == "val_dice_labelmap"
    assert result.best_score == best["best_score"] == result.history[-1]["val_dice_labelmap"]


def test_a_kill_while_saving_best_leaves_the_resume_to_write_it(store_path, tmp_path, monkeypatch):
    """best.pt is written before last.pt: killed in between, last.pt is still the previous epoch's, so the
    resumed run replays the epoch and writes best.pt (the other order left a run with no best.pt for good)."""
    import brainnet.train.checkpoint as ckpt_module

    saved = ckpt_module.save_checkpoint

    def killed_at_best(payload, path):
        if Path(path).name == "best.pt":
            raise KeyboardInterrupt("killed while writing best.pt")
        return saved(payload, path)

    monkeypatch.setattr(ckpt_module, "save_checkpoint", killed_at_best)
    with pytest.raises(KeyboardInterrupt):
        train(store_path, tmp_path / "run", _config(), TINY_MODEL)
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing claims the epoch as done
    monkeypatch.setattr(ckpt_module, "save_checkpoint", saved)
    result = train(store_path, tmp_path / "run", _config(), TINY_MODEL, resume=True)
    assert result.best_checkpoint is not None and load_checkpoint(result.best_checkpoint)["epoch"] == 1


def test_resume_equals_an_uninterrupted_run(store_path, tmp_path):
    # 4 steps of 2 patches per epoch do not divide the 12 train patches, so the resumed run has to restart
    # the data stream in the middle of a sampler pass; augmentation must resume with the same draws too.
    config = _config(epochs=2, steps_per_epoch=4, augment=EVERY_TRANSFORM, deterministic=True)
    straight = train(store_path, tmp_path / "straight", config, TINY_MODEL)
    first = train(store_path, tmp_path / "resumed", config.replace(epochs=1), TINY_MODEL)
    second = train(store_path, tmp_path / "resumed", config, TINY_MODEL, resume=True)
    assert not torch.are_deterministic_algorithms_enabled()  # train() restores the global setting
    assert second.epochs == 2 and second.global_step == straight.global_step == 8
    np.testing.assert_array_equal(np.concatenate([first.slots_seen, second.slots_seen]), straight.slots_seen)
    expected = straight.model.state_dict()
    for name, tensor in second.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["sampler"] == b["sampler"]
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][key]["exp_avg_sq"])
    with (tmp_path / "resumed" / "log.csv").open() as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["1", "2"]


def _log_epochs(run: Path) -> list[str]:
    with (run / "log.csv").open() as file:
        return [row["epoch"] for row in csv.DictReader(file)]


def test_a_resume_rebuilds_the_log_from_the_checkpoint(store_path, tmp_path, monkeypatch):
    """last.pt is written before log.csv: a run killed in between, or a deleted log.csv, once lost those
    rows for good (the log was rebuilt from log.csv); the checkpoint's history is the log now, and
    progress.png is drawn from it."""
    import brainnet.train.logs as logs

    run = tmp_path / "run"
    record = logs.RunLogger.epoch

    def killed_at_epoch_2(self, row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt("killed between last.pt and log.csv")
        return record(self, row)

    monkeypatch.setattr(logs.RunLogger, "epoch", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(store_path, run, _config(epochs=3), TINY_MODEL)
    assert load_checkpoint(run / "last.pt")["epoch"] == 2 and _log_epochs(run) == ["1"]
    monkeypatch.setattr(logs.RunLogger, "epoch", record)
    drawn: list[list[str]] = []
    draw = logs.write_progress_png

    def spy(rows, *args):
        drawn.append([str(row["epoch"]) for row in rows])
        return draw(rows, *args)

    monkeypatch.setattr(logs, "write_progress_png", spy)
    result = train(store_path, run, _config(epochs=3), TINY_MODEL, resume=True)
    assert _log_epochs(run) == ["1", "2", "3"] and drawn[-1] == ["1", "2", "3"]
    with (run / "log.csv").open() as file:
        second = list(csv.DictReader(file))[1]
    assert float(second["val_dice_labelmap"]) == result.history[1]["val_dice_labelmap"]
    (run / "log.csv").unlink()  # a resume with nothing left to train still writes the log back
    train(store_path, run, _config(epochs=3), TINY_MODEL, resume=True)
    assert _log_epochs(run) == ["1", "2", "3"] and drawn[-1] == ["1", "2", "3"]


@pytest.mark.parametrize(("field", "value"), [("val_steps", 1), ("threshold", 0.3)])
def test_a_resume_that_changes_the_measure_forgets_the_best_score(field, value, store_path, tmp_path, caplog):
    """val_steps and threshold may change on a resume, but the best score of the earlier epochs was
    measured otherwise: kept, best.pt would be chosen across two measures."""
    run = tmp_path / "run"
    train(store_path, run, _config(), TINY_MODEL)
    old = load_checkpoint(run / "last.pt")
    old["best_score"] = 2.0  # beyond any Dice: kept, best.pt would never move again
    save_checkpoint(old, run / "last.pt")
    with caplog.at_level("WARNING", logger="brainnet.train.loop"):
        result = train(store_path, run, _config(epochs=2, **{field: value}), TINY_MODEL, resume=True)
    assert f"with {field} {getattr(_config(), field)!r} -> {value!r}" in caplog.text
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == 2 and best["train_config"][field] == value
    assert result.best_score == best["best_score"] == result.history[-1]["val_dice_labelmap"]
    # the log says which epoch best.pt holds, and so does progress.png's mark
    with (run / "log.csv").open() as file:
        assert [row["best_pt"] for row in csv.DictReader(file)] == ["1", "1"]
    assert best_epoch(result.history, "val_dice_labelmap") == 2


def test_train_loss_is_the_loss_per_patch(store_path, tmp_path, monkeypatch):
    """12 patches in batches of 5: the short last batch of 2 weighs 2 patches (as the validation loss
    does), not as much as a batch of 5."""
    import brainnet.train.loop as loop

    seen: list[tuple[int, float]] = []
    real = loop.compute_loss

    def spy(logits, target, *args, **kwargs):
        loss = real(logits, target, *args, **kwargs)
        seen.append((len(logits), float(loss.detach())))
        return loss

    monkeypatch.setattr(loop, "compute_loss", spy)
    config = _config(steps_per_epoch=None, batch_size=5, val_split=None)
    result = train(store_path, tmp_path / "run", config, TINY_MODEL)
    assert [n for n, _ in seen] == [5, 5, 2]
    per_patch = sum(n * loss for n, loss in seen) / 12
    assert result.history[0]["train_loss"] == pytest.approx(per_patch, rel=1e-12)
    assert per_patch != pytest.approx(sum(loss for _, loss in seen) / 3, rel=1e-6)


def test_resume_of_a_checkpoint_that_cannot_resume_is_one_line(store_path, tmp_path):
    """A last.pt that loads but lacks what a resume reads (a model-only checkpoint) or holds a damaged
    entry: one line naming the file, from the command and from train(), never a KeyError."""
    from brainnet.cli import main
    from brainnet.train.checkpoint import CheckpointError

    run = tmp_path / "run"
    config = _config(steps_per_epoch=1, val_split=None)  # as _cli_args
    train(store_path, run, config, TINY_MODEL)
    good = load_checkpoint(run / "last.pt")
    last = run / "last.pt"
    args = [*_cli_args(store_path, run), "--resume", "--epochs", "2"]
    resume_keys = ("train_config", "optimizer", "epoch", "global_step", "sampler", "rng", "best_score")
    for key in (*resume_keys, "history"):
        save_checkpoint({k: v for k, v in good.items() if k != key}, last)
        expected = f"{last} lacks {key}: not a training checkpoint to resume"
        assert expected in _one_error_line(CliRunner().invoke(main, args)), key
        with pytest.raises(CheckpointError, match=f"lacks {key}: not a training checkpoint"):
            train(store_path, run, config.replace(epochs=2), TINY_MODEL, resume=True)
    for key, damaged in (("sampler", {}), ("optimizer", {"state": {}, "param_groups": []})):
        save_checkpoint({**good, key: damaged}, last)
        assert f"{last} cannot be resumed" in _one_error_line(CliRunner().invoke(main, args)), key
    assert load_checkpoint(last)["epoch"] == 1


def test_val_steps_counts_the_batches_of_all_ranks(store_path):
    """val_steps batches are the first val_steps * batch_size validation patches whatever the world size
    (they were val_steps batches per rank: a validation set, and a best.pt, that changed with the ranks)."""
    from brainnet.train.distributed import DistributedContext
    from brainnet.train.loop import _val_loader
    from brainprep.store import open_store

    store = open_store(store_path)
    config = _config(val_steps=1)
    first = store.patch_indices(split="val")[: config.batch_size].tolist()
    for world_size in (1, 2, 4):
        read = []
        for rank in range(world_size):
            context = DistributedContext(rank, world_size, rank, torch.device("cpu"), owns_group=False)
            read += [s for batch in _val_loader(store, config, context) for s in batch["slot"].tolist()]
        assert read == first, world_size


def test_cli_train_help_says_what_workers_and_val_steps_are():
    from brainnet.cli import main

    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    assert "threads or processes as --loader chooses" in text and "TrainConfig's default is 0" in text
    assert "over all ranks together" in text


def test_worker_processes_do_not_change_the_result(store_path, tmp_path):
    config = _config(steps_per_epoch=3, augment=EVERY_TRANSFORM)
    single = train(store_path, tmp_path / "w0", config, TINY_MODEL)
    workers = train(store_path, tmp_path / "w2", config.replace(workers=2), TINY_MODEL)
    np.testing.assert_array_equal(single.slots_seen, workers.slots_seen)
    for name, tensor in single.model.state_dict().items():
        assert torch.equal(tensor, workers.model.state_dict()[name]), name


@pytest.mark.parametrize("schedule", ["constant", "poly"])
def test_train_on_batches_equals_train_on_the_same_batches(schedule, store_path, tmp_path):
    # the slots train() read, fed back as batches: the same initialisation, optimizer, learning rates and
    # augmentation
    from brainprep.store import open_store

    config = _config(
        steps_per_epoch=3, val_split=None, augment=EVERY_TRANSFORM, deterministic=True, lr_schedule=schedule
    )
    trained = train(store_path, tmp_path / "run", config, TINY_MODEL)
    with open_store(store_path) as store:
        slots = trained.slots_seen.reshape(3, config.batch_size)
        batches = [
            {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}
            for image, label in (store.read_patches(s) for s in slots)
        ]
    torch.use_deterministic_algorithms(True)
    try:
        model = train_on_batches(batches, config, TINY_MODEL)
    finally:
        torch.use_deterministic_algorithms(False)
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    other = train_on_batches(batches, config.replace(seed=1), TINY_MODEL)
    assert not torch.equal(other.state_dict()["head.weight"], model.state_dict()["head.weight"])


@pytest.mark.parametrize(
    ("field", "value", "default", "bad"),
    [("dice", "batch", "sample", ("voxel",)), ("bce_weight", 1.0, 0.0, (-0.5, float("nan"), float("inf")))],
)
def test_a_loss_option_trains_another_model_and_is_in_the_checkpoint(
    field, value, default, bad, store_path, tmp_path
):
    from brainnet.train.checkpoint import load_checkpoint

    config = _config(steps_per_epoch=2, val_split=None)
    course = train(store_path, tmp_path / "course", config, TINY_MODEL)
    changed = train(store_path, tmp_path / "changed", config.replace(**{field: value}), TINY_MODEL)
    assert not torch.equal(
        course.model.state_dict()["head.weight"], changed.model.state_dict()["head.weight"]
    )
    saved = load_checkpoint(tmp_path / "changed" / "last.pt")
    assert getattr(TrainConfig.from_dict(saved["train_config"]), field) == value
    older = {k: v for k, v in saved["train_config"].items() if k != field}  # a checkpoint from before
    assert getattr(TrainConfig.from_dict(older), field) == default
    with pytest.raises(ConfigError, match=field):  # a resume may not change the loss
        train(store_path, tmp_path / "changed", config.replace(epochs=2), TINY_MODEL, resume=True)
    for wrong in bad:
        with pytest.raises(ConfigError, match=field):
            TrainConfig(**{field: wrong})


def test_poly_learning_rate_is_nnunets_decay():
    assert learning_rate(1e-3, "constant", 7, 10) == 1e-3
    assert learning_rate(1e-3, "poly", 0, 10) == 1e-3
    assert learning_rate(1e-3, "poly", 5, 10) == pytest.approx(1e-3 * 0.5**0.9)
    assert learning_rate(1e-3, "poly", 9, 10) == pytest.approx(1e-3 * 0.1**0.9)
    for step in (-1, 10):
        with pytest.raises(ValueError, match="outside"):
            learning_rate(1e-3, "poly", step, 10)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")
    assert set(LR_SCHEDULES) == set(_cli_choices("--lr-schedule"))


def _cli_choices(option: str) -> list[str]:
    from brainnet.cli.train import train as train_command

    return next(p.type.choices for p in train_command.params if option in p.opts)


def test_a_poly_run_decays_each_step_and_resumes_on_the_same_schedule(store_path, tmp_path, monkeypatch):
    import brainnet.train.checkpoint as ckpt_module

    config = _config(epochs=2, steps_per_epoch=3, val_split=None, lr_schedule="poly", deterministic=True)
    straight = train(store_path, tmp_path / "straight", config, TINY_MODEL)
    saved = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    # the last of the 6 steps ran at lr * (1 - 5 / 6) ** 0.9 and the optimizer keeps that rate
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * (1 / 6) ** 0.9)
    save = ckpt_module.save_checkpoint

    def killed_after_epoch_1(payload, path):
        save(payload, path)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(ckpt_module, "save_checkpoint", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(store_path, tmp_path / "resumed", config, TINY_MODEL)
    monkeypatch.setattr(ckpt_module, "save_checkpoint", save)
    resumed = train(store_path, tmp_path / "resumed", config, TINY_MODEL, resume=True)
    assert resumed.global_step == 6
    constant = train(store_path, tmp_path / "constant", config.replace(lr_schedule="constant"), TINY_MODEL)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    weight = straight.model.state_dict()["head.weight"]
    assert not torch.equal(constant.model.state_dict()["head.weight"], weight)


def test_train_config_refuses_a_negative_seed():
    with pytest.raises(ConfigError, match="seed must be >= 0"):  # a numpy ValueError at the first draw before
        TrainConfig(seed=-1)


def test_resume_refuses_a_different_trajectory(store_path, tmp_path):
    train(store_path, tmp_path / "run", _config(), TINY_MODEL)
    with pytest.raises(ConfigError, match="lr"):
        train(store_path, tmp_path / "run", _config(epochs=2, lr=1e-2), TINY_MODEL, resume=True)
    with pytest.raises(ConfigError, match="dice"):
        train(store_path, tmp_path / "run", _config(epochs=2, dice="batch"), TINY_MODEL, resume=True)
    with pytest.raises(ConfigError, match="model config"):
        train(
            store_path, tmp_path / "run", _config(epochs=2), ModelConfig(depth=2, base_filters=4), resume=True
        )


def test_nan_loss_stops_with_a_clear_message(store_path, tmp_path, monkeypatch):
    import brainnet.train.loop as loop

    calls = {"n": 0}
    real = loop.compute_loss

    def nan_on_second_step(logits, target, dice="sample", bce_weight=0.0, context=None):
        calls["n"] += 1
        loss = real(logits, target, dice, bce_weight, context)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(loop, "compute_loss", nan_on_second_step)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 2 \(epoch 1, batch 2 of 2\)"):
        train(store_path, tmp_path / "run", _config(), TINY_MODEL)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_empty_train_selection_is_an_error(store_path, tmp_path):
    with pytest.raises(ConfigError, match="no train patches"):
        train(store_path, tmp_path / "run", _config(min_tumour_fraction=1.0), TINY_MODEL)


def test_cli_train_then_resume(store_path, tmp_path):
    from brainnet.cli import main

    run = tmp_path / "run"
    common = ["train", "--store", str(store_path), "--out", str(run), "--steps-per-epoch", "1"]
    common += ["--batch-size", "2", "--base-filters", "2", "--depth", "2", "--workers", "0"]
    common += ["--device", "cpu", "--no-progress", "--lr", "1e-3", "--dice", "nnunet", "--bce-weight", "0.5"]
    result = CliRunner().invoke(main, [*common, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "trained 1 epochs" in result.output
    # --val-steps is one of the changes train() accepts on a resume (RESUMABLE_CHANGES): so does the CLI
    result = CliRunner().invoke(main, [*common, "--epochs", "2", "--resume", "--val-steps", "1"])
    assert result.exit_code == 0, result.output
    payload = load_checkpoint(run / "last.pt")
    assert payload["epoch"] == 2 and payload["global_step"] == 2
    assert payload["train_config"]["val_steps"] == 1
    result = CliRunner().invoke(main, [*common, "--epochs", "3", "--resume", "--seed", "7"])
    assert result.exit_code != 0 and "cannot change --seed 7 (checkpoint: 0)" in result.output
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert payload["train_config"]["lr"] == 1e-3 and payload["model_config"]["base_filters"] == 2
    assert payload["train_config"]["dice"] == "nnunet" and payload["train_config"]["bce_weight"] == 0.5


def _cli_args(store_path: Path, run: Path) -> list[str]:
    args = ["train", "--store", str(store_path), "--out", str(run), "--steps-per-epoch", "1", "--epochs", "1"]
    args += ["--batch-size", "2", "--base-filters", "2", "--depth", "2", "--workers", "0"]
    return [*args, "--device", "cpu", "--no-progress", "--val-split", "none"]


def _one_error_line(result) -> str:
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a click error, not a traceback
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize("name", ["last.pt", "best.pt", "log.csv"])
def test_cli_train_refuses_a_folder_that_holds_a_run_without_resume(store_path, tmp_path, name):
    from brainnet.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_bytes(b"an earlier run")
    line = _one_error_line(CliRunner().invoke(main, _cli_args(store_path, run)))
    assert f"{run} already holds a training run ({name}); pass --resume" in line
    assert (run / name).read_bytes() == b"an earlier run"
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(store_path, run, _config(), TINY_MODEL)


@pytest.mark.parametrize("name", ["best.pt", "log.csv"])
def test_resume_of_a_run_without_last_pt_is_refused_not_overwritten(store_path, tmp_path, name):
    """--resume with nothing to resume from started afresh over the run's best.pt and log.csv."""
    from brainnet.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_bytes(b"an earlier run")
    line = _one_error_line(CliRunner().invoke(main, [*_cli_args(store_path, run), "--resume"]))
    assert f"{run} holds a training run ({name}) but no last.pt to resume it from" in line
    assert sorted(p.name for p in run.iterdir()) == [name] and (run / name).read_bytes() == b"an earlier run"
    empty = tmp_path / "empty"  # an empty or new folder: a resume starts a fresh run
    train(store_path, empty, _config(), TINY_MODEL, resume=True)
    assert (empty / "last.pt").is_file()


def test_cli_train_into_a_folder_that_is_a_file_or_below_one_is_one_line(store_path, tmp_path, monkeypatch):
    from brainnet.cli import main
    from brainprep.cli import outputs

    (tmp_path / "file.txt").write_text("")
    run = tmp_path / "file.txt" / "run"
    line = _one_error_line(CliRunner().invoke(main, _cli_args(store_path, run)))
    assert f"cannot write {run}: {tmp_path / 'file.txt'} is a file, not a folder" in line
    monkeypatch.setattr(outputs, "output_problem", lambda path: None)  # failing at the write, not the check
    assert f"cannot write {run}" in _one_error_line(CliRunner().invoke(main, _cli_args(store_path, run)))


def test_cli_train_on_a_file_that_is_not_hdf5_is_one_line(tmp_path):
    from brainnet.cli import main

    store = tmp_path / "x.h5"
    store.write_text("not an HDF5 file\n")
    line = _one_error_line(CliRunner().invoke(main, _cli_args(store, tmp_path / "run")))
    assert line == f"Error: {store} is not an HDF5 file (no HDF5 signature): not a brainprep store"
    assert not (tmp_path / "run").exists()


def test_cli_augment_set_of_the_wrong_type_is_one_line(store_path, tmp_path):
    from brainnet.cli import main

    args = [*_cli_args(store_path, tmp_path / "run"), "--augment", "nnunet", "--augment-set", "noise.p=abc"]
    line = _one_error_line(CliRunner().invoke(main, args))
    assert "--augment-set" in line and "noise.p must be a number, got 'abc'" in line
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_MODEL = ModelConfig(depth=2, base_filters=2, normalization="batch")


def _ddp_worker(rank: int, port: int, store: str, out: str, results: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    # the batch Dice: its sums run through a collective inside the backward pass, beside DDP's own; batch
    # normalization: each rank's forwards update its own running statistics
    config = _config(steps_per_epoch=None, dice="batch", bce_weight=0.5)
    result = train(store, out, config, DDP_MODEL)
    torch.save(
        {"slots": torch.from_numpy(result.slots_seen), "weights": result.model.state_dict()},
        Path(results) / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_ddp_two_cpu_processes_split_the_data_and_agree(store_path, tmp_path):
    import torch.multiprocessing as mp

    from brainprep.store import open_store

    store = open_store(store_path)
    mp.spawn(
        _ddp_worker, args=(_free_port(), str(store_path), str(tmp_path / "run"), str(tmp_path)), nprocs=2
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    seen = [r["slots"].tolist() for r in ranks]
    train_slots = store.patch_indices("train").tolist()
    assert len(seen[0]) == len(seen[1]) == -(-len(train_slots) // 2)
    assert sorted(set(seen[0]) | set(seen[1])) == train_slots
    padding = 2 * len(seen[0]) - len(train_slots)  # 0 for an even split, else 1 repeated patch
    assert len(set(seen[0]) & set(seen[1])) == padding
    for name, tensor in ranks[0]["weights"].items():
        assert torch.equal(tensor, ranks[1]["weights"][name]), name
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["world_size"] == 2
    assert any("running_mean" in name for name in payload["model"])
    for name, tensor in ranks[0]["weights"].items():  # BatchNorm's running statistics too
        assert torch.equal(payload["model"][name], tensor)
    # both ranks validated the saved model: the logged score is the saved model's on the whole split
    from brainnet.evaluate import evaluate_store

    evaluation = evaluate_store(load_model(tmp_path / "run" / "last.pt").model, store, "val", batch_size=2)
    assert payload["history"][0]["val_dice_labelmap"] == pytest.approx(evaluation.score, abs=1e-12)


def _loss_halves() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, 6, 6, 4, generator=g, dtype=torch.float64) * 2
    target = (torch.rand(4, 3, 6, 6, 4, generator=g) < 0.2).double()
    target[2:, 1] = 0.0  # a class absent from rank 1's half: the batch Dice still counts its false positives
    return logits, target


def _batch_dice_worker(rank: int, port: int, results: str) -> None:
    import torch.distributed as dist

    from brainnet.losses import segmentation_loss
    from brainnet.train.distributed import sum_across_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        logits, target = _loss_halves()
        mine = logits[2 * rank : 2 * rank + 2].clone().requires_grad_()
        loss = segmentation_loss(mine, target[2 * rank : 2 * rank + 2], "batch", sum_across=sum_across_ranks)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": mine.grad}, Path(results) / f"rank{rank}.pt")
        # both ranks past every collective before either tears its group down: a rank destroying its
        # gloo group while the other still drains the backward all-reduce aborts that one (SIGABRT)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_batch_dice_under_ddp_is_the_dice_of_every_ranks_batch(tmp_path):
    """Two gloo ranks holding half a batch each: each rank's batch Dice loss is the loss of the whole batch,
    and its gradient on its half is the whole-batch gradient times the world size (which DDP's average of
    the parameter gradients divides back out)."""
    import torch.multiprocessing as mp

    from brainnet.losses import segmentation_loss

    mp.spawn(_batch_dice_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    logits, target = _loss_halves()
    whole = logits.float().clone().requires_grad_()
    expected = segmentation_loss(whole, target.float(), "batch")
    expected.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert float(got["loss"]) == pytest.approx(float(expected.detach()), rel=1e-6)
        half = whole.grad[2 * rank : 2 * rank + 2]
        torch.testing.assert_close(got["grad"].float(), 2 * half, rtol=1e-5, atol=1e-9)
    # one rank's batch alone is another loss (what the batch Dice was under DDP before)
    alone = segmentation_loss(logits[2:].float(), target[2:].float(), "batch")
    assert abs(float(alone) - float(expected.detach())) > 1e-3


def test_sample_dice_never_sums_across_ranks():
    from brainnet.losses import segmentation_loss

    def refuse(_: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a per-example Dice must not be summed across ranks")

    logits, target = _loss_halves()
    assert torch.isfinite(segmentation_loss(logits.float(), target.float(), "sample", sum_across=refuse))


@pytest.mark.parametrize("preset", ["none", "flips", "nnunet"])
def test_every_augmentation_preset_trains_end_to_end(preset, store_path, tmp_path):
    from brainnet.augment import AugmentConfig, with_overrides
    from brainnet.cli import main

    run = tmp_path / "run"
    args = ["train", "--store", str(store_path), "--out", str(run), "--steps-per-epoch", "2", "--epochs", "1"]
    args += ["--batch-size", "2", "--base-filters", "2", "--depth", "2", "--workers", "0", "--device", "cpu"]
    args += ["--no-progress", "--val-split", "none", "--augment", preset]
    if preset == "nnunet":
        args += ["--augment-set", "spatial.p_rotation=1", "--augment-set", "spatial.rotation_degrees=-10,10"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = load_checkpoint(run / "last.pt")["train_config"]["augment"]
    expected = augment_preset(preset)
    if preset == "nnunet":
        expected = with_overrides(
            expected, {"spatial.p_rotation": 1.0, "spatial.rotation_degrees": (-10, 10)}
        )
    assert AugmentConfig.from_dict(saved) == expected
    # --resume may not change the augmentation
    changed = CliRunner().invoke(main, [*args[:-1], "flips" if preset != "flips" else "none", "--resume"])
    assert changed.exit_code != 0 and "--augment" in changed.output
