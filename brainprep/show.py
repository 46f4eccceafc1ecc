"""Pictures of a case: three planes through the tumour for every channel (PNG) and a slice movie (GIF).

Display orientation -- radiological convention, as PACS viewers and ITK-SNAP show BraTS scans: the
patient's right is on the left of axial and coronal images, anterior is up on axial images, superior is
up on coronal and sagittal images, and anterior is on the left of sagittal images. The arrays are RAS
(x to the right, y anterior, z superior), so each plane is transposed then flipped in both directions,
and every panel is marked with the side letters so nobody has to take this comment on trust.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from brainprep.read.case import Case
from brainprep.spec import CHANNEL_NAMES

logger = logging.getLogger(__name__)

#: RGB of canonical classes 1.. (glioma family: 1 edema red, 2 non-enhancing green, 3 enhancing blue;
#: a 4th class, e.g. a resection cavity, yellow; a 5th magenta).
LABEL_COLOURS = np.array(
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255]], dtype=np.uint8
)
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
#: side letters (left edge, right edge, top edge, bottom edge) of each displayed plane.
PLANE_SIDES: dict[str, tuple[str, str, str, str]] = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}
DEFAULT_ALPHA = 0.45
WINDOW_PERCENTILES = (1.0, 99.0)
GIF_FRAME_MS = 60
PROGRESS_BAR_ROWS = 3
CROP_MARGIN = 4
PLANE_AXIS: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}
FIGURE_WIDTH_INCHES = 11.0
LEFT_MARGIN_INCHES, TOP_MARGIN_INCHES, BOTTOM_MARGIN_INCHES = 0.35, 0.65, 0.45


def tumour_centre(label: np.ndarray | None) -> tuple[int, int, int]:
    """Voxel nearest the centre of mass of ``label > 0``; the volume centre when there is no tumour.

    Args:
        label: uint8 (X, Y, Z), or ``None`` for an unlabelled case (then the shape is unknown: error).
    """
    if label is None:
        raise ValueError("tumour_centre needs a label map; use the volume centre for unlabelled cases")
    tumour = np.argwhere(label > 0)
    if tumour.size == 0:
        return tuple(int(s) // 2 for s in label.shape)  # type: ignore[return-value]
    return tuple(int(v) for v in np.rint(tumour.mean(axis=0)))  # type: ignore[return-value]


def intensity_window(values: np.ndarray) -> tuple[float, float]:
    """1st and 99th percentile of the nonzero ``values`` (all of them when none is nonzero).

    Background (exactly 0 outside the head or brain) is left out, or it would take most of the range.
    """
    flat = np.asarray(values, dtype=np.float32).ravel()
    nonzero = flat[flat != 0]
    sample = nonzero if nonzero.size else flat
    low, high = np.percentile(sample, WINDOW_PERCENTILES)
    return float(low), float(high)


def overlay_rgb(
    gray2d: np.ndarray,
    label2d: np.ndarray | None,
    alpha: float = DEFAULT_ALPHA,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Blend a label slice over a grey slice.

    Args:
        gray2d: (H, W) intensities.
        label2d: (H, W) canonical classes (glioma: 0 background, 1 edema, 2 non-enhancing, 3 enhancing),
            or ``None``.
        alpha: opacity of the label colours (edema red, non-enhancing green, enhancing blue).
        window: (low, high) intensities mapped to black and white; default :func:`intensity_window`
            of ``gray2d`` (1st-99th percentile of its nonzero pixels).

    Returns:
        uint8 (H, W, 3).
    """
    low, high = window if window is not None else intensity_window(gray2d)
    scale = 255.0 / (high - low) if high > low else 0.0
    gray = np.clip((np.asarray(gray2d, dtype=np.float32) - low) * scale, 0.0, 255.0)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if label2d is not None:
        tumour = label2d > 0
        colour = LABEL_COLOURS[np.clip(label2d, 0, len(LABEL_COLOURS) - 1)].astype(np.float32)
        rgb[tumour] = (1.0 - alpha) * rgb[tumour] + alpha * colour[tumour]
    return np.rint(rgb).astype(np.uint8)


def plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """(H, W) display slice of a RAS (X, Y, Z) volume in the radiological orientation (see module)."""
    if plane == "axial":
        section = volume[:, :, index]  # (x, y)
    elif plane == "coronal":
        section = volume[:, index, :]  # (x, z)
    elif plane == "sagittal":
        section = volume[index, :, :]  # (y, z)
    else:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    # Rows from the second axis (A or S) top-down, columns from the first (R or A) right-to-left.
    return section.T[::-1, ::-1]


def _plane_aspect(plane: str, spacing: tuple[float, float, float]) -> float:
    """Height/width of a displayed pixel, in mm."""
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane]


def content_box(
    image: np.ndarray, centre: tuple[int, int, int], margin: int = CROP_MARGIN
) -> tuple[slice, ...]:
    """Bounding box (three slices) of the nonzero voxels of any channel, plus ``margin``, holding ``centre``.

    BraTS volumes are mostly black around the brain; pictures show only this box.

    Args:
        image: (C, X, Y, Z).
    """
    foreground = (image != 0).any(axis=0)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(foreground.any(axis=other))
        low, high = (int(hits[0]), int(hits[-1])) if hits.size else (0, foreground.shape[axis] - 1)
        low, high = min(low, centre[axis]), max(high, centre[axis])
        box.append(slice(max(low - margin, 0), min(high + margin + 1, foreground.shape[axis])))
    return tuple(box)


