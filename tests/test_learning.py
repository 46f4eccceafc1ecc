"""A tiny U-Net trained for a few epochs on a small synthetic store beats the all-background prediction.

Slow (about 20-60 s on 2 CPU cores, under 4 minutes on a busy machine): run with ``pytest -m slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

from brainnet.evaluate import confusion_counts, evaluate_store, metrics_from_counts
from brainnet.model import ModelConfig
from brainnet.train import TrainConfig, train

pytestmark = pytest.mark.slow


def test_tiny_model_learns_whole_tumour(tmp_path):
    from brainprep.builder import build_patches
    from brainprep.params import BuildParams, SamplingParams, SplitParams
    from brainprep.store import open_store
    from brainprep.synth import SynthParams, write_synthetic_dataset

    data = write_synthetic_dataset(
        tmp_path / "synth", SynthParams(n_cases=10, shape=(64, 64, 32), seed=0, small_tumour_every=0)
    )
    params = BuildParams(
        sampling=SamplingParams(patch_size=(32, 32, 16), patches_per_case=8),
        split=SplitParams(val_fraction=0.2),
    )
    build_patches(data, tmp_path / "store.zarr", params, workers=1, progress=False)
    store = open_store(tmp_path / "store.zarr")
    val = store.patch_indices("val")
    assert len(val) > 0 and len(store.patch_indices("train")) > len(val)

    # lr 1e-3 rather than the course's 1e-5 so that a few epochs suffice.
    config = TrainConfig(epochs=5, batch_size=4, lr=1e-3, device="cpu", workers=0, seed=0)
    result = train(store, tmp_path / "run", config, ModelConfig(depth=3, base_filters=8))
    trained = evaluate_store(result.model, store, "val").overall["whole_tumour"]["dice"]

    _, labels = store.read_patches(val)
    background = metrics_from_counts(confusion_counts(np.zeros_like(labels), labels))["whole_tumour"]["dice"]
    assert background == 0.0  # every val patch holds tumour, so predicting none scores 0
    assert trained > background + 0.5, f"whole-tumour Dice {trained:.3f} after {config.epochs} epochs"
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
