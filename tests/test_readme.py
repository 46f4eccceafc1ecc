"""The README's examples against the code: its Python blocks import and call what exists, the store-reading
blocks run on real stores, and every option it writes after a command is an option of that command."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import click
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND = re.compile(r"\b(brainprep|brainnet) ([a-z][a-z-]+)((?:[^`\n]|\n(?!\n))*)")


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _code_spans() -> list[str]:
    """The README's shell blocks and inline code spans (an inline span may wrap across lines)."""
    text = README.read_text()
    fenced = re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
    blocks = [body for language, body in fenced if language in {"", "bash", "sh", "console"}]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return blocks + re.findall(r"`([^`]+)`", prose)


def _imported_names(tree: ast.Module) -> dict[str, object]:
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"README imports {alias.name} from {node.module}: absent"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def test_readme_python_blocks_import_what_exists_and_call_it_with_its_parameters() -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 3
    checked = 0
    for block in blocks:
        tree = ast.parse(block)
        names = _imported_names(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names):
                continue
            target = names[node.func.id]
            if not callable(target):
                continue
            # placeholders for the arguments: binding checks their count and every keyword's name
            args = [None] * len(node.args)
            kwargs = {k.arg: None for k in node.keywords if k.arg is not None}
            try:
                inspect.signature(target).bind(*args, **kwargs)
            except TypeError as error:
                pytest.fail(f"README calls {ast.unparse(node)}: {error}")
            checked += 1
    assert checked >= 10  # the API block's calls, not a vacuous pass


def _command(group: click.Group, name: str) -> click.Command | None:
    return group.get_command(click.Context(group), name)


def _options(command: click.Command) -> set[str]:
    flags = {"--help"}
    for param in command.params:
        flags.update(o.split("=")[0] for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return flags


def test_every_option_the_readme_writes_after_a_command_is_one_of_its_options() -> None:
    from brainnet.cli import main as brainnet
    from brainprep.cli import main as brainprep

    groups = {"brainprep": brainprep, "brainnet": brainnet}
    seen, unknown = 0, []
    for span in _code_spans():
        for tool, name, rest in COMMAND.findall(span):
            command = _command(groups[tool], name)
            if command is None:
                if name in {"demo", "train", "check"} or rest.strip().startswith("--"):
                    unknown.append(f"{tool} {name}")
                continue  # prose such as "brainprep turns ..."
            rest = COMMAND.split(rest)[0]  # up to a following command in the same span
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                seen += 1
                if flag not in _options(command):
                    unknown.append(f"{tool} {name} {flag}")
    assert not unknown, f"README writes options these commands do not have: {sorted(set(unknown))}"
    assert seen >= 20


@pytest.fixture(scope="module")
def readme_stores(tmp_path_factory) -> Path:
    """The stores the README's reading examples open, under their names: brats.zarr, brats.h5 (patch
    stores) and brats-volumes.zarr, built from tiny synthetic cases."""
    from brainprep.builder import build_patches
    from brainprep.params import BuildParams, SamplingParams, StoreParams
    from brainprep.synth import SynthParams, write_synthetic_dataset

    root = tmp_path_factory.mktemp("readme")
    data = write_synthetic_dataset(root / "data", SynthParams(n_cases=3, shape=(48, 48, 24), seed=0))
    sampling = SamplingParams(patch_size=(32, 32, 8), patches_per_case=2)
    for name, kind in (("brats.zarr", "patches"), ("brats.h5", "patches"), ("brats-volumes.zarr", "volumes")):
        params = BuildParams(sampling=sampling, store=StoreParams(kind=kind), seed=0)
        build_patches(data, root / name, params, workers=1, progress=False)
    return root


def test_readme_store_reading_blocks_run_on_real_stores(readme_stores: Path, monkeypatch) -> None:
    reading = [b for b in _python_blocks() if "open_group" in b or "read_window" in b]
    assert len(reading) == 2
    monkeypatch.chdir(readme_stores)
    for block in reading:
        scope: dict = {}
        exec(compile(block, str(README), "exec"), scope)
        if "patch" in scope:
            assert scope["meta"]["complete"] is True
            assert scope["patch"].shape == (4, 32, 32, 8)
        else:
            assert scope["image"].shape == (4, 32, 32, 8) and scope["label"].shape == (32, 32, 8)


def _benchmark_commands() -> list[tuple[str, str]]:
    """(script, the rest of its line) for every ``python benchmarks/NAME.py ...`` the two READMEs write."""
    root = README.parent
    text = README.read_text() + (root / "benchmarks" / "README.md").read_text()
    return re.findall(r"python (benchmarks/[a-z_0-9]+\.py)([^`\n]*)", text)


def test_every_benchmark_option_the_readmes_write_is_one_of_its_options() -> None:
    import subprocess
    import sys

    commands = _benchmark_commands()
    assert len({script for script, _ in commands}) >= 8
    helps: dict[str, str] = {}
    unknown = []
    for script, rest in commands:
        if script not in helps:
            done = subprocess.run(
                [sys.executable, script, "--help"],
                cwd=README.parent,
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, f"{script} --help: {done.stderr.strip().splitlines()[-1:]}"
            helps[script] = done.stdout
        rest = rest.split("#")[0]  # a shell comment after the command
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[script]):
                unknown.append(f"{script} {flag}")
    assert not unknown, f"the READMEs write options these benchmarks do not have: {sorted(set(unknown))}"
