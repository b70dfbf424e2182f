"""Renders that span several units or models, as `Client.render(units=...)`
and `Client.compare(...)` return them (the `featviz render ... --units` and
`featviz compare` commands of the CLI)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from featviz_client import images as _images

MIN_COMPARE_CELL_PIXELS = 256
"""Compare rows carry long labels (model@version, total, top class): cells
this wide keep them readable, as in `featviz compare`."""


def model_version_ref(model: str) -> str:
    """"name/2" -> "name@2", the server's spelling of a version; anything
    else as it is."""
    name, slash, version = model.rpartition("/")
    if not slash or not name or not version or "@" in model:
        return model
    return f"{name}@{version}"


def batch_term_value(result, batch: int) -> float:
    """The final value of the term on image `batch` of a unit render (the
    only terms with batch= there); NaN when there is none."""
    suffix = f"batch={batch})"
    for term in result.terms:
        text = term.term
        if text.endswith(suffix) and (len(text) == len(suffix) or
                                      text[-len(suffix) - 1] == " "):
            return float(term.final_value)
    return float("nan")


def _stack(pictures: Sequence[np.ndarray]) -> np.ndarray:
    """Pictures of different sizes or channel counts in one array: gray ones
    repeated into RGB beside RGB ones, smaller ones enlarged (nearest)."""
    channels = max(p.shape[1] for p in pictures)
    height = max(p.shape[2] for p in pictures)
    width = max(p.shape[3] for p in pictures)
    out = []
    for p in pictures:
        if p.shape[1] != channels:
            p = np.repeat(p, channels, axis=1)
        if p.shape[2:] != (height, width):
            rows = (np.arange(height) * p.shape[2] // height)
            cols = (np.arange(width) * p.shape[3] // width)
            p = p[:, :, rows][:, :, :, cols]
        out.append(p)
    return np.concatenate(out, 0)


@dataclass
class UnitRender:
    """Every listed unit of a layer rendered at once (`Client.render` with a
    `*` in the objective): unit `units[i]` is image i of `images`, and
    `values[i]` its term's value on the final image."""

    model: str
    model_version: str
    model_hash: str
    objective: str
    """The template as written, e.g. "channel(conv2, *)"."""
    layer: str
    kind: str
    """"channel" or "neuron"."""
    units: list[int]
    values: np.ndarray
    images: Optional[np.ndarray]
    """float32 [units, C, H, W] (with tensors)."""
    probs: Optional[np.ndarray]
    results: list = field(default_factory=list)
    """One RenderResult per request (at most 64 units each)."""
    class_names: list[str] = field(default_factory=list)
    composite: list[int] = field(default_factory=list)
    band_names: list[str] = field(default_factory=list)

    def labels(self) -> list[str]:
        """"conv2:5 0.83" per unit: the unit and its term's value."""
        return [f"{self.layer}:{u}" if math.isnan(v) else f"{self.layer}:{u} {v:.2f}"
                for u, v in zip(self.units, self.values)]

    def pictures(self) -> np.ndarray:
        """Every unit's picture, [units, 1 or 3, H, W] (composites for bands)."""
        return np.concatenate([r.pictures() for r in self.results], 0)

    def grid(self, labels: Optional[Sequence[str]] = None, **options):
        """One contact sheet labelled by unit (a PIL image; `options` as for
        `featviz_client.grid`)."""
        return _images.grid(self.pictures(), self.labels() if labels is None else labels,
                            **options)

    def band_grid(self, **options):
        """Images with bands: each unit's bands as gray panels, a row per unit."""
        rows = [f"{self.layer}:{u}" for u in self.units]
        if self.images is not None and self.composite:
            return _images.band_sheet(self.images, self.band_names, rows, **options)
        raise ValueError("band_grid needs image tensors of a model with bands")

    def show(self, path: Union[str, Path, None] = None, **options):
        """Writes the sheet to `path` when given; returns it (a PIL image)."""
        image = self.grid(**options)
        if path is not None:
            image.save(str(path), format="PNG")
        return image

    def _repr_png_(self) -> Optional[bytes]:
        try:
            return _images.png_bytes(self.grid())
        except (ImportError, ValueError):
            return None


