"""Checkpoints: plain dicts of tensors, numbers, strings and lists that load with ``weights_only=True``.

A checkpoint holds everything to rebuild the model, to preprocess new scans the way its store was
preprocessed, and to resume training bit for bit:

=================  =====================================================================
key                content
=================  =====================================================================
format_version     1
model              ``state_dict`` of the (unwrapped) model
model_config       ``ModelConfig.to_dict()``
train_config       ``TrainConfig.to_dict()``
build_params       the store's ``BuildParams.to_dict()`` (patch size, standardization as trained, ...)
spec               the store's ``DatasetSpec.to_dict()``: channels, classes, label values, regions
                   (absent before the spec: the MSD glioma spec)
store              the store location (str)
store_id           the store's content id (sha256 hex; ``None`` for a store without one)
optimizer          Adam's ``state_dict``
scaler             GradScaler ``state_dict`` (float16 AMP) or ``{}``
epoch              epochs completed
global_step        optimizer steps taken
sampler            ``{"epoch", "start"}``: where the training data stream stands
rng                ``{"torch": uint8 tensor, "cuda": [uint8 tensors], "numpy": {...}, "python": [...]}``
best_score         best score so far (``-1.0`` before any), the log column ``best_metric``
best_metric        the log column ``best_score`` was chosen by (``val_dice_labelmap``, or
                   ``train_dice_labelmap`` without validation; absent before the label-map Dice)
history            one dict of numbers per finished epoch (the log's rows)
world_size         ranks of the run that wrote it
=================  =====================================================================

:func:`training_payload` builds it and :func:`restore_training` reads it back for a resume.

Files are written atomically (temporary file in the same folder, then ``os.replace``), so a run killed
while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainnet.model import ModelConfig, UNet3D, build_model
from brainnet.train.config import TrainConfig
from brainprep.errors import BrainprepError
from brainprep.params import BuildParams
from brainprep.spec import MSD_SPEC, DatasetSpec, spec_from_metadata

FORMAT_VERSION = 1
#: the keys of a checkpoint that a resume reads beyond those every checkpoint holds (``load_checkpoint``)
RESUME_KEYS = ("train_config", "optimizer", "epoch", "global_step", "sampler", "rng", "best_score", "history")

logger = logging.getLogger(__name__)


class CheckpointError(BrainprepError, ValueError):
    """A checkpoint that cannot be read or lacks what is asked of it."""


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of torch, CUDA, numpy and python as tensors / lists / numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (tensors may come mapped to a GPU: states live on the CPU)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].cpu().numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))


@dataclass
class RunState:
    """Where a training run stands: saved in every checkpoint, restored on resume.

    Attributes:
        epoch: epochs completed.
        global_step: optimizer steps taken.
        best_score: best value of the score column so far (``-1.0`` before any).
        history: one dict of numbers per finished epoch.
    """

    epoch: int = 0
    global_step: int = 0
    best_score: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


def trained_build_params(build_params: BuildParams, train_config: TrainConfig) -> BuildParams:
    """The build parameters a checkpoint records: its store's, with the standardization the windows were
    trained with (a volume store's ``volume_sampling.standardize`` overrides the store's method), so that
    :mod:`brainnet.predict` and :func:`brainnet.evaluate.evaluate_store` standardize as training did."""
    method = train_config.volume_sampling.standardize
    if build_params.store.kind != "volumes" or method is None or method == build_params.standardize.method:
        return build_params
    return build_params.replace(standardize=build_params.standardize.replace(method=method))


def training_payload(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    model_config: ModelConfig,
    train_config: TrainConfig,
    store: Any,
    sampler: dict[str, int],
    state: RunState,
    best_metric: str,
    world_size: int,
) -> dict[str, Any]:
    """The checkpoint of a training run after an epoch (keys of the module table).

    Args:
        model: the unwrapped network.
        scaler: the float16 loss scaler, or ``None``.
        store: the training :class:`~brainprep.store.reader.PatchStore`.
        sampler: the data stream's position (``{"epoch", "start"}``).
        state: epoch, step, best score and history.
        best_metric: the log column ``state.best_score`` comes from.
        world_size: ranks of the run.
    """
    return {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "model_config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
        "build_params": trained_build_params(store.params, train_config).to_dict(),
        "spec": store.spec.to_dict(),
        "store": str(store.location),
        "store_id": getattr(store, "content_id", None),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": state.epoch,
        "global_step": state.global_step,
        "sampler": sampler,
        "rng": capture_rng_state(),
        "best_score": state.best_score,
        "best_metric": best_metric,
        "history": state.history,
        "world_size": world_size,
    }


def restore_training(
    saved: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    sampler: Any,
    best_metric: str,
    measure_changes: Sequence[str] = (),
) -> RunState:
    """Load a :func:`training_payload` back into the run's objects and the global RNGs (last).

    A checkpoint whose best score was measured otherwise keeps its weights and trajectory, but its best
    score is forgotten: the next epoch becomes ``best.pt`` by the current measure. Otherwise is by another
    column (one from before the label-map Dice), or under the resume's ``measure_changes`` (e.g.
    ``"threshold 0.5 -> 0.3"``: what changed of what the score measures, found by the caller).

    Returns:
        the run's state.
    """
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    best_score = float(saved["best_score"])
    reasons = []
    if saved.get("best_metric") != best_metric:
        reasons.append(f"by {saved.get('best_metric', 'an older Dice')}, not {best_metric}")
    if measure_changes and best_score != RunState().best_score:  # a best score to forget
        reasons.append(f"before this resume with {', '.join(measure_changes)}")
    if reasons:
        logger.warning(
            "the checkpoint's best score %.4f was measured %s: the next epoch is best.pt",
            best_score,
            "; ".join(reasons),
        )
        best_score = RunState().best_score
    state = RunState(int(saved["epoch"]), int(saved["global_step"]), best_score, list(saved["history"]))
    sampler.load_state_dict(saved["sampler"])
    restore_rng_state(saved["rng"])
    return state


def save_checkpoint(payload: dict[str, Any], path: Path) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file + rename in the same folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


#: the first bytes of every file torch.save writes (a zip archive since torch 1.6)
TORCH_ZIP_MAGIC = b"PK\x03\x04"


def _load_problem(path: Path, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed with ``error``, in one line naming ``path``:
    a file holding code, a torch file cut short or damaged, or no torch file at all."""
    text = str(error).lower()
    if isinstance(error, pickle.UnpicklingError) and (
        "unsupported global" in text or "unsupported class" in text
    ):
        # torch's own message suggests weights_only=False, which would run the code the file holds
        return (
            f"refused checkpoint {path}: it holds code objects or classes (not only tensors, numbers and "
            "strings), so loading it could run code; brainnet never loads such files"
        )
    with path.open("rb") as file:
        head = file.read(len(TORCH_ZIP_MAGIC))
    if head == TORCH_ZIP_MAGIC:
        return f"{path} is a truncated or damaged checkpoint (a torch save file that cannot be read)"
    return f"{path} is not a brainnet checkpoint (not a torch save file)"


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code runs from the file).

    Raises:
        CheckpointError: (naming the file) missing, not a torch save file, truncated or damaged, holding
            code objects, not a brainnet checkpoint's dict, or of a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise CheckpointError(_load_problem(path, err)) from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a brainnet checkpoint (it holds a {type(payload).__name__})")
    missing = [k for k in ("model", "model_config", "build_params") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    if payload.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {payload['format_version']}, "
            f"this brainnet reads <= {FORMAT_VERSION}"
        )
    return payload


