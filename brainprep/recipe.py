"""Recipes: a build's parameters plus its case split, in one small JSON file to commit and share.

A recipe says how to rebuild a store from the raw data: ``{"kind": "brainprep-recipe", "version": 1,
"params": BuildParams.to_dict(), "splits": {case_id: "train" | "val"}, "description": "..."}``.
Fixing the split by case id (rather than by seed) keeps it stable when a user has a different subset of
the cases on disk.

``manifests/msd-task01-default.json`` is the standard MSD Task01 build. Regenerate it with::

    python -m brainprep.recipe manifests/msd-task01-default.json

which writes :func:`msd_task01_recipe`: default :class:`~brainprep.params.BuildParams` and the 484 case
ids ``BRATS_001`` .. ``BRATS_484`` split 80/20 by :func:`brainprep.split.split_cases` with seed 0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from brainprep.errors import ConfigError
from brainprep.files import write_text_atomic
from brainprep.params import BuildParams
from brainprep.split import SPLITS, split_cases

RECIPE_KIND = "brainprep-recipe"
RECIPE_VERSION = 1
#: MSD Task01_BrainTumour has 484 labelled training cases, BRATS_001 .. BRATS_484.
MSD_TASK01_CASES = 484
MSD_TASK01_DESCRIPTION = (
    "Standard brainprep build of the Medical Segmentation Decathlon Task01_BrainTumour training set: "
    "default BuildParams (160x160x16 patches, K=20 per case, background share < 0.95, exact sampler, "
    "course patch-slice standardization, float16 Zarr v3), 484 cases BRATS_001..BRATS_484 split 80/20 "
    "by brainprep.split.split_cases(ids, 0.2, seed 0). Regenerate: python -m brainprep.recipe PATH."
)


def recipe_dict(params: BuildParams, splits: dict[str, str], description: str = "") -> dict[str, Any]:
    """The JSON object of a recipe (splits sorted by case id so the file diffs cleanly)."""
    _check_splits(splits, "recipe")
    return {
        "kind": RECIPE_KIND,
        "version": RECIPE_VERSION,
        "description": description,
        "params": params.to_dict(),
        "splits": {case_id: splits[case_id] for case_id in sorted(splits)},
    }


def write_recipe(path: Path, params: BuildParams, splits: dict[str, str], description: str = "") -> Path:
    """Write a recipe to ``path`` (indented JSON, trailing newline); returns ``path``."""
    return write_text_atomic(path, json.dumps(recipe_dict(params, splits, description), indent=1) + "\n")


def load_recipe(path: Path) -> tuple[BuildParams, dict[str, str]]:
    """Read a recipe.

    Returns:
        ``(params, splits)`` with ``splits = {case_id: "train" | "val"}``.

    Raises:
        ConfigError: (naming the file) unreadable JSON, wrong kind or version, bad params or splits.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"recipe {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"recipe {path} is not readable JSON: {error}") from None
    if not isinstance(data, dict) or data.get("kind") != RECIPE_KIND:
        found = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path} is not a brainprep recipe: expected kind {RECIPE_KIND!r}, found {found!r}")
    if data.get("version") != RECIPE_VERSION:
        raise ConfigError(f"recipe {path} has version {data.get('version')!r}, expected {RECIPE_VERSION}")
    unknown = sorted(set(data) - {"kind", "version", "params", "splits", "description"})
    if unknown:
        raise ConfigError(f"recipe {path} has unknown key(s) {', '.join(unknown)}")
    if not isinstance(data.get("params"), dict):
        raise ConfigError(f"recipe {path}: 'params' must be an object of BuildParams")
    try:
        params = BuildParams.from_dict(data["params"])
    except (TypeError, ValueError) as error:  # ConfigError is a ValueError
        raise ConfigError(f"recipe {path}: bad params: {error}") from None
    splits = data.get("splits")
    if not isinstance(splits, dict):
        raise ConfigError(f"recipe {path}: 'splits' must be an object {{case_id: 'train' | 'val'}}")
    _check_splits(splits, f"recipe {path}")
    return params, dict(splits)


def _check_splits(splits: dict[str, str], where: str) -> None:
    bad = sorted(f"{k}={v!r}" for k, v in splits.items() if not isinstance(k, str) or v not in SPLITS)
    if bad:
        raise ConfigError(f"{where}: split values must be one of {SPLITS}, found {', '.join(bad[:5])}")


def msd_task01_case_ids(n_cases: int = MSD_TASK01_CASES) -> list[str]:
    """``["BRATS_001", ..., "BRATS_484"]``: the MSD Task01 training case ids."""
    return [f"BRATS_{i:03d}" for i in range(1, n_cases + 1)]


def msd_task01_recipe() -> dict[str, Any]:
    """The recipe object of the standard MSD Task01 build (see the module docstring)."""
    params = BuildParams()
    splits = split_cases(msd_task01_case_ids(), params.split.val_fraction, params.seed)
    return recipe_dict(params, splits, MSD_TASK01_DESCRIPTION)


def main(argv: list[str] | None = None) -> None:
    """``python -m brainprep.recipe PATH``: (re)write the MSD Task01 default recipe to PATH."""
    parser = argparse.ArgumentParser(prog="python -m brainprep.recipe", description=main.__doc__)
    parser.add_argument("path", type=Path, help="output JSON, e.g. manifests/msd-task01-default.json")
    args = parser.parse_args(argv)
    recipe = msd_task01_recipe()
    params = BuildParams.from_dict(recipe["params"])
    write_recipe(args.path, params, recipe["splits"], recipe["description"])


if __name__ == "__main__":
    main()