@dataclass
class Comparison:
    """One objective rendered with the same seed and options on two models
    (`Client.compare`): `results[0]` and `results[1]`."""

    objective: str
    seed: int
    results: list
    labels: list[str]
    """"name@version" of each model (with the hash's start when equal)."""

    def top_classes(self, side: int) -> list[tuple[str, float]]:
        """Each image's top class name and probability on model `side`."""
        result = self.results[side]
        out = []
        for row in (result.probs if result.probs is not None else []):
            top = int(np.argmax(row))
            names = result.class_names
            out.append((names[top] if top < len(names) else str(top), float(row[top])))
        return out

    def layer_stats(self, side: int) -> dict[str, tuple[float, float]]:
        """Per objective layer: (mean over images and channels of the
        per-channel means, largest per-channel max)."""
        return {layer: (float(np.mean(mean)), float(np.max(mx)))
                for layer, (mean, mx) in self.results[side].layer_stats.items()}

    def rows(self) -> list[tuple[str, str, str]]:
        """The comparison table: objective total, each term's final value,
        the top classes, each layer's mean and max activation."""
        a, b = self.results
        rows = [("objective total", f"{a.final_total:.4g}", f"{b.final_total:.4g}")]
        for k, term in enumerate(a.terms):
            other = f"{b.terms[k].final_value:.4g}" if k < len(b.terms) else "-"
            rows.append((term.term, f"{term.final_value:.4g}", other))
        tops = [", ".join(f"{n} {p:.2f}" for n, p in self.top_classes(s)) for s in (0, 1)]
        rows.append(("top class", tops[0], tops[1]))
        stats = [self.layer_stats(0), self.layer_stats(1)]
        for layer in list(dict.fromkeys([*stats[0], *stats[1]])):
            for i, what in enumerate(("mean", "max")):
                cells = [f"{s[layer][i]:.4g}" if layer in s else "-" for s in stats]
                rows.append((f"{layer} {what}", cells[0], cells[1]))
        return rows

    def table(self) -> str:
        """`rows()` as aligned text with the two models as columns."""
        header = ("", *self.labels)
        rows = [header, *self.rows()]
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()
                         for r in rows) + "\n"

    def grid(self, **options):
        """Two labelled rows, one per model: "name@version total | top p"
        under each image (a PIL image)."""
        pictures, labels = [], []
        for side, result in enumerate(self.results):
            pictures.append(result.pictures())
            for name, prob in self.top_classes(side):
                labels.append(f"{self.labels[side]} {result.final_total:.4g} | {name} {prob:.2f}")
        stacked = _stack(pictures)
        options.setdefault("columns", max(p.shape[0] for p in pictures))
        options.setdefault("scale", max(1, math.ceil(MIN_COMPARE_CELL_PIXELS /
                                                     stacked.shape[3])))
        return _images.grid(stacked, labels, **options)

    def show(self, path: Union[str, Path, None] = None, **options):
        """Writes the sheet to `path` when given; returns it (a PIL image)."""
        image = self.grid(**options)
        if path is not None:
            image.save(str(path), format="PNG")
        return image

    def to_dict(self) -> dict[str, Any]:
        """The comparison as plain data: one entry per model."""
        models = []
        for side, result in enumerate(self.results):
            models.append({
                "label": self.labels[side], "model": result.model,
                "model_version": result.model_version, "model_hash": result.model_hash,
                "final_total": result.final_total,
                "terms": [{"term": t.term, "weight": t.weight, "final_value": t.final_value}
                          for t in result.terms],
                "top_classes": self.top_classes(side),
                "layers": {k: {"mean": m, "max": x}
                           for k, (m, x) in self.layer_stats(side).items()},
            })
        return {"objective": self.objective, "seed": self.seed, "models": models}

    def _repr_png_(self) -> Optional[bytes]:
        try:
            return _images.png_bytes(self.grid())
        except (ImportError, ValueError):
            return None
