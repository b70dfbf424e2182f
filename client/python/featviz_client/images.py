"""Pictures from featviz arrays: PIL images for any channel count, labelled grids,
the composite and band sheet of images with bands (RGB + NIR, multispectral).

Arrays follow the server's layout, float32 [B, C, H, W] (or one [C, H, W])
in [0, 1]; `hwc` turns them into [B, H, W, C] for matplotlib. Everything that
makes a PIL image needs Pillow (Debian: python3-pil).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Optional

import numpy as np

MIN_CELL_PIXELS = 112
"""Grid cells are magnified until they are at least this wide (a 28x28 digit
becomes 112x112), as in the `featviz render` CLI."""


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


def _label_bitmap(text: str, font) -> "np.ndarray":
    """`text` drawn at the font's own size: bool [h, w] ink mask (may be empty)."""
    Image, ImageDraw, _ = _pil()
    left, top, right, bottom = font.getbbox(text) if text else (0, 0, 0, 0)
    if right <= left or bottom <= top:
        return np.zeros((0, 0), dtype=bool)
    canvas = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(canvas).text((-left, -top), text, fill=255, font=font)
    return np.asarray(canvas) > 127


def grid(images, labels: Optional[Sequence[str]] = None, *,
         columns: Optional[int] = None, scale: Optional[int] = None,
         padding: int = 2, background: float = 1.0,
         composite: Optional[Sequence[int]] = None):
    """A contact sheet of `images` ([B, C, H, W] in [0, 1], or a list of PIL
    images) as one RGB PIL image, with `labels` (one per image) under the cells.
    Images of other than 1 or 3 channels (bands) need `composite`, the bands
    that make the picture (see `composite()`); without it they are refused.

    `scale` magnifies each cell (default: at least 112 pixels wide);
    `columns` defaults to one row up to 10 images, else a square. Every label
    of the sheet has the same font size: the largest at which the longest
    label fits its cell (longer ones are clipped).
    """
    Image, _, ImageFont = _pil()
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

    bitmaps = []
    text_scale = 0
    if labels is not None:
        font = ImageFont.load_default()
        bitmaps = [_label_bitmap(str(label), font) for label in labels]
        widest = max((b.shape[1] for b in bitmaps), default=0)
        text_scale = max(1, min(4, cell_w // 64 + 1))
        while text_scale > 1 and widest * text_scale > cell_w:
            text_scale -= 1
    line_h = max((b.shape[0] for b in bitmaps), default=0)
    label_h = (line_h + 4) * text_scale if labels is not None else 0

    ink = 0 if background >= 0.5 else 255
    sheet = np.full((padding + rows * (cell_h + label_h + padding),
                     padding + columns * (cell_w + padding), 3),
                    int(round(np.clip(background, 0.0, 1.0) * 255)), dtype=np.uint8)
    for i, cell in enumerate(cells):
        x0 = padding + (i % columns) * (cell_w + padding)
        y0 = padding + (i // columns) * (cell_h + label_h + padding)
        big = cell.repeat(scale, 0).repeat(scale, 1)
        sheet[y0:y0 + big.shape[0], x0:x0 + big.shape[1]] = big
        if labels is not None and bitmaps[i].size:
            mask = bitmaps[i].repeat(text_scale, 0).repeat(text_scale, 1)[:, :cell_w]
            lx = x0 + max(0, (cell_w - mask.shape[1]) // 2)
            ly = y0 + cell_h + 2 * text_scale
            region = sheet[ly:ly + mask.shape[0], lx:lx + mask.shape[1]]
            region[mask[:region.shape[0], :region.shape[1]]] = ink
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