def check_resume_keys(saved: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint that loads but lacks what a resume reads (:data:`RESUME_KEYS`), such as a
    model-only one.

    Raises:
        CheckpointError: naming ``path`` and the missing keys.
    """
    missing = [key for key in RESUME_KEYS if key not in saved]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a training checkpoint to resume")


@dataclass(frozen=True)
class LoadedModel:
    """A model rebuilt from a checkpoint, with the parameters it was made with.

    Attributes:
        model: the network in eval mode, on the requested device.
        model_config, train_config, build_params: as stored in the checkpoint.
        spec: the training store's dataset spec (the classes the outputs are).
        store: location of the store it was trained on.
        store_id: content id of that store (``None`` for a checkpoint or store from before store ids).
        epoch: epochs completed when the checkpoint was written.
    """

    model: UNet3D
    model_config: ModelConfig
    train_config: TrainConfig | None
    build_params: BuildParams
    store: str
    epoch: int
    store_id: str | None = None
    spec: DatasetSpec = MSD_SPEC

    def provenance(self) -> str:
        """One line naming the training store and its content id, for commands that use the model."""
        from brainprep.store.integrity import short_id

        return (
            f"model trained {self.epoch} epoch(s) on {self.store or '?'} (store id {short_id(self.store_id)})"
        )


def model_fit_problem(model_config: ModelConfig, spec: DatasetSpec) -> str | None:
    """Why a network does not fit a dataset spec (``None``: it does): one input channel per scan of
    ``spec.channels`` and one output channel per foreground class, as training builds it. Its outputs
    would otherwise be read as classes they are not, with no error to say so."""
    if model_config.out_channels != spec.n_classes:
        return (
            f"the model has {model_config.out_channels} output channels, the dataset spec {spec.n_classes} "
            f"classes ({', '.join(spec.foreground)}): one channel per class"
        )
    if model_config.in_channels != len(spec.channels):
        return (
            f"the model has {model_config.in_channels} input channels, the dataset spec "
            f"{len(spec.channels)} channels ({', '.join(spec.channels)}): one channel per scan"
        )
    return None


def _state_dict_problem(error: Exception) -> str:
    """The first problem ``load_state_dict`` found (its message opens with a header line naming the
    class only), and how many more there are."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    details = [line for line in lines if not line.startswith("Error(s) in loading state_dict")]
    if not details:
        return lines[0] if lines else type(error).__name__
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return details[0] + more


def load_model(path: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the network of a checkpoint and load its weights.

    Raises:
        CheckpointError: (naming the file) as :func:`load_checkpoint`, a model whose channels do not fit
            the checkpoint's dataset spec (:func:`model_fit_problem`), or weights that do not fit its
            ``model_config`` (missing, unexpected or of other shapes).
    """
    path = Path(path)
    payload = load_checkpoint(path, map_location=device)
    try:  # the parameters' own errors name the field, not the file
        model_config = ModelConfig.from_dict(payload["model_config"])
        spec = spec_from_metadata(payload)
        train_config = payload.get("train_config")
        train_config = TrainConfig.from_dict(train_config) if train_config else None
        build_params = BuildParams.from_dict(payload["build_params"])
    except (BrainprepError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path}: its parameters do not read: {err}") from err
    problem = model_fit_problem(model_config, spec)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    model = build_model(model_config)
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError) as err:  # torch: size mismatch, missing or unexpected keys
        raise CheckpointError(
            f"checkpoint {path}: weights do not match its model_config: {_state_dict_problem(err)}"
        ) from err
    model.to(device).eval()
    return LoadedModel(
        model=model,
        model_config=model_config,
        train_config=train_config,
        build_params=build_params,
        store=str(payload.get("store", "")),
        epoch=int(payload.get("epoch", 0)),
        store_id=payload.get("store_id"),
        spec=spec,
    )
