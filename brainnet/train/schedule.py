"""The learning rate of each optimizer step: constant (the course's Adam) or nnU-Net's polynomial decay.

nnU-Net v2 (``nnunetv2/training/lr_scheduler/polylr.py``, ``PolyLRScheduler``) sets
``initial_lr * (1 - current_step / max_steps) ** 0.9`` at the start of every epoch; brainnet applies the
same formula at every optimizer step (``step`` counted from 0 over the whole run), so the rate a step
gets depends only on its global step and the run's length: a resumed run continues the same schedule
without any scheduler state in the checkpoint.
"""

from __future__ import annotations

import torch

LR_SCHEDULES = ("constant", "poly")
POLY_EXPONENT = 0.9  # nnU-Net's PolyLRScheduler default exponent


def learning_rate(base_lr: float, schedule: str, step: int, total_steps: int) -> float:
    """The rate of optimizer step ``step`` (0-based) of a run of ``total_steps`` steps.

    ``constant``: ``base_lr``. ``poly``: ``base_lr * (1 - step / total_steps) ** 0.9``, ``base_lr`` at step
    0 and above 0 at the last step (``step < total_steps``).

    Raises:
        ValueError: an unknown schedule, or ``step`` outside ``[0, total_steps)`` for ``poly``.
    """
    if schedule == "constant":
        return base_lr
    if schedule != "poly":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {LR_SCHEDULES}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} is outside the run's {total_steps} steps")
    return base_lr * (1.0 - step / total_steps) ** POLY_EXPONENT


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group of ``optimizer`` the rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
