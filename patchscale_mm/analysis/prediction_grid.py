"""The sweep's ``predictions.png``: a few held-out scenes, their ground truth
and each segmentation run's predicted label map, one row per run.

Drawn with PIL on an exact pixel grid rather than with matplotlib: every
panel is its scene enlarged by a whole factor, at a position the returned
layout (written as ``predictions.json`` by the sweep) tells, so a reader or
a test can cut any panel out of the PNG. Ground truth and predictions share
one palette: the dataset's when it has one.
"""
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

# Panels are enlarged to about this many pixels: 32 px scenes become 128.
PANEL_PIXELS = 128
GAP = 4
# Labels outside the palette (mmseg's ignore index 255): white, as no
# class is.
OUTSIDE_PALETTE = (255, 255, 255)


def default_palette(num_classes: int) -> np.ndarray:
    """A fixed palette for data sets without one: black, then tab20."""
    from matplotlib import colormaps
    colors = colormaps['tab20'](np.arange(max(num_classes - 1, 0)) % 20)
    palette = np.concatenate([np.zeros((1, 3)), colors[:, :3] * 255])
    return palette.round().astype(np.uint8)[:num_classes]


def colorize(labels: np.ndarray, palette: Sequence) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours."""
    lut = np.tile(np.array(OUTSIDE_PALETTE, np.uint8), (256, 1))
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    lut[:len(palette)] = palette
    return lut[np.asarray(labels).astype(np.int64).clip(0, 255)]


def _font(size: int = 13):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def draw_prediction_grid(
        images: np.ndarray,
        ground_truth: np.ndarray,
        rows: Sequence[Tuple[str, np.ndarray]],
        palette: Optional[Sequence] = None,
        classes: Optional[Sequence[str]] = None,
        path: Union[str, Path, None] = None) -> Tuple[object, dict]:
    """Draws the grid: a row of images, one of ground truth, then ``rows``.

    Args:
        images: (N, H, W, 3) uint8 RGB scenes.
        ground_truth: (N, H, W) class indices.
        rows: ``(label, (N, H, W) predicted class indices)`` per run.
        palette: Class colours (RGB rows); :func:`default_palette` if None.
        classes: Class names for the legend below the grid (none if None).
        path: Where to save the PNG, if given.

    Returns:
        tuple: the PIL image and its layout: ``panel`` [h, w] in pixels,
        ``scale``, ``gap``, ``label_width`` (the row labels' column on the
        left), ``legend_height`` (the band below) and the ``palette``
        drawn; panel (row r, column c) has its top-left corner at
        x = label_width + c * (w + gap), y = r * (h + gap).
    """
    from PIL import Image, ImageDraw
    num, height, width = ground_truth.shape
    if palette is None:
        top = max([int(ground_truth.max())] +
                  [int(pred.max()) for _, pred in rows])
        palette = default_palette(len(classes) if classes else top + 1)
    scale = max(1, PANEL_PIXELS // max(height, width))
    ph, pw = height * scale, width * scale
    labelled = [('image', images), ('ground truth', ground_truth)] + list(rows)
    font = _font()
    measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    label_width = 12 + max(_text_width(measure, label, font)
                           for label, _ in labelled)
    grid_width = num * pw + (num - 1) * GAP
    legend = _legend_lines(measure, classes or [], font, grid_width)
    line_height = 18
    legend_height = len(legend) * line_height + (GAP if legend else 0)
    canvas = Image.new(
        'RGB', (label_width + grid_width,
                len(labelled) * ph + (len(labelled) - 1) * GAP +
                legend_height), 'white')
    draw = ImageDraw.Draw(canvas)
    for r, (label, maps) in enumerate(labelled):
        y = r * (ph + GAP)
        draw.text((4, y + ph // 2), label, fill='black', font=font,
                  anchor='lm')
        for c in range(num):
            panel = maps[c] if r == 0 else colorize(maps[c], palette)
            panel = np.asarray(panel, np.uint8).repeat(scale, 0).repeat(
                scale, 1)
            canvas.paste(Image.fromarray(panel), (label_width + c *
                                                  (pw + GAP), y))
    top = len(labelled) * (ph + GAP)
    for i, line in enumerate(legend):
        x, y = label_width, top + i * line_height
        for index, name in line:
            draw.rectangle((x, y + 3, x + 11, y + 14),
                           fill=tuple(int(v) for v in palette[index]),
                           outline='grey')
            draw.text((x + 15, y + 9), name, fill='black', font=font,
                      anchor='lm')
            x += 15 + _text_width(draw, name, font) + 12
    if path is not None:
        canvas.save(str(path))
    layout = dict(panel=[ph, pw], scale=scale, gap=GAP,
                  label_width=label_width, legend_height=legend_height,
                  palette=np.asarray(palette, np.uint8).reshape(
                      -1, 3).tolist())
    return canvas, layout


def _legend_lines(draw, classes: Sequence[str], font, width: int) -> list:
    """The classes ``(index, name)`` wrapped into lines of ``width``."""
    lines, line, used = [], [], 0
    for index, name in enumerate(classes):
        need = 15 + _text_width(draw, name, font) + 12
        if line and used + need > width:
            lines.append(line)
            line, used = [], 0
        line.append((index, name))
        used += need
    return lines + ([line] if line else [])
