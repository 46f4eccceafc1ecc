"""Split stage: which cases are train and which are val (always by case, never one case in two splits).

Either drawn (:func:`split_cases`, seeded, independent of input order) or fixed by a JSON file
(:func:`read_split_file`, ``{"train": [ids], "val": [ids]}``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from brainprep.errors import ConfigError

SPLITS = ("train", "val")
#: How many ids an error message lists before "and N more" (messages stay one line).
_MAX_LISTED = 5


def _case_key(seed: int, case_id: str) -> bytes:
    return hashlib.sha256(f"brainprep.split:{int(seed)}:{case_id}".encode()).digest()


def split_cases(case_ids: Sequence[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Draw a train / val split of cases.

    Each case gets a sha256 key from ``(seed, case_id)``; the ``n_val`` cases with the smallest keys are
    val. So the split depends only on the seed and the *set* of ids (not their order, not the process),
    and adding a case moves at most one other case between splits.

    ``n_val = round(n * val_fraction)`` (Python's round, half to even), raised to 1 when
    ``val_fraction > 0`` and ``n >= 2``, and capped at ``n - 1`` so that at least one case trains.

    Args:
        case_ids: distinct case identifiers.
        val_fraction: in [0, 1).
        seed: the build seed.

    Returns:
        ``{case_id: "train" | "val"}`` in sorted id order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(case_ids)
    duplicates = sorted(case_id for case_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ConfigError(f"case ids must be distinct, found duplicates {_listed(duplicates)}")
    n = len(ids)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    val = set(sorted(ids, key=lambda case_id: _case_key(seed, case_id))[:n_val])
    return {case_id: "val" if case_id in val else "train" for case_id in ids}


def _listed(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_MAX_LISTED])
    more = len(ids) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def read_split_file(path: Path, case_ids: Sequence[str]) -> dict[str, str]:
    """Read a fixed split and check it against the cases found.

    Args:
        path: JSON file ``{"train": [case ids], "val": [case ids]}`` (exactly these two keys).
        case_ids: the ids of the discovered cases.

    Returns:
        ``{case_id: "train" | "val"}`` in the order of ``case_ids``.

    Raises:
        ConfigError: (one line naming the file) the file is missing or not such a JSON object, a case is
            in both splits, a listed id is not among ``case_ids``, or a case of ``case_ids`` is in neither.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"split file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"split file {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or sorted(data) != sorted(SPLITS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f'split file {path} must be {{"train": [...], "val": [...]}}, found keys {found}')
    members: dict[str, set[str]] = {}
    for split in SPLITS:
        listed = data[split]
        if not isinstance(listed, list) or not all(isinstance(i, str) for i in listed):
            raise ConfigError(f'split file {path}: "{split}" must be a list of case id strings')
        members[split] = set(listed)

    both = sorted(members["train"] & members["val"])
    if both:
        raise ConfigError(f"split file {path}: cases in both train and val: {_listed(both)}")
    known = set(case_ids)
    unknown = sorted((members["train"] | members["val"]) - known)
    if unknown:
        raise ConfigError(
            f"split file {path}: unknown case ids {_listed(unknown)} (not among the cases found)"
        )
    missing = [i for i in case_ids if i not in members["train"] and i not in members["val"]]
    if missing:
        raise ConfigError(f"split file {path}: cases in neither train nor val: {_listed(missing)}")
    return {case_id: "val" if case_id in members["val"] else "train" for case_id in case_ids}
