"""Labelled contact sheets from featviz_client.images.grid, without a server.

The labels must look like the CLI's (core/image.cc): a sans-serif, one font
size per sheet, a row 12 pixels high per text scale, and never two labels
running into each other. Needs Pillow (python3-pil) and DejaVu Sans Mono
(fonts-dejavu-core, which scripts/setup installs).
"""

from __future__ import annotations

import numpy as np
import pytest

from featviz_client import grid
from featviz_client import images as featviz_images

GRAY = np.full((1, 28, 28), 0.8, dtype=np.float32)


def ink(sheet) -> np.ndarray:
    """bool [H, W]: the black pixels of an RGB sheet (the pictures are gray)."""
    return np.all(np.asarray(sheet) == 0, axis=2)


def label_band(sheet, padding: int, cell: int) -> np.ndarray:
    """The ink of the first row's label band."""
    return ink(sheet)[padding + cell:, :]


def ink_rows(band: np.ndarray, x0: int, x1: int) -> tuple[int, int]:
    rows = np.flatnonzero(band[:, x0:x1].any(axis=1))
    return int(rows[0]), int(rows[-1])


def ink_columns(band: np.ndarray, x0: int, x1: int) -> tuple[int, int]:
    columns = np.flatnonzero(band[:, x0:x1].any(axis=0))
    return int(columns[0]), int(columns[-1])


def test_labels_are_dejavu_sans_mono_like_the_clis_sans_serif():
    font = featviz_images._label_font(10)
    assert font is not None, "DejaVu Sans Mono is missing: apt-get install fonts-dejavu-core"
    assert font.getname()[0] == "DejaVu Sans Mono"
    # Monospaced: labels of the same length take the same width.
    assert font.getlength("iiii") == font.getlength("WWWW")


def test_a_label_row_is_as_high_as_the_clis():
    # 28x28 pictures magnified 4 times: the CLI's text scale is 2, its label
    # row 24 pixels, and its sheet of two 236x144 with padding 4.
    sheet = grid(np.stack([GRAY, GRAY]), labels=["3 0.99", "7 1.00"], padding=4)
    assert sheet.size == (236, 144)


def test_every_label_of_a_sheet_has_one_font_size():
    labels = ["SAD", "SURPRISE", "SAD"]
    padding, cell = 2, 112
    sheet = grid(np.stack([GRAY] * 3), labels=labels, padding=padding)
    band = label_band(sheet, padding, cell)
    spans = [(padding + i * (cell + padding), padding + i * (cell + padding) + cell)
             for i in range(3)]
    # Capitals: the same ink rows whatever the label's length.
    assert len({ink_rows(band, x0, x1) for x0, x1 in spans}) == 1
    # The same text comes out the same, pixel for pixel.
    (a0, a1), (c0, c1) = spans[0], spans[2]
    assert np.array_equal(band[:, a0:a1], band[:, c0:c1])


def test_labels_of_equal_length_take_equal_width():
    padding, cell = 2, 112
    sheet = grid(np.stack([GRAY] * 2), labels=["x1 0.11x", "xW 9.99x"], padding=padding)
    band = label_band(sheet, padding, cell)
    first = ink_columns(band, padding, padding + cell)
    second = ink_columns(band, 2 * padding + cell, 2 * (padding + cell))
    assert first == second


@pytest.mark.parametrize("font", ["dejavu", "pillow_default"])
@pytest.mark.parametrize("padding", [0, 2])
def test_labels_too_long_for_their_cells_never_run_into_each_other(
        font, padding, monkeypatch):
    if font == "pillow_default":
        monkeypatch.setattr(featviz_images, "_label_font", lambda pixels: None)
    cell = 28
    sheet = grid(np.stack([GRAY] * 3), labels=["h_stripes 1.00"] * 3, scale=1,
                 padding=padding)
    band = label_band(sheet, padding, cell)
    assert band.any(), "no label drawn"
    for i in range(3):
        x0 = padding + i * (cell + padding)
        # Each label stays inside its cell, a blank column short of each edge.
        assert not band[:, x0:x0 + 1].any() and not band[:, x0 + cell - 1:x0 + cell].any()
        assert band[:, x0:x0 + cell].any()


def test_the_fallback_font_keeps_one_size_per_sheet(monkeypatch):
    monkeypatch.setattr(featviz_images, "_label_font", lambda pixels: None)
    padding, cell = 2, 112
    sheet = grid(np.stack([GRAY] * 2), labels=["SAD", "SURPRISE"], padding=padding)
    band = label_band(sheet, padding, cell)
    assert ink_rows(band, padding, padding + cell) == \
        ink_rows(band, 2 * padding + cell, 2 * (padding + cell))


@pytest.mark.parametrize("font", ["dejavu", "pillow_default"])
def test_a_label_cut_to_fit_ends_in_an_ellipsis_like_the_clis(font, monkeypatch):
    if font == "pillow_default":
        monkeypatch.setattr(featviz_images, "_label_font", lambda pixels: None)
    padding, cell, label = 2, 28, "h_stripes 1.00"

    def band_of(text):
        sheet = grid(GRAY[None], labels=[text], scale=1, padding=padding)
        return label_band(sheet, padding, cell)[:, padding:padding + cell]

    cut = band_of(label)
    assert cut.any(), "no label drawn"
    # What is drawn is the label's start followed by "...", drawn whole.
    shortened = [label[:keep].rstrip(" ") + "..." for keep in range(len(label))]
    assert any(np.array_equal(cut, band_of(text)) for text in shortened)
    # A label that fits is drawn as it is, not shortened.
    assert not any(np.array_equal(band_of("h_s"), band_of(text)) for text in shortened)
