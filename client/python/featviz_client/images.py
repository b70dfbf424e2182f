"""Pictures from featviz arrays: PIL images for any channel count, labelled grids,
the composite and band sheet of images with bands (RGB + NIR, multispectral).

Arrays follow the server's layout, float32 [B, C, H, W] (or one [C, H, W])
in [0, 1]; `hwc` turns them into [B, H, W, C] for matplotlib. Everything that
makes a PIL image needs Pillow (Debian: python3-pil).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from typing import Optional

import numpy as np

MIN_CELL_PIXELS = 112
"""Grid cells are magnified until they are at least this wide (a 28x28 digit
becomes 112x112), as in the `featviz render` CLI."""

LABEL_FONT = "DejaVuSansMono.ttf"
"""The labels' font (Debian: fonts-dejavu-core), found by Pillow in the
system's font folders: a sans-serif like the CLI's labels, and monospaced, so
that labels of the same length take the same width. Without it, Pillow's
built-in bitmap font stands in."""

# The CLI's label metrics (core/image.cc), in pixels per text scale s: a label
# row is 12 high, ink starts 2 below the picture, and the font is 10 pixels
# (DejaVu Sans Mono's capitals then stand 7 high, as the CLI's do).
_LINE_PIXELS = 12
_BASELINE_PIXELS = 9
_FONT_PIXELS = 10
# What ends a label shortened to fit its cell, as in the CLI.
_ELLIPSIS = "..."


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as err:
        raise ImportError("featviz_client pictures need Pillow (python3-pil)") from err
    return Image, ImageDraw, ImageFont


def hwc(images: np.ndarray) -> np.ndarray:
    """[B, C, H, W] -> [B, H, W, C] (or [C, H, W] -> [H, W, C]); a view."""
    images = np.asarray(images)
    if images.ndim == 4:
        return images.transpose(0, 2, 3, 1)
    if images.ndim == 3:
        return images.transpose(1, 2, 0)
    raise ValueError(f"images must be [B, C, H, W] or [C, H, W], not shape {images.shape}")


def _batch(images) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W] or [C, H, W], not shape {images.shape}")
    return images


def to_pil(images) -> list:
    """One PIL image per image of a [B, C, H, W] (or [C, H, W]) array in [0, 1].

    1 channel gives "L", 2 "LA", 3 "RGB", 4 "RGBA"; any other count gives an
    "L" image with the channels side by side, left to right, so that nothing
    is dropped.
    """
    Image, _, _ = _pil()
    pixels = np.rint(np.clip(_batch(images), 0.0, 1.0) * 255.0).astype(np.uint8)
    channels = pixels.shape[1]
    modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
    out = []
    for image in pixels:
        if channels == 1:
            out.append(Image.fromarray(image[0], "L"))
        elif channels in modes:
            out.append(Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)),
                                       modes[channels]))
        else:
            out.append(Image.fromarray(np.ascontiguousarray(np.concatenate(list(image), 1)),
                                       "L"))
    return out


def composite(images, bands: Optional[Sequence[int]] = None) -> np.ndarray:
    """Images with bands ([B, C, H, W] or [C, H, W], any C) as pictures:
    the `bands` (3 indices: red, green, blue; or 1: gray) in their order,
    [B, 3 or 1, H, W]. With `bands` None, 1- and 3-channel images come back
    as they are and others are refused: a model's card says which bands make
    its picture (`RenderResult.composite`, `Model.input.composite`)."""
    batch = _batch(images)
    channels = batch.shape[1]
    if bands is None or len(bands) == 0:
        if channels in (1, 3):
            return batch
        raise ValueError(f"images of shape {batch.shape} have {channels} bands, and no "
                         "composite says which make the picture (a model card's "
                         "\"bands\": {\"composite\": [r, g, b]})")
    bands = [int(b) for b in bands]
    if len(bands) not in (1, 3):
        raise ValueError(f"composite {bands} must list 3 band indices (red, green, blue) "
                         "or 1 (gray)")
    for band in bands:
        if not 0 <= band < channels:
            raise ValueError(f"composite band {band} is out of range for images of "
                             f"{channels} bands (shape {batch.shape})")
    return batch[:, bands]


_composite = composite  # grid's argument of the same name hides it


def band_sheet(images, names: Optional[Sequence[str]] = None,
               rows: Optional[Sequence[str]] = None, **options):
    """Every band of `images` ([B, C, H, W] or [C, H, W]) as a gray panel,
    one row per image, labelled with the band's name (`names`, one per band;
    default "band k") after the image's row label (`rows`, one per image;
    default its index when there are several). Returns a PIL image; `options`
    as for `grid` (scale, padding, background)."""
    batch = _batch(images)
    count, channels = batch.shape[:2]
    names = list(names) if names else [f"band {k}" for k in range(channels)]
    if len(names) != channels:
        raise ValueError(f"band sheet has {len(names)} band names for {channels} bands")
    if rows is not None and len(rows) != count:
        raise ValueError(f"band sheet has {len(rows)} row labels for {count} images")
    labels = []
    for b in range(count):
        for name in names:
            if rows is not None:
                labels.append(f"{rows[b]} {name}")
            else:
                labels.append(f"{b}: {name}" if count > 1 else name)
    panels = batch.reshape(count * channels, 1, batch.shape[2], batch.shape[3])
    options.setdefault("columns", channels)
    return grid(panels, labels, **options)


def _rgb(image) -> "np.ndarray":
    """A PIL image as uint8 [H, W, 3] (alpha dropped onto white)."""
    Image, _, _ = _pil()
    if image.mode in ("LA", "RGBA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


@functools.lru_cache(maxsize=8)
def _label_font(pixels: int):
    """DejaVu Sans Mono at `pixels` pixels, or None when it is not installed."""
    _, _, ImageFont = _pil()
    try:
        return ImageFont.truetype(LABEL_FONT, pixels)
    except OSError:
        return None


def _label_width(text: str, s: int) -> int:
    """Pixels `text` takes at text scale `s`."""
    font = _label_font(_FONT_PIXELS * s)
    if font is not None:
        return math.ceil(font.getlength(text))
    _, _, ImageFont = _pil()
    return ImageFont.load_default().getbbox(text)[2] * s if text else 0


def _fit_label(text: str, s: int, box_w: int) -> str:
    """`text` as it fits `box_w` pixels at text scale `s`, as the CLI fits
    it: whole when it fits, else its start followed by "...", so that a cut
    label reads as cut; empty when not even "..." fits."""
    if _label_width(text, s) <= box_w:
        return text
    for keep in range(len(text) - 1, -1, -1):
        shorter = text[:keep].rstrip(" ") + _ELLIPSIS
        if _label_width(shorter, s) <= box_w:
            return shorter
    return ""


def _label_ink(text: str, s: int, box_w: int) -> "np.ndarray":
    """`text` at text scale `s` in a box `box_w` wide and one label row high:
    bool [12 s, box_w] ink, centred, shortened to fit (`_fit_label`) and
    clipped to the box (a label never reaches past its box)."""
    Image, ImageDraw, ImageFont = _pil()
    line_h = _LINE_PIXELS * s
    text = _fit_label(text, s, box_w)
    width = _label_width(text, s)
    x = max(0, (box_w - width) // 2)
    font = _label_font(_FONT_PIXELS * s)
    if font is not None:
        canvas = Image.new("L", (box_w, line_h), 0)
        draw = ImageDraw.Draw(canvas)
        draw.fontmode = "1"  # hard-edged ink, as the CLI draws it
        draw.text((x, _BASELINE_PIXELS * s), text, fill=255, font=font, anchor="ls")
        return np.asarray(canvas) > 127
    # Pillow's bitmap font, drawn at its own size and magnified.
    small = Image.new("L", (max(1, math.ceil(box_w / s)), _LINE_PIXELS), 0)
    ImageDraw.Draw(small).text((x // s, 1), text, fill=255, font=ImageFont.load_default())
    ink = np.asarray(small) > 127
    return ink.repeat(s, 0).repeat(s, 1)[:line_h, :box_w]


def grid(images, labels: Optional[Sequence[str]] = None, *,
         columns: Optional[int] = None, scale: Optional[int] = None,
         padding: int = 2, background: float = 1.0,
         composite: Optional[Sequence[int]] = None):
    """A contact sheet of `images` ([B, C, H, W] in [0, 1], or a list of PIL
    images) as one RGB PIL image, with `labels` (one per image) under the cells.
    Images of other than 1 or 3 channels (bands) need `composite`, the bands
    that make the picture (see `composite()`); without it they are refused.

    `scale` magnifies each cell (default: at least 112 pixels wide);
    `columns` defaults to one row up to 10 images, else a square. Labels are
    drawn as the CLI draws them (a sans-serif, DejaVu Sans Mono: see
    `LABEL_FONT`; a row 12 pixels high per text scale, the scale chosen from
    the cell's width as the CLI chooses it). Every label of the sheet has the
    same font size: the largest at which the longest label fits its cell
    less a margin on each side; a longer one is cut and ends in "...", and
    no label reaches past its margins, so that neighbouring labels never
    touch.
    """
    Image, _, _ = _pil()
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "mode"):
        cells = [_rgb(image) for image in images]
    else:
        cells = [_rgb(image) for image in to_pil(_composite(images, composite))]
    n = len(cells)
    if n == 0:
        raise ValueError("grid has nothing to show")
    if labels is not None and len(labels) != n:
        raise ValueError(f"grid has {n} images but {len(labels)} labels")
    height = max(c.shape[0] for c in cells)
    width = max(c.shape[1] for c in cells)
    if scale is None:
        scale = max(1, math.ceil(MIN_CELL_PIXELS / width))
    if scale < 1 or padding < 0:
        raise ValueError(f"grid needs scale >= 1 and padding >= 0, got {scale}, {padding}")
    if columns is None:
        columns = n if n <= 10 else math.ceil(math.sqrt(n))
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    cell_w, cell_h = width * scale, height * scale

    label_h = 0
    if labels is not None:
        labels = [str(label) for label in labels]
        # The CLI's choice (core/image.cc): 1 per 64 pixels of cell, at most
        # 4, lowered until the longest label fits inside the margins.
        s = max(1, min(4, cell_w // 64 + 1))
        while s > 1 and max(_label_width(l, s) for l in labels) > cell_w - 2 * s:
            s -= 1
        margin = min(s, cell_w // 4)
        label_h = _LINE_PIXELS * s

    ink = 0 if background >= 0.5 else 255
    sheet = np.full((padding + rows * (cell_h + label_h + padding),
                     padding + columns * (cell_w + padding), 3),
                    int(round(np.clip(background, 0.0, 1.0) * 255)), dtype=np.uint8)
    for i, cell in enumerate(cells):
        x0 = padding + (i % columns) * (cell_w + padding)
        y0 = padding + (i // columns) * (cell_h + label_h + padding)
        big = cell.repeat(scale, 0).repeat(scale, 1)
        sheet[y0:y0 + big.shape[0], x0:x0 + big.shape[1]] = big
        if labels is not None and labels[i]:
            box_w = cell_w - 2 * margin
            mask = _label_ink(labels[i], s, box_w)
            ly = y0 + cell_h
            sheet[ly:ly + label_h, x0 + margin:x0 + margin + box_w][mask] = ink
    return Image.fromarray(sheet, "RGB")


def png_bytes(image) -> bytes:
    """A PIL image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def from_png(data: bytes) -> np.ndarray:
    """A PNG decoded to float32 [C, H, W] in [0, 1]."""
    Image, _, _ = _pil()
    image = Image.open(io.BytesIO(data))
    image.load()
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