def _panel_mm(
    plane: str, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[float, float]:
    """(width, height) in mm of a displayed plane."""
    (nx, ny, nz), (sx, sy, sz) = shape, spacing
    return {"axial": (nx * sx, ny * sy), "coronal": (nx * sx, nz * sz), "sagittal": (ny * sy, nz * sz)}[plane]


def _mark_sides(ax, plane: str, height: int, width: int) -> None:
    """Write the anatomical side letters just inside the edges of a displayed plane."""
    left, right, top, bottom = PLANE_SIDES[plane]
    style = {"color": "yellow", "fontsize": 9, "fontweight": "bold"}
    ax.text(1, height / 2, left, ha="left", va="center", **style)
    ax.text(width - 2, height / 2, right, ha="right", va="center", **style)
    ax.text(width / 2, 1, top, ha="center", va="top", **style)
    ax.text(width / 2, height - 2, bottom, ha="center", va="bottom", **style)


def planes_figure(
    case: Case,
    centre: tuple[int, int, int] | None = None,
    alpha: float = DEFAULT_ALPHA,
    width_inches: float = FIGURE_WIDTH_INCHES,
):
    """Grid of panels: rows = the four channels, columns = axial / coronal / sagittal through ``centre``.

    Args:
        case: a canonical case (image float32 (C, X, Y, Z) RAS; label uint8 (X, Y, Z) or None).
        centre: (x, y, z) voxel the planes cross; default :func:`tumour_centre` (volume centre
            without label).
        alpha: opacity of the label colours.
        width_inches: figure width; the height follows from the panels' physical sizes.

    Returns:
        A matplotlib ``Figure`` drawn with the Agg backend (no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if centre is None:
        centre = tumour_centre(case.label) if case.label is not None else tuple(s // 2 for s in case.shape)
    centre = tuple(int(c) for c in centre)  # type: ignore[assignment]
    n_channels = case.image.shape[0]
    names = CHANNEL_NAMES if n_channels == len(CHANNEL_NAMES) else [f"channel {i}" for i in range(n_channels)]
    box = content_box(case.image, centre)  # type: ignore[arg-type]
    image = case.image[(slice(None), *box)]
    label_box = case.label[box] if case.label is not None else None
    shape = tuple(int(s) for s in image.shape[1:])
    local = tuple(c - b.start for c, b in zip(centre, box, strict=True))  # type: ignore[arg-type]
    sizes = [_panel_mm(plane, shape, case.spacing) for plane in PLANES]
    inches_per_mm = (width_inches - LEFT_MARGIN_INCHES) / sum(w for w, _ in sizes)
    row_inches = max(h for _, h in sizes) * inches_per_mm
    top, bottom = TOP_MARGIN_INCHES, BOTTOM_MARGIN_INCHES if case.label is not None else 0.1
    height = n_channels * row_inches + top + bottom
    figure = Figure(figsize=(width_inches, height), facecolor="black")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(
        n_channels,
        len(PLANES),
        width_ratios=[w for w, _ in sizes],
        left=LEFT_MARGIN_INCHES / width_inches,
        right=1.0,
        top=1.0 - top / height,
        bottom=bottom / height,
        wspace=0.02,
        hspace=0.02,
    )
    for row, name in enumerate(names):
        volume = image[row]
        window = intensity_window(volume)
        for column, plane in enumerate(PLANES):
            index = local[PLANE_AXIS[plane]]
            label = plane_slice(label_box, plane, index) if label_box is not None else None
            picture = overlay_rgb(plane_slice(volume, plane, index), label, alpha, window)
            ax = figure.add_subplot(grid[row, column])
            ax.set_facecolor("black")
            ax.imshow(picture, aspect=_plane_aspect(plane, case.spacing), interpolation="nearest")
            ax.set_axis_off()
            _mark_sides(ax, plane, *picture.shape[:2])
            if row == 0:
                ax.set_title(
                    f"{plane} ({'xyz'[PLANE_AXIS[plane]]}={centre[PLANE_AXIS[plane]]})",
                    color="white",
                    fontsize=11,
                )
            if column == 0:
                ax.text(
                    -0.03,
                    0.5,
                    name,
                    color="white",
                    fontsize=12,
                    rotation=90,
                    ha="right",
                    va="center",
                    transform=ax.transAxes,
                )
    title = f"{case.case_id}   planes through (x, y, z) = {centre}   radiological view (R on the left)"
    if case.label is None:
        title += "   no label"
    figure.text(0.5, 1.0 - 0.12 / height, title, color="white", fontsize=12, ha="center", va="top")
    if case.label is not None:
        handles = [
            Patch(facecolor=LABEL_COLOURS[i + 1] / 255.0, label=name.replace("_", "-"))
            for i, name in enumerate(case.files.spec.foreground)
        ]
        figure.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=len(handles),
            frameon=False,
            labelcolor="white",
            fontsize=11,
        )
    return figure


def write_planes_png(case: Case, path: Path | str, centre: tuple[int, int, int] | None = None) -> Path:
    """Save :func:`planes_figure` of ``case`` as a PNG; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = planes_figure(case, centre)
    figure.savefig(path, dpi=100, facecolor=figure.get_facecolor())
    logger.info("wrote %s", path)
    return path


def gif_frames(case: Case, channel: int = 0, step: int = 1) -> list[np.ndarray]:
    """Frames stepping through the volume's content box (:func:`content_box`) on the RAS grid: axial
    (inferior to superior), then coronal (posterior to anterior), then sagittal (left to right: RAS's x
    grows toward the patient's right), every ``step``-th slice.

    Every frame is padded (centred, black) to the largest plane and carries a progress bar along its
    bottom rows, so that no two frames are identical (GIF writers merge identical frames).

    Returns:
        uint8 (H, W, 3) frames, ``ceil(Z/step) + ceil(Y/step) + ceil(X/step)`` of them (X, Y, Z the
        content box's shape).
    """
    box = content_box(case.image, tuple(s // 2 for s in case.shape))  # type: ignore[arg-type]
    volume = case.image[channel][box]
    labels = case.label[box] if case.label is not None else None
    window = intensity_window(volume)
    sizes = [plane_slice(volume, plane, 0).shape for plane in PLANES]
    height = max(s[0] for s in sizes) + PROGRESS_BAR_ROWS
    width = max(s[1] for s in sizes)
    frames = []
    for plane in PLANES:
        n_slices = volume.shape[PLANE_AXIS[plane]]
        for index in range(0, n_slices, step):
            label = plane_slice(labels, plane, index) if labels is not None else None
            picture = overlay_rgb(plane_slice(volume, plane, index), label, window=window)
            frame = np.zeros((height, width, 3), dtype=np.uint8)
            top = (height - PROGRESS_BAR_ROWS - picture.shape[0]) // 2
            left = (width - picture.shape[1]) // 2
            frame[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
            done = round(width * (index + 1) / n_slices)
            frame[-PROGRESS_BAR_ROWS:, :done] = (255, 200, 0)
            frames.append(frame)
    return frames


def write_gif(case: Case, path: Path | str, channel: int = 0, step: int = 1) -> Path:
    """Save the :func:`gif_frames` of ``channel`` as a looping GIF; returns ``path``."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in gif_frames(case, channel, step)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)
    logger.info("wrote %s (%d frames)", path, len(images))
    return path
