"""Results of the featviz.v1.Circuits service as numpy: datasets, activation
maps, attribution scores, detector circuits, top dataset examples and unit
labels.

`Client.datasets()`, `activations()`, `attribute()`, `find_circuit()`,
`top_examples()` and `label_units()` return these; tensors are float32 numpy arrays, index lists
int64 arrays, PNGs bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """A dataset the server hosts (ListDatasets)."""

    name: str
    size: int
    image_shape: tuple[int, ...]
    """[C, H, W] of every image."""
    class_names: list[str]
    class_counts: list[int]
    source: str
    """"idx" (MNIST-format files), "png" (folders of PNGs), "npy" (an
    operator's arrays); for an upload the format it was sent in ("npy",
    "npz", "idx")."""
    owner: str = ""
    """Who uploaded it; empty for the operator's datasets."""
    uploaded: bool = False
    """True for a dataset sent with upload_dataset (its owner or an admin may
    delete it)."""
    size_bytes: int = 0
    """Bytes its images and labels take in the server's memory."""


@dataclass(frozen=True)
class ChannelStats:
    """One channel's statistics over the images and positions."""

    channel: int
    mean: float
    max: float
    fraction_active: float


@dataclass
class LayerActivations:
    """One layer's activations (ComputeActivations)."""

    layer: str
    channels: np.ndarray
    """int64 [K]: the channels returned, in order."""
    maps: np.ndarray
    """float32 [B, K, h, w] (spatial layers) or [B, K] (flat ones)."""
    stats: list[ChannelStats]
    overlay_png: list[bytes] = field(default_factory=list)
    """With overlay_png: B x K PNGs, image-major."""


@dataclass
class Activations:
    """ComputeActivations' answer: `layers` maps each layer path to its maps."""

    model: str
    model_version: str
    model_hash: str
    layers: dict[str, LayerActivations]
    indices: np.ndarray
    """int64 dataset indices of the images (empty for client-sent images)."""
    labels: np.ndarray
    """int64 labels (-1 for none)."""

    def __getitem__(self, layer: str) -> np.ndarray:
        """The maps of `layer`: activations["conv2"] is float32 [B, K, h, w]."""
        return self.layers[layer].maps


@dataclass
class Attribution:
    """Attribute's answer: each channel's contribution to `target`."""

    model: str
    model_version: str
    model_hash: str
    target: str
    layer: str
    channels: np.ndarray
    """int64 [K]: every channel, highest score first."""
    scores: np.ndarray
    """float64 [K]: gradient x activation, averaged over the images."""
    per_image: np.ndarray
    """float32 [B, K]: each image's score of each channel (channel order)."""
    linear_path: bool
    direct_weights: Optional[np.ndarray]
    """float64 [K] when linear_path, in `channels` order."""
    gradcam: Optional[np.ndarray]
    """float32 [B, H, W] in [0, 1] when asked for."""
    gradcam_png: list[bytes]
    images: int
    indices: np.ndarray


@dataclass
class Detector:
    """One detector channel of a class circuit."""

    channel: int
    score: float
    job_id: str
    """The job rendering channel(layer, channel); "" with render=False."""
    activation_map: np.ndarray
    """float32 [h, w] on the class's example image."""
    activation_png: bytes
    example_activation: float


@dataclass
class ClassCircuit:
    """One class: its top detectors in the layer."""

    class_index: int
    class_name: str
    class_job_id: str
    detectors: list[Detector]
    example_index: int
    example_png: bytes
    images_scored: int


@dataclass
class Circuit:
    """FindCircuit's answer: one ClassCircuit per class, in request order."""

    model: str
    model_version: str
    model_hash: str
    layer: str
    dataset: str
    classes: list[ClassCircuit]

    def job_ids(self) -> list[str]:
        """Every render job the circuit queued (class and detector
        visualisations), each once, in order; wait for them with Client.wait."""
        ids: list[str] = []
        for c in self.classes:
            for job_id in [c.class_job_id] + [d.job_id for d in c.detectors]:
                if job_id and job_id not in ids:
                    ids.append(job_id)
        return ids


@dataclass
class UnitExamples:
    """The dataset images that excite one channel most."""

    channel: int
    indices: np.ndarray
    """int64 dataset indices, highest activation first."""
    values: np.ndarray
    """float32: the unit's value on each."""
    labels: np.ndarray
    png: list[bytes]


@dataclass
class TopExamples:
    """TopExamples' answer: one UnitExamples per channel, in request order."""

    model: str
    model_version: str
    model_hash: str
    layer: str
    dataset: str
    units: list[UnitExamples]
    cached: bool


@dataclass(frozen=True)
class ClassShare:
    """One class's share of a unit's top examples."""

    class_index: int
    class_name: str
    count: int
    """Top examples of the class."""
    fraction: float
    """count / top_n."""


@dataclass(frozen=True)
class ClassScore:
    """One class's attribution score for a unit: the mean gradient x
    activation of the unit for the class's logit over images of the class."""

    class_index: int
    class_name: str
    score: float


@dataclass
class UnitLabel:
    """A unit's automatic label (LabelUnits; docs/trust.md, "Unit labels")."""

    layer: str
    channel: int
    label: str
    """"fires on 7s: 82 % of its top 100"."""
    selectivity: float
    """Class selectivity index in [0, 1]: 0 when the top examples' classes
    are spread as the dataset's are, 1 when they are all one class."""
    classes: list[ClassShare]
    """The classes of its top examples, largest share first."""
    attribution: list[ClassScore]
    """The classes it feeds most (at most 3), highest first; empty for a
    model without class logits."""

    def share(self, class_index: int) -> float:
        """The fraction of its top examples of class `class_index`."""
        for c in self.classes:
            if c.class_index == class_index:
                return c.fraction
        return 0.0


@dataclass
class UnitLabels:
    """label_units' answer: the units of `layers`, in channel order per
    layer, or with a label sorted by their share of it."""

    model: str
    model_version: str
    model_hash: str
    dataset: str
    top_n: int
    """Top examples each unit's shares are over."""
    layers: list[str]
    units: list[UnitLabel]
    cached: bool
    """True when every layer's dataset pass was already cached."""

    def __iter__(self):
        return iter(self.units)

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> UnitLabel:
        return self.units[index]
