"""Packaging: ``pip install brainprep`` is the offline half; brainnet needs the ``train`` extra on top.

From ``pyproject.toml``, three checks:

- the imports of every module (read with ``ast``) map to declared dependencies of its half: brainprep's
  module-level imports to the core dependencies, brainnet's to core + ``train``; imports inside functions
  (lazy, run only by the command that needs them) may also use the ``remote`` extra; every declared
  dependency is imported somewhere, or is a named backend that a dependency loads;
- every module of brainprep imports, and ``brainprep synth``, ``check``, ``build-patches`` and ``stats``
  run, in a Python where every installed distribution outside the core dependencies (and what they
  require) is unimportable, as on a preprocessing node;
- every module of brainnet imports with core + ``train`` alone.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("brainprep", "brainnet")

#: declared dependencies no module imports by name: a dependency loads them (why, for a reader).
BACKENDS = {
    "aiohttp": "fsspec's http filesystem, for https:// stores",
    "s3fs": "fsspec's s3 filesystem, for s3:// stores",
}
#: modules whose import needs a further distribution besides their own package's.
IMPORT_NEEDS = {"torch.utils.tensorboard": "tensorboard"}
#: what a preprocessing node must not be made to install.
TRAINING_AND_REMOTE = {"torch", "tensorboard", "aiohttp", "s3fs"}


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Google_CRC32C`` -> ``google-crc32c``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def declared() -> dict[str, frozenset[str]]:
    """Canonical distribution names of ``core`` and of each extra, from pyproject.toml."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {name: frozenset(canonical(Requirement(r).name) for r in reqs) for name, reqs in groups.items()}


@cache
def module_distributions() -> dict[str, frozenset[str]]:
    """Top-level import name -> canonical names of the installed distributions providing it."""
    return {
        module: frozenset(canonical(d) for d in dists)
        for module, dists in metadata.packages_distributions().items()
    }


