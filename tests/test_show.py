"""Tests of the pictures (brainprep.show) and the ``brainprep show`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import brainprep
from brainprep.cli import main
from brainprep.show import (
    content_box,
    gif_frames,
    overlay_rgb,
    plane_slice,
    planes_figure,
    tumour_centre,
    write_gif,
    write_planes_png,
)
from brainprep.synth import SynthParams, write_synthetic_dataset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_WITH_SEG = DATA / "brats2023-with-seg"
SHAPE = (40, 36, 20)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("show") / "synth"
    return write_synthetic_dataset(out, SynthParams(n_cases=1, shape=SHAPE, seed=5))


@pytest.fixture(scope="module")
def case(dataset_dir):
    return brainprep.read_case(brainprep.discover_cases(dataset_dir).cases[0])


def test_tumour_centre_is_the_rounded_centre_of_mass():
    label = np.zeros((5, 6, 7), dtype=np.uint8)
    label[1, 2, 3] = 1
    label[3, 2, 3] = 3
    label[3, 4, 6] = 2  # mean (7/3, 8/3, 12/3) -> (2, 3, 4)
    assert tumour_centre(label) == (2, 3, 4)
    assert tumour_centre(np.zeros((5, 6, 7), dtype=np.uint8)) == (2, 3, 3)


def test_overlay_colours_on_a_hand_made_3x3_slice():
    gray = np.array([[0, 10, 20], [30, 40, 50], [60, 70, 80]], dtype=np.float32)
    label = np.array([[0, 1, 2], [3, 0, 0], [0, 0, 1]], dtype=np.uint8)
    rgb = overlay_rgb(gray, label, alpha=0.5, window=(0.0, 80.0))
    assert rgb.shape == (3, 3, 3) and rgb.dtype == np.uint8
    # Window 0..80 -> grey g = value * 255 / 80; labelled pixels: 0.5 g + 0.5 colour.
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 1], [128, 128, 128])  # 40 -> 127.5 -> 128
    np.testing.assert_array_equal(rgb[0, 1], [143, 16, 16])  # edema red: g = 31.875, 15.94 + 127.5
    np.testing.assert_array_equal(rgb[0, 2], [32, 159, 32])  # non-enhancing green: g = 63.75
    np.testing.assert_array_equal(rgb[1, 0], [48, 48, 175])  # enhancing blue: g = 95.625
    np.testing.assert_array_equal(rgb[2, 2], [255, 128, 128])  # edema on white
    np.testing.assert_array_equal(overlay_rgb(gray, None, window=(0.0, 80.0))[0, 1], [32, 32, 32])


def test_overlay_default_window_is_1st_to_99th_percentile_of_nonzero_pixels():
    gray = np.zeros((10, 11), dtype=np.float32)
    gray[:, 1:] = np.arange(100, dtype=np.float32).reshape(10, 10) + 1  # 1..100 plus zero background
    rgb = overlay_rgb(gray, None)
    low, high = np.percentile(np.arange(1, 101), [1, 99])
    assert rgb[0, 0, 0] == 0  # below the window
    assert rgb[9, 10, 0] == 255  # 100 > 99th percentile
    expected = round((50 - low) * 255 / (high - low))
    assert rgb[4, 10, 0] == expected  # value 50


def test_plane_slice_orientation_is_radiological():
    volume = np.zeros((4, 5, 6), dtype=np.uint8)
    volume[3, 4, 2] = 1  # most right (x max), most anterior (y max)
    axial = plane_slice(volume, "axial", 2)
    assert axial.shape == (5, 4)
    assert axial[0, 0] == 1  # anterior up, patient's right on the image left
    volume[:] = 0
    volume[3, 1, 5] = 1  # right, superior
    coronal = plane_slice(volume, "coronal", 1)
    assert coronal.shape == (6, 4) and coronal[0, 0] == 1
    volume[:] = 0
    volume[2, 4, 5] = 1  # anterior, superior
    sagittal = plane_slice(volume, "sagittal", 2)
    assert sagittal.shape == (6, 5) and sagittal[0, 0] == 1


def test_content_box_holds_the_nonzero_voxels_and_the_centre():
    image = np.zeros((2, 20, 20, 10), dtype=np.float32)
    image[1, 5:8, 6:9, 2:4] = 1.0
    assert content_box(image, (6, 7, 3), margin=1) == (slice(4, 9), slice(5, 10), slice(1, 5))
    assert content_box(image, (15, 7, 3), margin=0)[0] == slice(5, 16)


def test_planes_figure_has_twelve_panels_with_titles(case):
    figure = planes_figure(case)
    images = [ax for ax in figure.axes if ax.images]
    assert len(images) == 12
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert [t.split(" ")[0] for t in titles] == ["axial", "coronal", "sagittal"]
    centre = tumour_centre(case.label)
    assert titles[0] == f"axial (z={centre[2]})"
    assert figure.legends and [t.get_text() for t in figure.legends[0].get_texts()] == [
        "edema",
        "non-enhancing",
        "enhancing",
    ]


def test_write_planes_png_and_gif(case, tmp_path):
    png = write_planes_png(case, tmp_path / "pictures" / "case.png")
    with Image.open(png) as picture:
        assert picture.format == "PNG"
        assert picture.width == 1100 and picture.height > 400

    gif = write_gif(case, tmp_path / "case.gif", channel=2)
    box = content_box(case.image, tuple(s // 2 for s in case.shape))
    n_expected = sum(b.stop - b.start for b in box)  # axial + coronal + sagittal slices
    with Image.open(gif) as movie:
        assert movie.format == "GIF"
        assert movie.n_frames == n_expected
    stepped = gif_frames(case, channel=0, step=3)
    assert len(stepped) == sum(-(-(b.stop - b.start) // 3) for b in box)
    assert len({f.shape for f in stepped}) == 1


def test_cli_show_writes_pictures_and_reports_paths(dataset_dir, tmp_path):
    png, gif = tmp_path / "a.png", tmp_path / "a.gif"
    result = CliRunner().invoke(
        main,
        ["show", str(dataset_dir), "BRATS_001", "--out", str(png), "--gif", str(gif), "--channel", "t1ce"],
    )
    assert result.exit_code == 0, result.output
    assert png.is_file() and gif.is_file()
    assert result.output.splitlines() == [str(png), str(gif)]


def test_cli_show_unknown_case_and_channel_fail_clearly(dataset_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["show", str(dataset_dir), "BRATS_999", "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0
    assert "no case 'BRATS_999'" in result.output
    assert not (tmp_path / "x.png").exists()
    result = runner.invoke(
        main, ["show", str(dataset_dir), "BRATS_001", "--out", str(tmp_path / "x.png"), "--channel", "dwi"]
    )
    assert result.exit_code != 0 and "unknown channel 'dwi'" in result.output


def test_cli_show_a_failed_gif_takes_the_png_with_it(dataset_dir, tmp_path, monkeypatch):
    import errno

    import brainprep.show

    png, gif = tmp_path / "a.png", tmp_path / "a.gif"

    def full_disk(case, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(brainprep.show, "write_gif", full_disk)
    args = ["show", str(dataset_dir), "BRATS_001", "--out", str(png), "--gif", str(gif)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.splitlines() == [f"Error: cannot write {gif}: No space left on device"]
    assert list(tmp_path.iterdir()) == []


def test_cli_show_case_without_label_says_so(dataset_dir, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    (unlabelled / "imagesTs").mkdir(parents=True)
    source = dataset_dir / "imagesTr" / "BRATS_001.nii.gz"
    (unlabelled / "imagesTs" / "BRATS_001.nii.gz").write_bytes(source.read_bytes())
    result = CliRunner().invoke(
        main, ["show", str(unlabelled), "BRATS_001", "--out", str(tmp_path / "u.png")]
    )
    assert result.exit_code == 0, result.output
    assert "has no label: drawing no overlay" in result.output
    assert (tmp_path / "u.png").is_file()


@pytest.mark.skipif(not REAL_WITH_SEG.is_dir(), reason=f"real BraTS 2023 case not found at {REAL_WITH_SEG}")
def test_real_case_picture(tmp_path):
    dataset = brainprep.discover_cases(REAL_WITH_SEG)
    case = brainprep.read_case(dataset.cases[0])
    assert tumour_centre(case.label) == (145, 112, 79)
    png = write_planes_png(case, tmp_path / "real.png")
    with Image.open(png) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    # Edema overlay (red dominant) is visible somewhere in the figure.
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    assert red.sum() > 1000
