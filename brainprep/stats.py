"""Store statistics from the patch table alone (no image or label chunk is read).

Per split: patch and case counts, class balance (mean voxel share of each class and the share of patches
holding at least one voxel of it) and the histogram of tumour fractions; as text for the terminal
(:func:`format_stats`) or a matplotlib figure (:func:`plot_stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainprep.spec import MSD_SPEC, DatasetSpec
from brainprep.store import schema

#: Histogram bins of tumour fractions; the upper edge is the largest fraction rounded up to this step.
HISTOGRAM_BINS = 10
HISTOGRAM_STEP = 0.05
#: Width in characters of the longest bar of the text histogram.
BAR_WIDTH = 40


@dataclass(frozen=True)
class SplitStats:
    """Statistics of the valid patches of one split.

    Attributes:
        name: ``train``, ``val`` or ``all``.
        n_patches: valid patches.
        n_cases: distinct cases with at least one valid patch.
        voxel_share: float64 (K + 1,), mean share of voxels of each class of ``class_names``.
        patch_share: float64 (K + 1,), share of patches holding at least one voxel of each class.
        histogram: int64 (B,), patch counts per tumour fraction bin.
        bin_edges: float64 (B + 1,), shared by every split of a store.
        tumour_fraction_mean: mean tumour fraction (NaN without patches).
        class_names: the store spec's classes, background first.
    """

    name: str
    n_patches: int
    n_cases: int
    voxel_share: np.ndarray
    patch_share: np.ndarray
    histogram: np.ndarray
    bin_edges: np.ndarray
    tumour_fraction_mean: float
    class_names: tuple[str, ...] = MSD_SPEC.classes


def histogram_edges(tumour_fraction: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """float64 (bins + 1,) edges spanning the fractions, both ends rounded out to a multiple of 0.05.

    Patches hold more than ``1 - background_threshold`` tumour by construction, so starting at the smallest
    fraction rather than at 0 keeps every bin of the histogram useful.
    """
    if not tumour_fraction.size:
        return np.linspace(0.0, HISTOGRAM_STEP, bins + 1)
    smallest, largest = float(tumour_fraction.min()), float(tumour_fraction.max())
    # float32 fractions sit a few 1e-8 off their decimal value: round with a tolerance, then make sure the
    # extreme values still fall inside the (closed) outer bins.
    low = math.floor(smallest / HISTOGRAM_STEP + 1e-6) * HISTOGRAM_STEP
    high = math.ceil(largest / HISTOGRAM_STEP - 1e-6) * HISTOGRAM_STEP
    low, high = max(0.0, low), min(1.0, max(high, low + HISTOGRAM_STEP))
    edges = np.linspace(low, high, bins + 1)
    edges[0], edges[-1] = min(edges[0], smallest), max(edges[-1], largest)
    return edges


def split_stats(
    name: str,
    case: np.ndarray,
    tumour_fraction: np.ndarray,
    class_fractions: np.ndarray,
    bin_edges: np.ndarray,
    class_names: tuple[str, ...],
) -> SplitStats:
    """Statistics of one split's valid patches.

    Args:
        name: split name.
        case: int (P,), case index of each patch.
        tumour_fraction: float (P,).
        class_fractions: float (P, K), shares of the foreground classes.
        bin_edges: float (B + 1,) tumour fraction histogram edges.
        class_names: the K + 1 classes, background first.
    """
    n = int(tumour_fraction.size)
    shares = np.concatenate([(1.0 - tumour_fraction)[:, None], class_fractions], axis=1).astype(np.float64)
    voxel_share = shares.mean(axis=0) if n else np.full(len(class_names), np.nan)
    patch_share = (shares > 0).mean(axis=0) if n else np.full(len(class_names), np.nan)
    histogram, _ = np.histogram(tumour_fraction, bins=bin_edges)
    return SplitStats(
        name=name,
        n_patches=n,
        n_cases=int(np.unique(case).size),
        voxel_share=voxel_share,
        patch_share=patch_share,
        histogram=histogram.astype(np.int64),
        bin_edges=np.asarray(bin_edges, dtype=np.float64),
        tumour_fraction_mean=float(tumour_fraction.mean()) if n else math.nan,
        class_names=tuple(class_names),
    )


def table_stats(table: Any, bins: int = HISTOGRAM_BINS, spec: DatasetSpec = MSD_SPEC) -> list[SplitStats]:
    """Statistics per split (``train``, ``val``) and over ``all`` valid patches.

    Args:
        table: the patch table: ``valid`` bool (N,), ``case`` int32 (N,), ``split`` int8 (N,),
            ``tumour_fraction`` float32 (N,), ``class_fractions`` float32 (N, K).
        spec: the store's dataset spec (its K foreground classes name the columns).
    """
    valid = np.asarray(table.valid, dtype=bool)
    case = np.asarray(table.case)[valid]
    split = np.asarray(table.split)[valid]
    tumour = np.asarray(table.tumour_fraction, dtype=np.float64)[valid]
    classes = np.asarray(table.class_fractions, dtype=np.float64)[valid]
    edges = histogram_edges(tumour, bins)
    out = []
    for name in schema.SPLIT_NAMES:
        keep = split == schema.SPLIT_CODES[name]
        out.append(split_stats(name, case[keep], tumour[keep], classes[keep], edges, spec.classes))
    out.append(split_stats("all", case, tumour, classes, edges, spec.classes))
    return out


def store_stats(
    location: str | Path, bins: int = HISTOGRAM_BINS, *, storage_options: dict[str, Any] | None = None
) -> list[SplitStats]:
    """:func:`table_stats` of a store (local, packed or URL); reads only the patch table.

    ``storage_options`` go to fsspec for a remote store.
    """
    from brainprep.store.reader import open_store

    store = open_store(location, storage_options=storage_options)
    try:
        return table_stats(store.table, bins, store.spec)
    finally:
        store.close()


def format_stats(stats: list[SplitStats]) -> str:
    """Text report: counts, class balance and one text histogram per split (``all`` omitted there)."""
    lines = [f"{'split':<6} {'patches':>8} {'cases':>6} {'mean tumour fraction':>21}"]
    for s in stats:
        lines.append(f"{s.name:<6} {s.n_patches:>8} {s.n_cases:>6} {s.tumour_fraction_mean:>21.4f}")
    header = "".join(f"{c:>15}" for c in stats[0].class_names)
    lines += ["", "class balance: mean voxel share", f"{'split':<6}{header}"]
    lines += [f"{s.name:<6}" + "".join(f"{v:>15.4f}" for v in s.voxel_share) for s in stats]
    lines += ["", "class balance: share of patches containing the class", f"{'split':<6}{header}"]
    lines += [f"{s.name:<6}" + "".join(f"{v:>15.4f}" for v in s.patch_share) for s in stats]
    for s in stats:
        if s.name == "all":
            continue
        lines += ["", f"tumour fraction histogram ({s.name}, {s.n_patches} patches)"]
        top = max(int(s.histogram.max()), 1) if s.histogram.size else 1
        for low, high, count in zip(s.bin_edges[:-1], s.bin_edges[1:], s.histogram, strict=True):
            bar = "#" * round(BAR_WIDTH * int(count) / top)
            lines.append(f"  {low:5.3f}-{high:5.3f} | {bar:<{BAR_WIDTH}} {int(count)}")
    return "\n".join(lines)


def plot_stats(stats: list[SplitStats], path: Path, title: str = "") -> Path:
    """A figure (PNG, or PDF / SVG by ``path``'s suffix): top row one tumour fraction histogram per split;
    bottom row the class balance as grouped bars (mean voxel share, share of patches containing the class).
    Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    splits = [s for s in stats if s.name != "all"]
    colours = {"train": "tab:blue", "val": "tab:orange"}
    columns = max(len(splits), 2)
    fig, axes = plt.subplots(2, columns, figsize=(5.5 * columns, 8.0), constrained_layout=True, squeeze=False)
    for ax, s in zip(axes[0], splits, strict=False):
        ax.bar(
            s.bin_edges[:-1],
            s.histogram,
            width=np.diff(s.bin_edges),
            align="edge",
            color=colours.get(s.name, "tab:gray"),
            edgecolor="white",
        )
        cases = "case" if s.n_cases == 1 else "cases"
        ax.set_title(f"{s.name}: {s.n_patches} patches from {s.n_cases} {cases}")
        ax.set_xlabel("tumour fraction of the patch (share of voxels with label > 0)")
        ax.set_ylabel("patches")
        ax.set_xlim(float(s.bin_edges[0]), float(s.bin_edges[-1]))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    panels = (
        (axes[1][0], "voxel_share", "class balance: mean share of voxels", "%.3f"),
        (axes[1][1], "patch_share", "share of patches containing the class", "%.2f"),
    )
    names = stats[0].class_names
    x = np.arange(len(names))
    width = 0.8 / max(len(splits), 1)
    for ax, attribute, panel_title, fmt in panels:
        for i, s in enumerate(splits):
            offset = (i - (len(splits) - 1) / 2) * width
            bars = ax.bar(
                x + offset, getattr(s, attribute), width, label=s.name, color=colours.get(s.name, "tab:gray")
            )
            ax.bar_label(bars, fmt=fmt, fontsize=8, padding=1)
        ax.set_xticks(x, names)
        ax.set_ylim(0.0, 1.25)  # headroom for the legend above bars at 1.0
        ax.set_ylabel("share")
        ax.set_title(panel_title)
        ax.legend(loc="upper center", ncols=max(len(splits), 1), fontsize=9)
    for ax in axes[1][2:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
