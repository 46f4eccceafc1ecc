"""Writes that never leave half a file: brainprep.files, and the JSON outputs that go through it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from brainprep import files
from brainprep.files import write_text_atomic


def _fail_half_way(self: Path, text: str, encoding: str | None = None) -> int:
    with open(self, "w", encoding=encoding) as handle:
        handle.write(text[: len(text) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(self))


def test_a_write_failing_half_way_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch) -> None:
    target = tmp_path / "deep" / "report.json"
    write_text_atomic(target, '{"old": true}\n')
    monkeypatch.setattr(Path, "write_text", _fail_half_way)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, '{"new": "a much longer report than the old one"}\n')
    assert target.read_text() == '{"old": true}\n'
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_manifest_and_recipe_writes_are_atomic(tmp_path, monkeypatch) -> None:
    """write_manifest and write_recipe go through write_text_atomic: a failed rename leaves nothing."""
    from brainprep.params import BuildParams
    from brainprep.recipe import load_recipe, write_recipe

    path = write_recipe(tmp_path / "r.json", BuildParams(), {"BRATS_001": "train"})
    assert load_recipe(path)[1] == {"BRATS_001": "train"}

    def refuse(source: Path, target: Path) -> None:
        raise OSError(errno.EXDEV, "rename refused", str(target))

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        write_recipe(tmp_path / "new.json", BuildParams(), {"BRATS_001": "val"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
