"""Batches a dataset reads whole, and the DataLoader ``collate_fn`` that passes them through.

A dataset whose ``__getitems__`` reads a batch straight into its tensors returns it wrapped in
:class:`CollatedBatch`; :func:`collate` hands such a batch over as it is and stacks anything else with
torch's ``default_collate``. In a worker process the batch is read into shared memory, so the DataLoader
ships it to the training process as it is: no per-sample tensors, no stacking copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.utils.data


@dataclass(frozen=True)
class CollatedBatch:
    """A batch dict (tensors with the batch first) that a dataset has already collated."""

    batch: dict[str, Any]


def collate(data: Any) -> Any:
    """``collate_fn`` of brainnet's loaders: a :class:`CollatedBatch`'s dict, else ``default_collate``."""
    if isinstance(data, CollatedBatch):
        return data.batch
    return torch.utils.data.default_collate(data)
