"""Store statistics: hand-counted tables, the text report, the PNG and the CLI on a built store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from brainprep.cli import main
from brainprep.stats import format_stats, histogram_edges, plot_stats, table_stats
from brainprep.store.reader import PatchTable


def hand_table() -> PatchTable:
    """Six slots: train patches at 0, 1 (case 0), val patches at 2 (case 1) and 4, 5 (case 2), slot 3 empty.

    Class fractions (edema, non-enhancing, enhancing) and tumour fraction (their sum):
    slot 0: (0.10, 0.00, 0.00) -> 0.10     slot 2: (0.05, 0.05, 0.10) -> 0.20
    slot 1: (0.20, 0.10, 0.00) -> 0.30     slot 4: (0.30, 0.00, 0.00) -> 0.30
                                           slot 5: (0.00, 0.00, 0.60) -> 0.60
    """
    classes = np.array(
        [
            [0.10, 0.0, 0.0],
            [0.20, 0.10, 0.0],
            [0.05, 0.05, 0.10],
            [0.0, 0.0, 0.0],
            [0.30, 0.0, 0.0],
            [0.0, 0.0, 0.60],
        ],
        dtype=np.float32,
    )
    return PatchTable(
        valid=np.array([True, True, True, False, True, True]),
        case=np.array([0, 0, 1, -1, 2, 2], dtype=np.int32),
        corner=np.zeros((6, 3), dtype=np.int32),
        tumour_fraction=classes.sum(axis=1).astype(np.float32),
        class_fractions=classes,
        split=np.array([0, 0, 1, -1, 1, 1], dtype=np.int8),
    )


def test_table_stats_by_hand() -> None:
    train, val, everything = table_stats(hand_table(), bins=4)
    assert (train.name, train.n_patches, train.n_cases) == ("train", 2, 1)
    assert (val.name, val.n_patches, val.n_cases) == ("val", 3, 2)
    assert (everything.n_patches, everything.n_cases) == (5, 3)
    # train voxel shares: background mean(0.9, 0.7) = 0.8, edema 0.15, non-enh 0.05, enh 0
    np.testing.assert_allclose(train.voxel_share, [0.8, 0.15, 0.05, 0.0], atol=1e-6)
    np.testing.assert_allclose(train.patch_share, [1.0, 1.0, 0.5, 0.0])
    # val: background mean(0.8, 0.7, 0.4) = 0.6333, edema mean(.05,.3,0) = .11667, non-enh .01667, enh .23333
    np.testing.assert_allclose(val.voxel_share, [1.9 / 3, 0.35 / 3, 0.05 / 3, 0.7 / 3], atol=1e-6)
    np.testing.assert_allclose(val.patch_share, [1.0, 2 / 3, 1 / 3, 2 / 3])
    # shared edges: 0.10 .. 0.60 in 4 bins of 0.125
    np.testing.assert_allclose(train.bin_edges, [0.1, 0.225, 0.35, 0.475, 0.6])
    assert train.histogram.tolist() == [1, 1, 0, 0]  # 0.10 in [0.1, 0.225), 0.30 in [0.225, 0.35)
    assert val.histogram.tolist() == [1, 1, 0, 1]  # 0.20, 0.30, 0.60 (the last bin is closed)
    assert val.tumour_fraction_mean == pytest.approx((0.2 + 0.3 + 0.6) / 3, abs=1e-6)


def test_histogram_edges_round_out_to_five_percent() -> None:
    np.testing.assert_allclose(histogram_edges(np.array([0.07, 0.33]), bins=5), np.linspace(0.05, 0.35, 6))
    np.testing.assert_allclose(histogram_edges(np.array([0.10, 0.10]), bins=2), [0.10, 0.125, 0.15])
    np.testing.assert_allclose(histogram_edges(np.array([]), bins=1), [0.0, 0.05])


def test_empty_split_has_zero_patches_and_nan_shares() -> None:
    table = hand_table()
    only_train = PatchTable(**{**table.__dict__, "split": np.where(table.valid, 0, -1).astype(np.int8)})
    train, val, _ = table_stats(only_train, bins=2)
    assert (train.n_patches, val.n_patches, val.n_cases) == (5, 0, 0)
    assert np.isnan(val.voxel_share).all() and val.histogram.sum() == 0


def test_format_stats_lists_counts_and_bars() -> None:
    text = format_stats(table_stats(hand_table(), bins=4))
    lines = text.splitlines()
    assert lines[1].split() == ["train", "2", "1", "0.2000"]
    assert lines[2].split() == ["val", "3", "2", "0.3667"]
    assert "tumour fraction histogram (val, 3 patches)" in text
    # val's fullest bins hold 1 patch each: full-width bars of 40 '#'
    assert "0.475-0.600 | " + "#" * 40 + " 1" in text


def test_plot_stats_writes_a_png(tmp_path: Path) -> None:
    path = plot_stats(table_stats(hand_table(), bins=4), tmp_path / "stats.png", title="hand table")
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width > 800 and height > 600
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # not a blank canvas


@pytest.fixture(scope="module")
def built_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("brainprep.builder", reason="brainprep.builder (the store writer) is not there yet")
    from brainprep.builder import build_patches
    from brainprep.params import BuildParams, SamplingParams
    from brainprep.synth import SynthParams, write_synthetic_dataset

    root = tmp_path_factory.mktemp("stats")
    data = write_synthetic_dataset(root / "data", SynthParams(n_cases=4, shape=(64, 64, 32), seed=0))
    params = BuildParams(sampling=SamplingParams(patch_size=(32, 32, 8), patches_per_case=4), seed=0)
    store = root / "store.zarr"
    build_patches(data, store, params, workers=1)
    return store


def test_cli_stats_on_a_built_store(built_store: Path, tmp_path: Path) -> None:
    from brainprep.store.reader import open_store

    with open_store(built_store) as store:
        table = store.table
    plot = tmp_path / "stats.png"
    result = CliRunner().invoke(main, ["stats", str(built_store), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    n_train = int((table.valid & (table.split == 0)).sum())
    n_val = int((table.valid & (table.split == 1)).sum())
    assert lines[1].split()[:2] == ["train", str(n_train)]
    assert lines[2].split()[:2] == ["val", str(n_val)]
    assert lines[3].split()[:2] == ["all", str(int(table.valid.sum()))]
    assert plot.stat().st_size > 10_000


def test_cli_stats_plots_a_vector_format_too(built_store: Path, tmp_path: Path) -> None:
    plot = tmp_path / "stats.svg"
    result = CliRunner().invoke(main, ["stats", str(built_store), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"wrote {plot}"
    assert "<svg" in plot.read_text()[:1000]


def test_cli_stats_opens_a_patch_store_once(built_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from brainprep.store.reader import PatchStore

    opened = []
    original = PatchStore._open_once
    monkeypatch.setattr(PatchStore, "_open_once", lambda self: opened.append(self) or original(self))
    result = CliRunner().invoke(main, ["stats", str(built_store), "--bins", "3"])
    assert result.exit_code == 0, result.output
    assert len(opened) == 1


def test_cli_stats_of_a_volume_store_refuses_bins_and_plot(tmp_path: Path) -> None:
    """--bins was silently ignored for a volume store (it has no tumour fraction histogram)."""
    from brainprep.builder import build_patches
    from brainprep.params import BuildParams, SamplingParams, StoreParams
    from brainprep.synth import SynthParams, write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", SynthParams(n_cases=2, shape=(32, 32, 16), seed=0))
    store = tmp_path / "volumes.zarr"
    params = BuildParams(sampling=SamplingParams(patch_size=(16, 16, 8)), store=StoreParams(kind="volumes"))
    build_patches(data, store, params, workers=1)
    runner = CliRunner()
    result = runner.invoke(main, ["stats", str(store)])
    assert result.exit_code == 0 and "tumour corners" in result.output.lower(), result.output
    for option in (["--bins", "10"], ["--plot", str(tmp_path / "p.png")]):
        result = runner.invoke(main, ["stats", str(store), *option])
        assert result.exit_code == 2 and "a volume store has" in result.output, result.output
        assert option[0] in result.output


def test_cli_stats_refuses_a_missing_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["stats", str(tmp_path / "nope.zarr")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not hdf5 at all\n", "is not an HDF5 file (no HDF5 signature): not a brainprep store"),
        (None, "is a truncated or damaged HDF5 file (truncated file"),
    ],
)
def test_cli_stats_of_a_file_that_is_not_hdf5_or_is_truncated_is_one_line(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    import h5py

    path = tmp_path / "x.h5"
    if content is None:  # the first half of a real HDF5 file
        with h5py.File(path, "w") as handle:
            handle["data"] = np.arange(10_000)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["stats", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"Error: {path} {expected}"), result.output
