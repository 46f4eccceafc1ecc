"""The training loop: Adam on the soft Dice loss, per-epoch validation, checkpoints, resume, DDP.

Layers: :func:`compute_loss` is a pure tensor function; :func:`train_step` and :func:`validate` run one
batch / one split; :func:`train` is the driver (data, model, epochs). The Dice of the log is the label-map
Dice of :mod:`brainnet.metrics` (the one ``brainnet evaluate`` reports), the checkpoint is built by
:mod:`brainnet.train.checkpoint`, the CSV / TensorBoard log by :mod:`brainnet.train.logs`. Run it on
several processes with ``torchrun`` (see :mod:`brainnet.train.distributed`).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainnet.augment import BatchAugment
from brainnet.data.dataset import PatchDataset, split_slots, to_training_batch
from brainnet.data.loader import make_loader
from brainnet.data.sampler import ShardShuffleSampler, filter_by_tumour_fraction, tumour_weights
from brainnet.losses import segmentation_loss, soft_dice_loss
from brainnet.metrics import DICE_NAME, class_score, label_map_counts, metrics_from_counts
from brainnet.model import ModelConfig, build_model
from brainnet.train import checkpoint as ckpt
from brainnet.train.config import TrainConfig
from brainnet.train.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    init_distributed,
    shutdown,
    sum_across_ranks,
)
from brainnet.train.logs import CSV_NAME, RunLogger
from brainnet.train.progress import BEST_COLUMN
from brainnet.train.schedule import learning_rate, set_learning_rate
from brainprep.errors import BrainprepError, ConfigError, StoreMismatchError
from brainprep.spec import MSD_SPEC, DatasetSpec

logger = logging.getLogger(__name__)

LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
#: the files that make a folder a training run (TensorBoard events alone: a run killed in its first epoch)
RUN_FILES = (LAST_NAME, BEST_NAME, CSV_NAME)
#: TrainConfig fields that may change when resuming; any other change would break the trajectory.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "workers", "loader", "device", "amp", "deterministic", "val_steps", "threshold"}
)
#: the resumable changes that change what the score measures (the patches validated, the threshold of the
#: Dice): a resume with one of them forgets the best score, so best.pt is not chosen across two measures.
SCORE_CHANGES = ("val_steps", "threshold")
#: log columns of the label-map Dice: the score of the train batches, of the validation split (the mean of
#: its class columns; ``best.pt`` is chosen by it), and one column per target of the validation split.
TRAIN_SCORE = f"train_{DICE_NAME}"
VAL_SCORE = f"val_{DICE_NAME}"


class NonFiniteLossError(BrainprepError, FloatingPointError):
    """The loss became NaN or infinite; training stops rather than writing garbage weights."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        out_dir: the run folder.
        last_checkpoint, best_checkpoint: paths (``best`` is ``None`` if no epoch finished).
        epochs: epochs completed (including those of a resumed run).
        global_step: optimizer steps taken in total.
        best_score: best value of the log column ``best_metric``.
        best_metric: ``val_dice_labelmap`` (``train_dice_labelmap`` without a validation split).
        history: one dict per finished epoch (the CSV rows).
        slots_seen: int64, the store slots this rank trained on in this call, in order.
        model: the trained network (unwrapped, on the training device).
        rank, world_size: this process in the run.
    """

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    epochs: int
    global_step: int
    best_score: float
    history: list[dict[str, Any]]
    slots_seen: np.ndarray = field(repr=False)
    model: nn.Module | None = field(default=None, repr=False)
    rank: int = 0
    world_size: int = 1
    best_metric: str = VAL_SCORE


def compute_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice: str = "sample",
    bce_weight: float = 0.0,
    context: DistributedContext | None = None,
) -> torch.Tensor:
    """The training loss (:func:`brainnet.losses.segmentation_loss`: soft Dice of sigmoid(logits), plus
    ``bce_weight`` times the cross-entropy), computed in float32 whatever the autocast dtype.

    Args:
        logits: (B, 3, X, Y, Z) pre-sigmoid outputs.
        target: float32 (B, 3, X, Y, Z) one-hot.
        dice: ``sample``, ``batch`` or ``nnunet`` (:attr:`TrainConfig.dice`).
        bce_weight: :attr:`TrainConfig.bce_weight`.
        context: under DDP, a ``batch`` or ``nnunet`` Dice sums over every rank's batch
            (:func:`sum_across_ranks`).
    """
    across = sum_across_ranks if context is not None and context.enabled else None
    return segmentation_loss(logits, target, dice, bce_weight, sum_across=across)


class _Logits(nn.Module):
    """Makes ``forward`` return logits, so DDP (which hooks ``forward``) wraps the AMP-safe path."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_logits(x)


