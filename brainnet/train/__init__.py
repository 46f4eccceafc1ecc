"""Training stage of brainnet: config, loop, checkpoints, logs, multi-process (DDP) setup."""

from brainnet.train.checkpoint import (
    CheckpointError,
    LoadedModel,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from brainnet.train.config import TrainConfig
from brainnet.train.loop import NonFiniteLossError, TrainResult, train, train_on_batches

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "train",
    "train_on_batches",
]
