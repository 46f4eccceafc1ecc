"""brainprep.cli.outputs: an output path that cannot be written is one line naming it, in every command."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from click.testing import CliRunner

from brainprep.cli import main, outputs
from brainprep.params import BuildParams, SamplingParams

PATCH = ["--patch-size", "16", "16", "8"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-case data folder, its Zarr store and a regular file to put outputs "in"."""
    from brainprep.builder import build_patches
    from brainprep.synth import SynthParams, write_synthetic_dataset

    root = tmp_path_factory.mktemp("outputs")
    params = SynthParams(n_cases=2, shape=(32, 32, 16), seed=0, small_tumour_every=0)
    data = write_synthetic_dataset(root / "data", params)
    store = root / "store.zarr"
    build_patches(data, store, BuildParams(sampling=SamplingParams(patch_size=(16, 16, 8))), workers=1)
    (root / "file.txt").write_text("not a folder\n")
    return {"data": data, "store": store, "file": root / "file.txt"}


def _commands(built: dict[str, Path]) -> dict[str, tuple[list[str], Path]]:
    """Each writing command with its output put inside a regular file, and that output."""
    data, store, file = (str(built[k]) for k in ("data", "store", "file"))
    out = built["file"]
    return {
        "manifest": (["manifest", store, "-o", str(out / "m.json"), "--no-progress"], out / "m.json"),
        "pack": (["pack", store, str(out / "s.zip"), "--no-progress"], out / "s.zip"),
        "synth": (["synth", str(out / "synth"), "--cases", "1", "--shape", "16", "16", "8"], out / "synth"),
        "show": (["show", data, "BRATS_001", "--out", str(out / "p.png")], out / "p.png"),
        "show-gif": (
            ["show", data, "BRATS_001", "--out", f"{file}.png", "--gif", str(out / "g.gif")],
            out / "g.gif",
        ),
        "check": (["check", data, *PATCH, "--json", str(out / "c.json")], out / "c.json"),
        "build-zarr": (["build-patches", data, str(out / "s.zarr"), *PATCH, "--no-progress"], out / "s.zarr"),
        "build-hdf5": (["build-patches", data, str(out / "s.h5"), *PATCH, "--no-progress"], out / "s.h5"),
        "stats": (["stats", store, "--plot", str(out / "stats.png")], out / "stats.png"),
        "import-course": (["import-course", data, str(out / "c.zarr"), "--no-progress"], out / "c.zarr"),
    }


COMMANDS = ["manifest", "pack", "synth", "show", "show-gif", "check", "build-zarr", "build-hdf5", "stats"]


def _assert_one_line(result, path: Path) -> None:
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a click error, not a traceback
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and f"cannot write {path}" in error[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [*COMMANDS, "import-course"])
def test_an_output_inside_a_file_is_refused_before_any_work(built, command):
    args, path = _commands(built)[command]
    result = CliRunner().invoke(main, args)
    _assert_one_line(result, path)
    assert f"{built['file']} is a file, not a folder" in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_a_write_failing_after_the_check_is_one_line_too(built, command, monkeypatch):
    # the folder turns unwritable between the options' check and the write (or the check cannot tell)
    monkeypatch.setattr(outputs, "output_problem", lambda path: None)
    args, path = _commands(built)[command]
    _assert_one_line(CliRunner().invoke(main, args), path)


def test_check_json_into_a_missing_folder_makes_it(built, tmp_path):
    out = tmp_path / "reports" / "check.json"
    result = CliRunner().invoke(main, ["check", str(built["data"]), *PATCH, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_output_problem_by_hand(tmp_path):
    (tmp_path / "f").write_text("")
    assert outputs.output_problem(tmp_path / "new" / "deeper" / "x.json") is None  # folders are made
    assert outputs.output_problem(tmp_path / "f") is None  # an existing file is replaced
    assert outputs.output_problem(tmp_path / "f" / "x") == f"{tmp_path / 'f'} is a file, not a folder"
    assert outputs.output_problem(tmp_path / "f" / "a" / "b") == f"{tmp_path / 'f'} is a file, not a folder"


def test_writing_passes_other_errors_through(tmp_path):
    other = OSError(errno.EIO, "Input/output error", str(tmp_path / "input.nii.gz"))
    with pytest.raises(OSError, match="Input/output"), outputs.writing(tmp_path / "out.json"):
        raise other
    from brainprep.errors import StoreSpaceError

    with pytest.raises(StoreSpaceError), outputs.writing(tmp_path / "s.zarr"):
        raise StoreSpaceError(f"disk full under {tmp_path / 's.zarr'}")
    # a temporary file next to the output is the output's
    partial = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".out.json.partial"))
    with (
        pytest.raises(Exception, match=r"cannot write .*out.json: No space left"),
        outputs.writing(tmp_path / "out.json"),
    ):
        raise partial