@dataclass
class _Precision:
    enabled: bool
    dtype: torch.dtype
    scaler: torch.amp.GradScaler | None

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.enabled)


def _precision(config: TrainConfig, device: torch.device) -> _Precision:
    if not (config.amp and device.type == "cuda"):
        return _Precision(False, torch.float32, None)
    dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        logger.warning("this GPU has no bfloat16; using float16 autocast with loss scaling")
        dtype = torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return _Precision(True, dtype, scaler)


class _Stream:
    """Batches of the training split as an endless stream across sampler epochs (resumable)."""

    def __init__(self, dataset: PatchDataset, sampler: ShardShuffleSampler, config: TrainConfig, device):
        self.dataset = dataset
        self.sampler = sampler
        self.loader = make_loader(
            dataset,
            sampler,
            batch_size=config.batch_size,
            workers=config.workers,
            device=device,
            backend=config.loader,
        )
        self.iterator: Iterator[dict[str, Any]] | None = None
        self.consumed = sampler.start

    def pass_length(self) -> int:
        """Positions of one full pass of this rank."""
        return len(self.sampler) + self.sampler.start

    def state(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "start": self.consumed}

    def next(self) -> dict[str, Any]:
        if self.iterator is None:
            if self.consumed >= self.pass_length():
                self.sampler.set_epoch(self.sampler.epoch + 1, 0)
                self.consumed = 0
            self.sampler.set_epoch(self.sampler.epoch, self.consumed)
            self.dataset.set_epoch(self.sampler.epoch)
            self.iterator = iter(self.loader)
        batch = next(self.iterator)
        self.consumed += len(batch["slot"])
        if self.consumed >= self.pass_length():
            self.iterator = None  # the pass is used up: the next call starts the next sampler epoch
        return batch


def train_step(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    precision: _Precision,
    context: DistributedContext,
    threshold: float,
    augment: Any = None,
    spec: DatasetSpec = MSD_SPEC,
    dice: str = "sample",
    bce_weight: float = 0.0,
) -> tuple[float, torch.Tensor]:
    """One optimizer step. Returns the loss averaged over ranks and the batch's label-map counts.

    The counts are :func:`brainnet.metrics.label_map_counts`' int64 (T, 4), on the device.

    Args:
        augment: ``(image, label) -> (image, label)`` applied to the batch on the device, or ``None``.
        spec: the store's dataset spec (classes of the target and of the counts).
        dice: the loss's soft Dice, ``sample``, ``batch`` or ``nnunet`` (:attr:`TrainConfig.dice`).
        bce_weight: the loss's cross-entropy weight (:attr:`TrainConfig.bce_weight`).

    Raises:
        NonFiniteLossError: the loss is NaN/Inf on any rank (all ranks raise together).
    """
    device = context.device
    image, target = to_training_batch(batch, device, augment, spec)
    with precision.autocast(device):
        logits = network(image)
    loss = compute_loss(logits, target, dice, bce_weight, context)
    mean_loss = float(all_reduce_sum(loss, context).item()) / context.world_size
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"loss is {mean_loss}")
    optimizer.zero_grad(set_to_none=True)
    if precision.scaler is not None:
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        counts = label_map_counts(torch.sigmoid(logits.detach().float()), target, threshold, spec=spec)
    return mean_loss, counts


@torch.no_grad()
def validate(
    network: nn.Module,
    loader: torch.utils.data.DataLoader,
    precision: _Precision,
    context: DistributedContext,
    threshold: float,
    spec: DatasetSpec = MSD_SPEC,
) -> dict[str, float]:
    """Loss and label-map Dice over what ``loader`` reads (this rank's part of the validation patches,
    :func:`validation_count` of them over all ranks), voxel counts summed over all ranks.

    Returns:
        ``{"val_loss", "val_dice_labelmap", "val_dice_labelmap_<target>" for each target}``: the Dice of
        :mod:`brainnet.metrics` per class and region over the whole split, and their score (the mean of
        the class Dice), the numbers ``brainnet evaluate`` reports on the same patches.
    """
    network.eval()
    device = context.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    patches = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros((len(spec.targets), 4), dtype=torch.int64, device=device)
    for batch in loader:
        image, target = to_training_batch(batch, device, spec=spec)
        with precision.autocast(device):
            logits = network(image)
        probabilities = torch.sigmoid(logits.float())
        for k in range(len(image)):
            loss_sum += soft_dice_loss(probabilities[k : k + 1], target[k : k + 1]).double()
        patches += len(image)
        counts += label_map_counts(probabilities, target, threshold, spec=spec)
    loss_sum, patches, counts = (all_reduce_sum(t, context) for t in (loss_sum, patches, counts))
    network.train()
    dice = metrics_from_counts(counts, spec)
    metrics = {"val_loss": float(loss_sum / patches.clamp(min=1)), VAL_SCORE: class_score(dice, spec)}
    metrics.update({f"{VAL_SCORE}_{name}": dice[name]["dice"] for name in spec.targets})
    return metrics


