"""Training hyper-parameters: a frozen :class:`TrainConfig` stored verbatim in every checkpoint.

Course defaults (AI for Medicine, course 1 week 3): ``unet_model_3d`` compiles with
``Adam(lr=initial_learning_rate)`` where ``initial_learning_rate=0.00001`` (1e-5) and the soft Dice loss;
``model.fit_generator`` runs ``n_epochs=10`` epochs of ``steps_per_epoch=20`` batches of 3 patches
(``VolumeDataGenerator(batch_size=3, dim=(160, 160, 16))``) with ``validation_steps=20``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from brainnet.augment.config import AugmentConfig, flips_config
from brainnet.data.loader import LOADER_BACKENDS
from brainnet.data.volume_sampler import WindowSamplingParams
from brainnet.losses import DICE_AXES
from brainnet.train.schedule import LR_SCHEDULES
from brainprep.config import Params
from brainprep.errors import ConfigError
from brainprep.store.schema import SPLIT_NAMES

DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("bfloat16", "float16")
WEIGHTINGS = ("uniform", "tumour")
DICE_MODES = tuple(DICE_AXES)  # brainnet.losses owns the modes and their axes
COURSE_LEARNING_RATE = 1e-5


@dataclass(frozen=True)
class TrainConfig(Params):
    """How a model is trained on a store.

    Attributes:
        epochs: training epochs (course: 10).
        steps_per_epoch: batches per epoch; ``None`` = one pass over the training split (course: 20).
            With a fixed count the data stream runs on across epochs (the sampler's own epoch advances
            whenever a pass over the split is used up).
        batch_size: patches per batch and rank (course: 3).
        lr: Adam learning rate (course: 1e-5); the rate of the first step under ``lr_schedule``.
        lr_schedule: ``constant`` (the course's) or ``poly`` (nnU-Net's polynomial decay to 0 over
            ``epochs`` times the steps of an epoch, :mod:`brainnet.train.schedule`). A resume with more
            ``epochs`` decays the rest of the run from its step over the new length, as nnU-Net's does
            when its epoch count is raised.
        val_split: split evaluated after each epoch; ``None`` skips validation.
        val_steps: validation batches per epoch; ``None`` = the whole split (course: 20). They count over
            all ranks together: validation reads the first ``val_steps * batch_size`` patches of the split
            (a volume store: windows), the batches one process reads, split among the ranks, so the
            score does not depend on the world size.
        seed: seeds model initialisation, shuffling and augmentation.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: mixed precision on CUDA (ignored on CPU).
        amp_dtype: ``bfloat16`` (no loss scaling needed) or ``float16`` (with a GradScaler).
        workers: loader workers reading batches ahead, threads or processes as ``loader`` chooses (0:
            read in the training process; results do not depend on it). The default 0 suits library
            calls and tests; ``brainnet train --workers`` defaults to 2, so the command reads ahead.
        loader: ``auto`` (threads for a Zarr store, processes for HDF5: the faster backend of each,
            :func:`~brainnet.data.loader.resolve_backend`), ``processes`` or ``threads``.
        shuffle_window: shards (cases) whose patches are shuffled together.
        min_tumour_fraction: train only on patches whose stored tumour fraction is at least this.
        weighting: ``uniform`` (every patch once per pass) or ``tumour`` (drawn with replacement,
            probability proportional to the stored tumour fraction).
        augment: batch augmentation on the training device (default none, as the course; presets and
            fields: :mod:`brainnet.augment.config`). Replaces the former ``flip_axes``, which
            :meth:`from_dict` still reads (as the ``flips`` preset on those axes).
        volume_sampling: how windows are drawn from a volume store: shares of tumour-constrained and
            class-balanced draws, draws per pass (:class:`brainnet.data.volume_sampler.WindowSamplingParams`);
            unused on a patch store.
        dice: the training loss's soft Dice: ``sample`` (the course's: one Dice per example and class,
            averaged; a window without tumour teaches nothing), ``batch`` (the axes of nnU-Net's
            ``batch_dice``, with the course's squared denominator: one Dice per class over the batch, so
            false positives in tumour-free windows count) or ``nnunet`` (the batch axes with nnU-Net's
            ``sum t + sum p`` denominator: with ``bce_weight=1`` nnU-Net's region loss;
            :data:`brainnet.losses.DICE_AXES`). Under DDP a batch Dice sums over every rank's batch, as
            nnU-Net's does (it all-gathers the sums): N ranks train as one process with N times the batch.
            Validation loss stays per patch.
        bce_weight: weight of a binary cross-entropy term added to the Dice (0, the default: the course's
            loss; 1: Dice + BCE, as nnU-Net's region loss, whose Dice has no squares). The Dice alone can
            leave a channel saturated over the whole brain for good; the cross-entropy pulls it back
            (:func:`brainnet.losses.segmentation_loss`).
        threshold: probability threshold of the reported Dice.
        deterministic: ``torch.use_deterministic_algorithms`` (bit-exact reruns on CPU; slower on GPU).
    """

    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 3
    lr: float = COURSE_LEARNING_RATE
    lr_schedule: str = "constant"
    val_split: str | None = "val"
    val_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "bfloat16"
    workers: int = 0
    loader: str = "auto"
    shuffle_window: int = 4
    min_tumour_fraction: float = 0.0
    weighting: str = "uniform"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    volume_sampling: WindowSamplingParams = field(default_factory=WindowSamplingParams)
    dice: str = "sample"
    bce_weight: float = 0.0
    threshold: float = 0.5
    deterministic: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "shuffle_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps_per_epoch", "val_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1 or None, got {value}")
        if self.seed < 0:
            raise ConfigError(f"TrainConfig.seed must be >= 0, got {self.seed}")
        if not self.lr > 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )
        if self.loader not in LOADER_BACKENDS:
            raise ConfigError(f"TrainConfig.loader must be one of {LOADER_BACKENDS}, got {self.loader!r}")
        if self.workers < 0:
            raise ConfigError(f"TrainConfig.workers must be >= 0, got {self.workers}")
        if self.val_split is not None and self.val_split not in SPLIT_NAMES:
            raise ConfigError(
                f"TrainConfig.val_split must be one of {SPLIT_NAMES} or None, got {self.val_split!r}"
            )
        if self.device not in DEVICES:
            raise ConfigError(f"TrainConfig.device must be one of {DEVICES}, got {self.device!r}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ConfigError(f"TrainConfig.amp_dtype must be one of {AMP_DTYPES}, got {self.amp_dtype!r}")
        if self.dice not in DICE_MODES:
            raise ConfigError(f"TrainConfig.dice must be one of {DICE_MODES}, got {self.dice!r}")
        if not (math.isfinite(self.bce_weight) and self.bce_weight >= 0):
            raise ConfigError(f"TrainConfig.bce_weight must be a finite number >= 0, got {self.bce_weight}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"TrainConfig.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not 0.0 <= self.min_tumour_fraction <= 1.0:
            raise ConfigError(
                f"TrainConfig.min_tumour_fraction must be in [0, 1], got {self.min_tumour_fraction}"
            )
        if not isinstance(self.augment, AugmentConfig):
            raise ConfigError(
                f"TrainConfig.augment must be an AugmentConfig, got {type(self.augment).__name__}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"TrainConfig.threshold must be in (0, 1), got {self.threshold}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Like :meth:`Params.from_dict`; a dict of a checkpoint from before ``augment`` (with ``flip_axes``)
        reads as the ``flips`` preset on those axes (no augmentation when they are empty)."""
        data = dict(data)
        if "flip_axes" in data:
            axes = tuple(data.pop("flip_axes"))
            if "augment" in data and axes:
                raise ConfigError(
                    "TrainConfig has both flip_axes and augment; flip_axes was replaced by augment"
                )
            data.setdefault("augment", flips_config(axes).to_dict())
        return super().from_dict(data)