def closure(names: frozenset[str]) -> frozenset[str]:
    """``names`` and every distribution they require, transitively (installed metadata, no extras)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return frozenset(seen)


def third_party_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, imported at module level) of each absolute import of a third-party module.

    Imports inside a function, or under ``if TYPE_CHECKING:``, are not module level (they run only when
    called, or never).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            type_only = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            inner = top and not (function or type_only)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            for name in names:
                if name.partition(".")[0] not in (*sys.stdlib_module_names, *PACKAGES, "__future__"):
                    found.append((name, inner))
            visit(child, inner)

    visit(tree, True)
    return found


def distributions_of(module: str) -> frozenset[str]:
    """The distributions an import of ``module`` needs (its top-level package's, and any further one)."""
    needs = {
        extra for prefix, extra in IMPORT_NEEDS.items() if module == prefix or module.startswith(prefix + ".")
    }
    return (
        module_distributions().get(module.partition(".")[0], frozenset({f"<{module}: not installed>"}))
        | needs
    )


HALVES = {
    # package: (extras its module-level imports may use, extras its lazy imports may use as well)
    "brainprep": ((), ("remote",)),
    "brainnet": (("train",), ("remote",)),
}


def test_every_import_is_declared_in_its_half_and_every_dependency_is_used():
    groups = declared()
    used: set[str] = set()
    wrong: list[str] = []
    for package, (eager_extras, lazy_extras) in HALVES.items():
        eager = groups["core"].union(*(groups[e] for e in eager_extras))
        lazy = eager.union(*(groups[e] for e in lazy_extras))
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, top in third_party_imports(path):
                needed = distributions_of(module)
                used |= needed
                allowed = eager if top else lazy
                if not needed & allowed:
                    where = "module level" if top else "in a function"
                    wrong.append(f"{path.relative_to(ROOT)}: {module} ({where}) needs {sorted(needed)}")
    assert not wrong, "imports without a declared dependency of their half:\n" + "\n".join(wrong)
    runtime = groups["core"] | groups["train"] | groups["remote"]
    unused = sorted(runtime - used - set(BACKENDS))
    assert not unused, f"declared but never imported: {unused}"
    assert set(BACKENDS) <= runtime, "a named backend is no longer declared: drop it from BACKENDS"


def test_a_preprocessing_install_pulls_no_training_or_remote_package():
    pulled = closure(declared()["core"]) & TRAINING_AND_REMOTE
    assert not pulled, f"`pip install brainprep` would install {sorted(pulled)}"


# A fresh interpreter in which every top-level module of a blocked distribution fails to import, and the
# blocked distributions' metadata is hidden (zarr, for one, loads the entry points of installed plugins).
BLOCKER = """
import importlib.abc, importlib.metadata, json, re, sys
blocked, hidden = (frozenset(names) for names in json.loads(sys.argv[1]))
# (a site .pth may import its own private helper, e.g. setuptools' _distutils_hack, before us)
already = sorted(n for n in blocked & {m.partition(".")[0] for m in sys.modules} if not n.startswith("_"))
if already:
    raise SystemExit(f"imported before the blocker: {already}")
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not a declared dependency)", name=name)
        return None
sys.meta_path.insert(0, Blocked())
every_distribution = importlib.metadata.distributions
def distributions(**kwargs):
    for dist in every_distribution(**kwargs):
        if re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower() not in hidden:
            yield dist
importlib.metadata.distributions = distributions  # what entry_points() and version() look through
"""
IMPORT_ALL = """
import importlib, pkgutil
for package in sys.argv[2].split(","):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
print("imported", len(sys.modules), "modules")
"""


def run_blocked(allowed_groups: tuple[str, ...], body: str, *args: str, cwd: Path = ROOT) -> str:
    """Run ``body`` in a subprocess where only the closure of ``allowed_groups`` (and this project)
    imports; returns its stdout, or fails the test with its stderr."""
    groups = declared()
    allowed = closure(frozenset().union(*(groups[g] for g in allowed_groups))) | set(PACKAGES)
    blocked = sorted(
        m
        for m, dists in module_distributions().items()
        if not dists & allowed and m not in (*PACKAGES, *sys.stdlib_module_names)
    )
    hidden = sorted({d for dists in module_distributions().values() for d in dists} - allowed)
    assert "torch" in blocked or "torch" not in module_distributions() or "train" in allowed_groups
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER + body, json.dumps([blocked, hidden]), *args],
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_brainprep_module_imports_with_the_core_dependencies_alone():
    assert "imported" in run_blocked(("core",), IMPORT_ALL, "brainprep")


def test_every_brainnet_module_imports_with_core_and_train_alone():
    assert "imported" in run_blocked(("core", "train"), IMPORT_ALL, "brainnet")


PIPELINE = """
from click.testing import CliRunner
from brainprep.cli import main
commands = [
    ["synth", "data", "--cases", "2", "--shape", "40", "40", "16", "--small-tumour-every", "0"],
    ["check", "data", "--patch-size", "16", "16", "4"],
    ["build-patches", "data", "store.zarr", "--patch-size", "16", "16", "4", "--patches-per-case", "2",
     "--workers", "1", "--no-progress"],
    ["stats", "store.zarr"],
]
for command in commands:
    result = CliRunner().invoke(main, command, catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"brainprep {' '.join(command)} failed ({result.exit_code}): {result.output}")
    print("ok", command[0])
"""


def test_brainprep_commands_run_with_the_core_dependencies_alone(tmp_path):
    out = run_blocked(("core",), PIPELINE, cwd=tmp_path)
    assert out.split() == ["ok", "synth", "ok", "check", "ok", "build-patches", "ok", "stats"]
    assert (tmp_path / "store.zarr" / "zarr.json").is_file()


def test_brainnet_without_the_train_extra_says_what_to_install(tmp_path):
    body = """
from click.testing import CliRunner
from brainnet.cli import main
assert CliRunner().invoke(main, ["--help"]).exit_code == 0
result = CliRunner().invoke(main, ["evaluate", "--help"])
print(result.exit_code, (result.output + getattr(result, "stderr", "")).strip())
"""
    out = run_blocked(("core",), body, cwd=tmp_path)
    assert out.startswith("1 Error: brainnet needs PyTorch") and 'pip install "brainprep[train]"' in out