def volume_stream(store: Any, config: TrainConfig, context: DistributedContext, split: str, train: bool):
    """Dataset and sampler of fresh windows of a volume store (:mod:`brainnet.data.volume_sampler`).

    Validation reads a fixed set of windows (epoch 0 of its own stream, seed + 1), drawn as the course's
    validation patches are: all tumour-constrained. Training windows come with the context a spatial
    augmentation resamples from (:func:`brainnet.augment.context_margin`; none without one).
    """
    from brainnet.augment import context_margin
    from brainnet.data.volume_sampler import VolumeWindowDataset, WindowStreamSampler

    if train and (config.weighting != "uniform" or config.min_tumour_fraction > 0):
        logger.warning(
            "weighting and min_tumour_fraction select stored patches; a volume store draws fresh windows "
            "by volume_sampling (--tumour-share, --foreground-share) instead, so they are ignored"
        )
    draws = volume_draws(store, config.volume_sampling, config.seed, split, train)
    count = draws.params.draws_per_epoch
    sampler = WindowStreamSampler(
        count if train else validation_count(config, count),
        rank=context.rank,
        world_size=context.world_size,
        remainder="pad" if train else "uneven",
    )
    margin = context_margin(config.augment.spatial, store.patch_size) if train else (0, 0, 0)
    return VolumeWindowDataset(store, draws, margin), sampler


def volume_draws(store: Any, params: Any, seed: int, split: str | None, train: bool) -> Any:
    """The :class:`~brainnet.data.volume_sampler.VolumeDraws` training (``train``) or validation reads from a
    volume store with sampling ``params`` and the run's ``seed``: validation's windows are all
    tumour-constrained (the course's validation patches), from their own stream (``seed + 1``)."""
    from brainnet.data.volume_sampler import VolumeDraws

    if not train:
        params = params.replace(tumour_share=1.0, foreground_share=0.0)
    return VolumeDraws(store, split, params, seed=seed if train else seed + 1)


def patch_order(store: Any, config: TrainConfig, split: str | None, count: int) -> np.ndarray:
    """int64 (count,): the slots of a patch store that training with ``config`` (``split`` ``train``, or
    ``None`` for every case: rank 0's shard-shuffled sampler passes, one after another) or validation
    (``val``: the stored order, once) reads first, in that order.

    Raises:
        ConfigError: validation reads fewer than ``count`` patches (or none).
    """
    if split == "val":
        slots = split_slots(store, "val")
        slots = slots[: validation_count(config, len(slots))]  # what _val_loader reads
        if len(slots) == 0:
            raise ConfigError(f"store {store.location} has no val patches")
        if len(slots) < count:
            raise ConfigError(f"validation reads {len(slots)} patches of {store.location}, asked for {count}")
        return slots[:count]
    context = DistributedContext(0, 1, 0, torch.device("cpu"), owns_group=False)
    dataset, sampler = _train_dataset(store, config, context, split)
    order: list[np.ndarray] = []
    while sum(map(len, order)) < count:  # the loader keeps the short last batch: passes run on
        sampler.set_epoch(len(order), 0)
        order.append(dataset.slots[np.fromiter(iter(sampler), dtype=np.int64)])
    return np.concatenate(order)[:count]