def _misnamed(built: dict[str, Path], tmp: Path) -> dict[str, tuple[list[str], Path, str]]:
    """Each picture output given a suffix its writer cannot write (or none): args, the output, the
    suffixes the refusal names."""
    data, store = str(built["data"]), str(built["store"])
    show = ["show", data, "BRATS_001", "--out"]
    plots = ".png, .pdf or .svg"
    return {
        "show-out": ([*show, str(tmp / "p.jpg2")], tmp / "p.jpg2", ".png"),
        "show-out-bare": ([*show, str(tmp / "pic")], tmp / "pic", ".png"),
        "show-gif": ([*show, str(tmp / "p.png"), "--gif", str(tmp / "g.foo")], tmp / "g.foo", ".gif"),
        "show-gif-bare": ([*show, str(tmp / "p.png"), "--gif", str(tmp / "movie")], tmp / "movie", ".gif"),
        "show-out-upper": ([*show, str(tmp / "p.PNG")], tmp / "p.PNG", ".png"),
        "stats": (["stats", store, "--plot", str(tmp / "s.xyz")], tmp / "s.xyz", plots),
        "stats-bare": (["stats", store, "--plot", str(tmp / "stats")], tmp / "stats", plots),
    }


def _assert_suffix_refused(result, path: Path, allowed: str, tmp: Path) -> None:
    _assert_one_line(result, path)
    found = path.suffix or "none"
    assert f"cannot write {path}: needs a {allowed} suffix, found {found}" in result.output
    assert list(tmp.iterdir()) == []  # refused when parsing: nothing drawn, nothing written


MISNAMED = ["show-out", "show-out-bare", "show-gif", "show-gif-bare", "show-out-upper", "stats", "stats-bare"]


@pytest.mark.parametrize("case", MISNAMED)
def test_a_picture_suffix_its_writer_cannot_write_is_refused_before_any_work(built, tmp_path, case):
    args, path, allowed = _misnamed(built, tmp_path)[case]
    result = CliRunner().invoke(main, args)
    _assert_suffix_refused(result, path, allowed, tmp_path)


@pytest.mark.parametrize(
    ("option", "name", "allowed"),
    [
        ("--out", "foo", ".npz"),  # numpy would write foo.npz
        ("--out", "s.npy", ".npz"),
        ("--png", "s.bmpx", ".png"),
        ("--png", "pic", ".png"),
    ],
)
def test_brainnet_sample_refuses_an_output_suffix_before_sampling(built, tmp_path, option, name, allowed):
    pytest.importorskip("torch")
    from brainnet.cli import main as brainnet

    paths = {"--out": tmp_path / "s.npz", "--png": tmp_path / "s.png", option: tmp_path / name}
    args = ["sample", "--store", str(built["store"]), "--count", "2"]
    result = CliRunner().invoke(brainnet, [*args, "--out", str(paths["--out"]), "--png", str(paths["--png"])])
    _assert_suffix_refused(result, tmp_path / name, allowed, tmp_path)


def test_suffix_problem_by_hand():
    assert outputs.suffix_problem(Path("a/b.png"), (".png",)) is None
    assert outputs.suffix_problem(Path("b.jpg2"), (".png",)) == "needs a .png suffix, found .jpg2"
    assert outputs.suffix_problem(Path("b"), (".png", ".svg")) == "needs a .png or .svg suffix, found none"
    assert outputs.suffix_problem(Path("b.tar.gz"), (".npz",)) == "needs a .npz suffix, found .gz"
    nifti = (".nii.gz", ".nii")
    assert outputs.suffix_problem(Path("a/seg.nii.gz"), nifti) is None
    assert outputs.suffix_problem(Path("seg.nii"), nifti) is None
    assert outputs.suffix_problem(Path("seg.gz"), nifti) == "needs a .nii.gz or .nii suffix, found .gz"
    assert outputs.suffix_problem(Path("o5.png"), nifti) == "needs a .nii.gz or .nii suffix, found .png"
    assert outputs.suffix_problem(Path(".nii.gz"), nifti) == "needs a .nii.gz or .nii suffix, found .gz"


def test_brainnet_predict_refuses_a_picture_suffix_before_loading_the_model(built, tmp_path):
    pytest.importorskip("torch")
    from brainnet.cli import main as brainnet

    checkpoint = built["data"].parent / "not-a-checkpoint.pt"  # never opened: the refusal comes first
    checkpoint.write_bytes(b"")
    out, png = tmp_path / "seg.nii.gz", tmp_path / "overlay.jpg"
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(built["data"]), "--case", "BRATS_001"]
    result = CliRunner().invoke(brainnet, [*args, "--out", str(out), "--png", str(png)])
    _assert_suffix_refused(result, png, ".png", tmp_path)
    result = CliRunner().invoke(brainnet, [*args, "--out", str(tmp_path / "seg")])  # it wrote an .nii as seg
    _assert_suffix_refused(result, tmp_path / "seg", ".nii.gz or .nii", tmp_path)


def test_a_nifti_write_failing_part_way_keeps_the_old_file_and_is_one_line_naming_it(tmp_path, monkeypatch):
    import click
    import nibabel as nib
    import numpy as np

    from brainprep.read.nifti import write_nifti

    path = tmp_path / "seg.nii.gz"
    write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), path)
    before = path.read_bytes()

    def full_disk(image, filename):
        Path(filename).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")  # as gzip's write: no file named

    monkeypatch.setattr(nib, "save", full_disk)
    with (
        pytest.raises(click.ClickException, match=r"cannot write .*seg.nii.gz: No space left"),
        outputs.writing(path),
    ):
        write_nifti(np.ones((4, 4, 4), np.uint8), np.eye(4), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]