def _train_dataset(store: Any, config: TrainConfig, context: DistributedContext, split: str | None = "train"):
    if is_volume_store(store):
        return volume_stream(store, config, context, split, train=True)
    slots = split_slots(store, split)
    slots = filter_by_tumour_fraction(slots, store.table.tumour_fraction, config.min_tumour_fraction)
    if len(slots) == 0:
        raise ConfigError(
            f"store {store.location} has no {split or 'stored'} patches with tumour fraction "
            f">= {config.min_tumour_fraction}"
        )
    dataset = PatchDataset(store, slots)  # augmentation happens on the batch, in train_step
    weights = tumour_weights(dataset.tumour_fraction) if config.weighting == "tumour" else None
    sampler = ShardShuffleSampler(
        dataset.shards,
        shuffle=True,
        seed=config.seed,
        window=config.shuffle_window,
        rank=context.rank,
        world_size=context.world_size,
        remainder="pad",
        weights=weights,
    )
    return dataset, sampler


def validation_count(config: TrainConfig, available: int) -> int:
    """The patches (windows) validation reads of the ``available`` ones, over all ranks together: the
    first ``val_steps`` batches one process reads, so the validation set does not depend on the ranks."""
    if config.val_steps is None:
        return available
    return min(available, config.val_steps * config.batch_size)


def _val_loader(store: Any, config: TrainConfig, context: DistributedContext):
    if config.val_split is None:
        return None
    if is_volume_store(store):
        if len(store.case_indices(config.val_split)) == 0:
            logger.warning("store %s has no %s cases: no validation", store.location, config.val_split)
            return None
        dataset, sampler = volume_stream(store, config, context, config.val_split, train=False)
    else:
        slots = split_slots(store, config.val_split)
        if len(slots) == 0:
            logger.warning("store %s has no %s patches: no validation", store.location, config.val_split)
            return None
        dataset = PatchDataset(store, slots[: validation_count(config, len(slots))])
        sampler = ShardShuffleSampler(
            dataset.shards,
            shuffle=False,
            rank=context.rank,
            world_size=context.world_size,
            remainder="uneven",
        )
    return make_loader(
        dataset,
        sampler,
        batch_size=config.batch_size,
        workers=config.workers,
        device=context.device,
        backend=config.loader,
    )


def _check_resumable(
    saved: dict[str, Any], config: TrainConfig, model_config: ModelConfig, path: Path
) -> None:
    if saved["model_config"] != model_config.to_dict():
        raise ConfigError(
            f"cannot resume {path}: model config {model_config.to_dict()} differs from the checkpoint's "
            f"{saved['model_config']}"
        )
    old = TrainConfig.from_dict(saved["train_config"]).to_dict()  # older dicts: today's fields
    changed = sorted(
        k for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES and k in old and old[k] != v
    )
    if changed:
        details = ", ".join(f"{k}: {old[k]!r} -> {config.to_dict()[k]!r}" for k in changed)
        raise ConfigError(
            f"cannot resume {path} with a different {details} (only {sorted(RESUMABLE_CHANGES)} may change)"
        )


def _check_same_store(saved: dict[str, Any], store: Any, path: Path, allow_change: bool) -> None:
    """Refuse to resume ``path`` on a store other than the one it was trained on (by content id, or by
    build parameters for stores and checkpoints from before content ids), unless ``allow_change``."""
    from brainprep.store.integrity import short_id

    old_id, new_id = saved.get("store_id"), getattr(store, "content_id", None)
    if old_id and new_id:
        if old_id != new_id and not allow_change:
            raise StoreMismatchError(
                f"cannot resume {path} on store {store.location} (id {short_id(new_id)}): it was trained on "
                f"{saved.get('store', '?')} (id {short_id(old_id)}); pass --allow-store-change to go on "
                "training on another store on purpose"
            )
        return
    built = store.params.to_dict()
    trained = saved["build_params"]
    if "train_config" in saved:  # the checkpoint records the standardization trained with
        trained_with = TrainConfig.from_dict(saved["train_config"])
        built = ckpt.trained_build_params(store.params, trained_with).to_dict()
    if trained != built and not allow_change:
        raise StoreMismatchError(
            f"cannot resume {path}: store {store.location} was not built like the store it was trained on "
            f"({saved.get('store', '?')}); pass --allow-store-change to go on on purpose"
        )
    logger.warning(
        "resuming %s without a store id to compare (a store or checkpoint from before store ids): only the "
        "build parameters were compared",
        path,
    )


def is_volume_store(store: Any) -> bool:
    """True for a :class:`~brainprep.store.volume_reader.VolumeStore` (fresh windows instead of slots)."""
    from brainprep.store.volume_reader import VolumeStore

    return isinstance(store, VolumeStore)


def _open(store: Any):
    if hasattr(store, "read_patches"):
        return store
    from brainprep.store.reader import open_store

    return open_store(store)


def train(
    store: Any,
    out_dir: Path | str,
    config: TrainConfig,
    model_config: ModelConfig | None = None,
    progress: bool = False,
    *,
    resume: bool = False,
    allow_store_change: bool = False,
) -> TrainResult:
    """Train a :class:`~brainnet.model.UNet3D` on the ``train`` split of a store.

    Writes ``out_dir/last.pt`` after every epoch, ``out_dir/best.pt`` whenever the validation score
    (``val_dice_labelmap``, the score ``brainnet evaluate`` reports) improves, ``out_dir/log.csv`` and
    TensorBoard events in ``out_dir/tensorboard``.

    Args:
        store: a :class:`~brainprep.store.reader.PatchStore` or its location.
        out_dir: the run folder.
        config: training parameters.
        model_config: the network (default: the course's).
        progress: show a tqdm bar with loss and Dice (rank 0 only).
        resume: continue from ``out_dir/last.pt`` (model, optimizer, epoch, step, RNG and sampler state);
            the run then ends after ``config.epochs`` epochs in total. A fresh start when it is absent.
        allow_store_change: let ``resume`` continue on a store other than the checkpoint's (fine-tuning
            on purpose); otherwise a different store content id is refused.

    Raises:
        NonFiniteLossError: the loss became NaN/Inf (message names epoch and step).
        ConfigError: an empty train split, a resume with a different model / trajectory, a fresh run
            (no ``resume``) into a folder that holds one (``last.pt``, ``best.pt`` or ``log.csv``), or a
            resume of a folder holding ``best.pt`` or ``log.csv`` but no ``last.pt``.
        StoreMismatchError: a resume on another store (without ``allow_store_change``).
    """
    out_dir = Path(out_dir)
    if not resume:
        refuse_existing_run(out_dir)
    elif not (out_dir / "last.pt").exists():
        # nothing to resume from: starting afresh would overwrite the run's best.pt and log.csv
        found = [name for name in RUN_FILES if (out_dir / name).exists()]
        if found:
            raise ConfigError(
                f"{out_dir} holds a training run ({', '.join(found)}) but no last.pt to resume it from; "
                "restore last.pt, or choose another --out for a fresh run"
            )
    store = _open(store)
    n_classes = store.spec.n_classes
    model_config = model_config if model_config is not None else ModelConfig(out_channels=n_classes)
    problem = ckpt.model_fit_problem(model_config, store.spec)
    if problem is not None:
        raise ConfigError(f"store {store.location}: {problem}")
    context = init_distributed(config.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        result = _run(store, out_dir, config, model_config, progress, resume, context, allow_store_change)
        barrier(context)  # every rank past its last collective before any tears the group down
        return result
    finally:
        torch.use_deterministic_algorithms(deterministic)
        shutdown(context)


def refuse_existing_run(out_dir: Path) -> None:
    """Refuse a fresh run into a folder holding one: it would overwrite that run's checkpoints and log.

    Every rank checks before any of them writes: the first checkpoint and log row come after an epoch,
    whose steps need every rank.
    """
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if found:
        raise ConfigError(
            f"{out_dir} already holds a training run ({', '.join(found)}); pass --resume to continue it "
            "or choose another --out"
        )


@dataclass
class _Run:
    """What the epochs of one :func:`train` call work with."""

    config: TrainConfig
    context: DistributedContext
    model: nn.Module
    plain: nn.Module  # the model returning logits
    network: nn.Module  # ``plain``, wrapped by DDP when distributed
    optimizer: torch.optim.Optimizer
    precision: _Precision
    stream: _Stream
    steps: int
    augmenter: BatchAugment | None
    last_path: Path
    best_path: Path
    score_column: str
    spec: DatasetSpec = MSD_SPEC
    run_logger: RunLogger | None = None
    seen: list[np.ndarray] = field(default_factory=list)


def _load_for_resume(
    path: Path,
    config: TrainConfig,
    model_config: ModelConfig,
    store: Any,
    context: DistributedContext,
    allow_store_change: bool,
) -> dict[str, Any]:
    """The checkpoint at ``path``, once it is known to continue this very run."""
    saved = ckpt.load_checkpoint(path, map_location=context.device)
    ckpt.check_resume_keys(saved, path)
    _check_resumable(saved, config, model_config, path)
    _check_same_store(saved, store, path, allow_store_change)
    if saved.get("world_size", 1) != context.world_size:
        raise ConfigError(
            f"cannot resume {path} (written by {saved.get('world_size', 1)} ranks) "
            f"on {context.world_size} ranks: the data order would change"
        )
    return saved


def _restore(
    saved: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    sampler: Any,
    config: TrainConfig,
    score_column: str,
    path: Path,
) -> ckpt.RunState:
    """:func:`~brainnet.train.checkpoint.restore_training`, told what of the score's measure this resume
    changes (:func:`_measure_changes`); a damaged entry (an optimizer state of other parameters, a sampler
    or RNG state of another shape) refused in one line naming ``path``."""
    changes = _measure_changes(saved, config, score_column)
    try:
        return ckpt.restore_training(saved, model, optimizer, scaler, sampler, score_column, changes)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise ckpt.CheckpointError(f"{path} cannot be resumed: {type(err).__name__}: {err}") from err


def _measure_changes(saved: dict[str, Any], config: TrainConfig, score_column: str) -> list[str]:
    """What a resume with ``config`` changes of what the score measures (:data:`SCORE_CHANGES`), as
    ``"val_steps 8 -> 1"``: the checkpoint's best score was measured otherwise, so it is forgotten."""
    old = TrainConfig.from_dict(saved["train_config"])
    names = [n for n in SCORE_CHANGES if getattr(old, n) != getattr(config, n)]
    if score_column != VAL_SCORE:
        names = [n for n in names if n != "val_steps"]  # the training score validates nothing
    return [f"{n} {getattr(old, n)!r} -> {getattr(config, n)!r}" for n in names]


def _wrap(model: nn.Module, context: DistributedContext) -> tuple[nn.Module, nn.Module]:
    """(the model returning logits, the same wrapped by DDP when distributed)."""
    plain = _Logits(model)
    if not context.enabled:
        return plain, plain
    from torch.nn.parallel import DistributedDataParallel

    device = context.device
    return plain, DistributedDataParallel(plain, device_ids=[device.index] if device.type == "cuda" else None)


def _train_epoch(run: _Run, state: ckpt.RunState, bar: Any) -> tuple[float, torch.Tensor]:
    """The optimizer steps of one epoch: the loss per patch (a short batch weighs its patches, as the
    validation loss does) and the summed label-map counts of this rank."""
    loss_sum = 0.0
    patches = 0
    spec = run.spec
    counts = torch.zeros((len(spec.targets), 4), dtype=torch.int64, device=run.context.device)
    # the run's length as this epoch sees it: epochs * steps, unless a resume changed the epoch's steps
    total_steps = state.global_step + (run.config.epochs - state.epoch) * run.steps
    for index in range(run.steps):
        batch = run.stream.next()
        run.seen.append(batch["slot"].numpy())
        augment = step_augment(run.augmenter, run.config.seed, run.context.rank, state.global_step)
        rate = learning_rate(run.config.lr, run.config.lr_schedule, state.global_step, total_steps)
        set_learning_rate(run.optimizer, rate)
        try:
            loss, batch_counts = train_step(
                run.network,
                run.optimizer,
                batch,
                run.precision,
                run.context,
                run.config.threshold,
                augment,
                spec,
                run.config.dice,
                run.config.bce_weight,
            )
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"{err} at step {state.global_step + 1} (epoch {state.epoch + 1}, batch {index + 1} of "
                f"{run.steps}); training stopped, last good checkpoint: "
                f"{run.last_path if run.last_path.exists() else 'none'}"
            ) from None
        state.global_step += 1
        # every rank's batch has this size (the sampler pads): the rank-averaged loss weighs it as is
        loss_sum += loss * len(batch["slot"])
        patches += len(batch["slot"])
        counts += batch_counts
        if run.run_logger is not None:
            run.run_logger.step({"train/loss": loss}, state.global_step)
        if bar is not None:
            bar.set_postfix(
                loss=f"{loss:.4f}", dice=f"{class_score(metrics_from_counts(counts, spec), spec):.4f}"
            )
            bar.update()
    return loss_sum / patches, counts


def _epoch_row(run: _Run, state: ckpt.RunState, val_loader: Any, progress: bool) -> dict[str, Any]:
    """Train one epoch and validate: the log row (label-map Dice of :mod:`brainnet.metrics`)."""
    started = time.perf_counter()
    bar = None
    if progress and run.context.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.steps, desc=f"epoch {state.epoch + 1}/{run.config.epochs}", unit="batch")
    train_loss, counts = _train_epoch(run, state, bar)
    if bar is not None:
        bar.close()
    broadcast_buffers(run.model, run.context)
    row: dict[str, Any] = {
        "epoch": state.epoch + 1,
        "global_step": state.global_step,
        "train_loss": train_loss,
        TRAIN_SCORE: class_score(
            metrics_from_counts(all_reduce_sum(counts, run.context), run.spec), run.spec
        ),
    }
    if val_loader is not None:
        config = run.config
        row.update(
            validate(
                run.plain,
                val_loader,
                run.precision,
                run.context,
                config.threshold,
                run.spec,
            )
        )
    row["seconds"] = time.perf_counter() - started
    return row


def _end_epoch(
    run: _Run, state: ckpt.RunState, row: dict[str, Any], model_config: ModelConfig, store: Any
) -> None:
    """Record the epoch: state, ``last.pt``, ``best.pt`` when the score improved, the log (rank 0)."""
    state.epoch = int(row["epoch"])
    score = float(row[run.score_column])
    improved = score > state.best_score
    row[BEST_COLUMN] = int(improved)
    state.best_score = max(state.best_score, score)
    state.history.append(row)
    if run.context.is_main:
        payload = ckpt.training_payload(
            model=run.model,
            optimizer=run.optimizer,
            scaler=run.precision.scaler,
            model_config=model_config,
            train_config=run.config,
            store=store,
            sampler=run.stream.state(),
            state=state,
            best_metric=run.score_column,
            world_size=run.context.world_size,
        )
        # best.pt first: a run killed between the two resumes from the previous last.pt and replays the
        # epoch (rewriting best.pt); the other order would resume believing best.pt already saved
        if improved:
            ckpt.save_checkpoint(payload, run.best_path)
        ckpt.save_checkpoint(payload, run.last_path)
        run.run_logger.epoch(row)
        logger.info("epoch %d: %s", state.epoch, {k: round(v, 4) for k, v in row.items()})
    barrier(run.context)


def _model_and_optimizer(
    config: TrainConfig, model_config: ModelConfig, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A fresh network initialised from ``config.seed`` on ``device``, and its Adam optimizer."""
    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=config.lr)


def _run(
    store: Any,
    out_dir: Path,
    config: TrainConfig,
    model_config: ModelConfig,
    progress: bool,
    resume: bool,
    context: DistributedContext,
    allow_store_change: bool = False,
) -> TrainResult:
    device = context.device
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model, optimizer = _model_and_optimizer(config, model_config, device)
    precision = _precision(config, device)
    dataset, sampler = _train_dataset(store, config, context)
    val_loader = _val_loader(store, config, context)
    score_column = VAL_SCORE if val_loader is not None else TRAIN_SCORE
    last_path = out_dir / LAST_NAME
    state = ckpt.RunState()
    if resume and last_path.exists():
        saved = _load_for_resume(last_path, config, model_config, store, context, allow_store_change)
        state = _restore(saved, model, optimizer, precision.scaler, sampler, config, score_column, last_path)
        logger.info("resumed %s at epoch %d, step %d", last_path, state.epoch, state.global_step)
    elif resume:
        logger.warning("no %s to resume from: starting a fresh run", last_path)
    plain, network = _wrap(model, context)
    stream = _Stream(dataset, sampler, config, device)
    run = _Run(
        config=config,
        context=context,
        model=model,
        plain=plain,
        network=network,
        optimizer=optimizer,
        precision=precision,
        stream=stream,
        steps=config.steps_per_epoch or math.ceil(stream.pass_length() / config.batch_size),
        augmenter=training_augmenter(store, config),
        last_path=last_path,
        best_path=out_dir / BEST_NAME,
        score_column=score_column,
        spec=store.spec,
    )
    if context.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        run.run_logger = RunLogger(
            out_dir, history=state.history, resume_step=state.global_step, score_column=run.score_column
        )
    network.train()
    try:
        while state.epoch < config.epochs:
            _end_epoch(run, state, _epoch_row(run, state, val_loader, progress), model_config, store)
    finally:
        if run.run_logger is not None:
            run.run_logger.close()
    return TrainResult(
        out_dir=out_dir,
        last_checkpoint=last_path,
        best_checkpoint=run.best_path if run.best_path.exists() else None,
        epochs=state.epoch,
        global_step=state.global_step,
        best_score=state.best_score,
        history=state.history,
        slots_seen=np.concatenate(run.seen) if run.seen else np.zeros(0, dtype=np.int64),
        model=model,
        rank=context.rank,
        world_size=context.world_size,
        best_metric=run.score_column,
    )


def training_augmenter(store: Any, config: TrainConfig) -> BatchAugment | None:
    """The batch augmentation :func:`train` applies (``None`` when inactive); on a volume store it outputs
    the patch size from windows with context (:func:`volume_stream`). Batches standardized
    ``volume-nonzero`` as trained (a patch store built so, or a volume store's windows read so) keep their
    background 0 (``mask_background``, nnU-Net's ``MaskImageTransform``)."""
    if not config.augment.active:
        return None
    method = ckpt.trained_build_params(store.params, config).standardize.method
    patch_size = store.patch_size if is_volume_store(store) else None
    return BatchAugment(config.augment, patch_size, mask_background=method == "volume-nonzero")


def step_augment(augmenter: BatchAugment | None, seed: int, rank: int, step: int) -> Any:
    """``(image, label) -> (image, label)``: the augmentation of optimizer step ``step`` (0-based) of
    ``rank``, which may overwrite its inputs (``to_training_batch`` hands it copies), or ``None``."""
    if augmenter is None:
        return None
    # keyed by the step: the same draws whatever the workers, the backend or a resume
    return functools.partial(augmenter, key=(int(seed), int(rank), int(step)), inplace=True)


def training_stream(
    store: Any, config: TrainConfig, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu"
) -> _Stream:
    """The batches :func:`train` reads on ``rank``, in its order (``.next()`` gives the batch of the next
    step; ``.dataset``, ``.sampler``), for training on ``device`` (CUDA: pinned batches): ``brainnet sample
    --augment`` shows them, ``benchmarks/bench_gpu.py`` times them."""
    context = DistributedContext(rank, world_size, 0, torch.device(device), owns_group=False)
    dataset, sampler = _train_dataset(_open(store), config, context)
    return _Stream(dataset, sampler, config, context.device)


def train_on_batches(
    batches: Iterable[dict[str, Any]],
    config: TrainConfig,
    model_config: ModelConfig | None = None,
    steps: int | None = None,
) -> nn.Module:
    """Train a fresh network on ``batches`` from any source, one optimizer step per batch.

    The same initialisation (``config.seed``), optimizer, loss, precision and augmentation as
    :func:`train`, without a store, checkpoints, log or validation: for comparing data pipelines under one
    training (``benchmarks/bench_accuracy.py`` trains on MONAI's on-the-fly crops with it). One process.

    Args:
        batches: compact batches as brainnet's loader yields them: ``image`` float (B, 4, X, Y, Z) and
            ``label`` uint8 (B, X, Y, Z) MSD labels; iterated once, to the end.
        config: ``seed``, ``lr``, ``device``, ``amp``, ``augment``, ``dice``, ``bce_weight`` and
            ``threshold`` are used.
        model_config: the network (default: the course's).
        steps: how many batches ``batches`` holds, the run's length under ``config.lr_schedule="poly"``
            (default: ``len(batches)``); unused by the constant schedule.

    Returns:
        The trained network (on the training device).

    Raises:
        ConfigError: a poly schedule without ``steps`` and a ``batches`` without a length.
        NonFiniteLossError: the loss became NaN/Inf (the message names the step).
    """
    model_config = model_config if model_config is not None else ModelConfig()
    if steps is None and config.lr_schedule != "constant":
        if not hasattr(batches, "__len__"):
            raise ConfigError(f"lr_schedule {config.lr_schedule!r} needs the number of batches (steps=)")
        steps = len(batches)  # type: ignore[arg-type]
    context = init_distributed(config.device)
    try:
        model, optimizer = _model_and_optimizer(config, model_config, context.device)
        precision = _precision(config, context.device)
        _, network = _wrap(model, context)
        augmenter = BatchAugment(config.augment) if config.augment.active else None
        network.train()
        for step, batch in enumerate(batches):
            augment = step_augment(augmenter, config.seed, context.rank, step)
            set_learning_rate(optimizer, learning_rate(config.lr, config.lr_schedule, step, steps or 1))
            try:
                train_step(
                    network,
                    optimizer,
                    batch,
                    precision,
                    context,
                    config.threshold,
                    augment,
                    dice=config.dice,
                    bce_weight=config.bce_weight,
                )
            except NonFiniteLossError as err:
                raise NonFiniteLossError(f"{err} at step {step + 1}; training stopped") from None
        return model
    finally:
        shutdown(context)
