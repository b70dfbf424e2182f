"""The featviz.v1 client: models, and renders whose tensors come back as numpy.

Everything the server can refuse raises `FeatvizError`, which carries the gRPC
status code's name ("NOT_FOUND") and the server's message, which names the
offending field or value.

The address may be any gRPC target; one naming several replicas
("dns:///featviz.lab.svc:8980", "ipv4:10.0.0.1:8980,10.0.0.2:8980") is
balanced round-robin. A job lives on the replica that accepted it; servers
run with --advertise_address give it an id naming that replica
("17@10.0.0.2:8980"), and `get_job`, `wait` and `cancel_job` go straight there.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import grpc
import numpy as np

from featviz_client import images as _images
from featviz_client import models as _models
from featviz_client import units as _units
from featviz_client.multi_render import (Comparison, UnitRender, batch_term_value,
                                         model_version_ref)
from featviz_client.circuits import (Activations, Attribution, ChannelStats, Circuit,
                                     ClassCircuit, ClassScore, ClassShare, Dataset,
                                     Detector, LayerActivations, TopExamples,
                                     UnitExamples, UnitLabel, UnitLabels)
from featviz_client._stubs import (circuits_pb2, circuits_pb2_grpc, featviz_pb2,
                                   featviz_pb2_grpc, health_pb2, health_pb2_grpc)

DEFAULT_ADDRESS = "127.0.0.1:8980"
"""Used when neither the `address` argument nor $FEATVIZ_SERVER is given."""

# Results carry float32 image batches; gRPC's default 4 MiB is too small for
# a batch of large RGB images.
_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

_PARAMETERIZATIONS = {
    None: featviz_pb2.PARAMETERIZATION_UNSPECIFIED,
    "fft": featviz_pb2.PARAMETERIZATION_FFT,
    "pixel": featviz_pb2.PARAMETERIZATION_PIXEL,
    "maco": featviz_pb2.PARAMETERIZATION_MACO,
}
# Old argument names of render/submit -> the vocabulary's (README).
_DEPRECATED_RENDER_ARGS = {"param": "parameterization", "decay": "decay_power"}
_TERM_FIELDS = frozenset({"layer", "index", "x", "y", "vector", "param", "batch",
                          "output", "reference"})

ObjectiveSpec = Union[str, Mapping[str, Any], Sequence[Mapping[str, Any]],
                  "featviz_pb2.Objective"]
TransformSpec = Union[str, Sequence[tuple], "featviz_pb2.Transforms"]


class FeatvizError(Exception):
    """A call the server (or the client, before sending) refused.

    `code` is the gRPC status code's name, e.g. "INVALID_ARGUMENT";
    `message` is the server's description, naming the offending value.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def _from_rpc(cls, err: grpc.RpcError) -> "FeatvizError":
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else None
        return cls(code.name if code is not None else "UNKNOWN",
                   details or str(err))


@dataclass(frozen=True)
class Progress:
    """One progress event of a render: steps done and each term's value.

    With `render(..., preview=True)` each event also carries `preview_png`,
    a PNG of the current images (a grid when the batch has several); see
    `preview()`.
    """

    step: int
    total_steps: int
    term_values: tuple[float, ...]
    preview_png: bytes = b""

    def preview(self):
        """The preview as a PIL image, or None when the event carries none."""
        if not self.preview_png:
            return None
        return _images.to_pil(_images.from_png(self.preview_png))[0]

    def _repr_png_(self) -> Optional[bytes]:
        return self.preview_png or None


@dataclass(frozen=True)
class TermOutcome:
    """One objective term: canonical text, weight, value on the final images."""

    term: str
    weight: float
    final_value: float


@dataclass(frozen=True)
class AccentuationOutcome:
    """What feature accentuation did to one image (docs/trust.md): the
    objective's unit (its first positive neuron, channel, logit or prob
    term) on the seed image and on the picture, and the root mean square
    pixel distance between them (images in [0, 1])."""

    seed_value: float
    value: float
    pixel_distance: float

    @property
    def factor(self) -> float:
        """value / seed_value (nan when the seed's value is not positive)."""
        return self.value / self.seed_value if self.seed_value > 0 else float("nan")


def _show(image, path: Union[str, Path, None]):
    """Writes `image` (a PIL image) to `path` as a PNG when given, displays it
    when running in IPython/Jupyter otherwise; returns it."""
    if path is not None:
        image.save(str(path), format="PNG")
        return image
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return image
    if get_ipython() is not None:
        display(image)
    return image


@dataclass(frozen=True)
class Exemplar:
    """A dataset example beside a picture: its index, the unit's value on it
    (spatial max, logit or probability), its label (-1 for none), the image
    as a PNG and the unit's activation map over it (b"" for classes and flat
    layers)."""

    index: int
    value: float
    label: int
    png: bytes
    activation_png: bytes


@dataclass(frozen=True)
class Exemplars:
    """The dataset examples that drive a render's unit most, highest first
    (render(exemplars=N)). `cached`: the server had the dataset pass."""

    dataset: str
    unit: str
    examples: list[Exemplar]
    cached: bool

    def grid(self, **options):
        """The exemplars as one contact sheet (a PIL image): a row of the
        images labelled `#index value (label)`, and under it, for a unit on a
        spatial layer, a row of the unit's activation map over each, as the
        CLI's x.exemplars.png. `options` are `featviz_client.grid`'s."""
        if not self.examples:
            raise ValueError("no exemplars to show")
        rgb = [_images.from_png(e.png) for e in self.examples]
        rgb = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in rgb]
        labels = [f"#{e.index} {e.value:.3g}" + (f" ({e.label})" if e.label >= 0 else "")
                  for e in self.examples]
        maps = [e.activation_png for e in self.examples if e.activation_png]
        if len(maps) == len(self.examples):
            rgb += [_images.from_png(m)[:3] for m in maps]
            labels += ["map"] * len(maps)
        options.setdefault("columns", len(self.examples))
        return _images.grid(np.stack(rgb), labels, **options)

    def show(self, path: Union[str, Path, None] = None, **options):
        """`grid()`, written to `path` (a PNG) when given, displayed in
        IPython/Jupyter otherwise; returns it."""
        image = self.grid(**options)
        return _show(image, path)


@dataclass(frozen=True)
class LayerPathSimilarity:
    """Path similarity at one layer (docs/trust.md): `score` in [0, 1]
    places the picture's `similarity` (Spearman with the top examples' mean
    channel profile) between `random_similarity` (0) and
    `natural_similarity` (1)."""

    layer: str
    score: float
    similarity: float
    natural_similarity: float
    random_similarity: float


@dataclass(frozen=True)
class PathSimilarity:
    """The reliability check of one picture (render(path_similarity=True)):
    a picture whose path through the network is unlike that of the natural
    images driving the same unit scores low and is not `reliable`."""

    score: float
    threshold: float
    reliable: bool
    layers: list[LayerPathSimilarity]

    def __str__(self) -> str:
        verdict = "reliable" if self.reliable else "FLAGGED"
        per_layer = ", ".join(f"{l.layer} {l.score:.2f}" for l in self.layers)
        return (f"path similarity {self.score:.2f} ({verdict}, threshold "
                f"{self.threshold:g}): {per_layer}")


@dataclass
class RenderResult:
    """The outcome of `Client.render`.

    Arrays are float32. `images` is [B, C, H, W] in [0, 1] (None unless
    tensors were asked for); `logits` and `probs` are [B, classes]; `trace`
    is [terms, steps], row i the value of `terms[i]` at each step;
    `layer_stats` maps each layer the objective names to its ([B, C] spatial
    mean, [B, C] spatial max) of every channel.

    The objective, three ways: `objective_per_image` (Σ weight ×
    final_value, the final images without transforms), the same at the last
    step with transforms (`objective_at_last_step`, where `on_progress`
    ended), and `final_total`, the quantity maximised: summed over the
    images, so that an image's gradient does not depend on its batch.
    """

    model: str
    model_version: str
    model_hash: str
    objective: str
    seed: int
    steps: int
    transforms: str
    terms: list[TermOutcome]
    final_total: float
    images: Optional[np.ndarray]
    png: list[bytes]
    logits: Optional[np.ndarray]
    probs: Optional[np.ndarray]
    trace: np.ndarray
    layer_stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    job_id: str = ""
    """The job's id ("17@10.0.0.2:8980" names the replica that ran it)."""

    linear_mode: str = ""
    """How the server computed linear layers: "invariant", "blocked" or
    "rowwise" (the images are bitwise the same alone and batched) or "plain" (they may differ
    within float rounding; featviz-server --linear_mode)."""

    precision: str = ""
    """The arithmetic of the steps: "fp32", "bf16" or "tf32" (the request's,
    or the server's default)."""

    class_names: list[str] = field(default_factory=list)
    """The model's class names (logit order), for labels."""

    transparency: Optional[np.ndarray] = None
    """MaCo only: the transparency map, float32 [B, C, H, W] (with tensors):
    the absolute gradient of the objective with respect to each image,
    summed over the steps; None for other parameterisations."""

    transparency_png: list[bytes] = field(default_factory=list)
    """MaCo only: one PNG per image of the transparency map (with png)."""

    maco_magnitude: str = ""
    """MaCo only: where the fixed magnitude came from ("dataset mnist (2000
    images)" or "1/f")."""

    composite: list[int] = field(default_factory=list)
    """Images with bands (a model of other than 1 or 3 input channels, or
    whose card has "bands"): the bands the pictures show as red, green, blue
    (3) or gray (1). Empty when the images are shown as they are."""

    band_names: list[str] = field(default_factory=list)
    """With `composite`: every band's name."""

    band_png: list[bytes] = field(default_factory=list)
    """With `composite` (and png): one PNG per image, a gray panel per band
    labelled with its name (see `band_grid`)."""

    accentuation: list[AccentuationOutcome] = field(default_factory=list)
    """With `accentuate=`: one per image, how far the picture moved from its
    seed and how much it raised the unit. Empty otherwise."""

    exemplars: Optional[Exemplars] = None
    """With exemplars=N: the dataset examples driving the objective's unit."""

    path_similarity: list[PathSimilarity] = field(default_factory=list)
    """With path_similarity=True: one check per image (docs/trust.md)."""

    @property
    def images_hwc(self) -> Optional[np.ndarray]:
        """`images` as [B, H, W, C] (for matplotlib's imshow), or None."""
        pixels = self._pixels()
        return None if pixels is None else _images.hwc(pixels)

    def _pixels(self) -> Optional[np.ndarray]:
        """`images`, else the PNGs decoded to float32 [B, C, H, W]."""
        if self.images is not None:
            return self.images
        if self.png:
            return np.stack([_images.from_png(data) for data in self.png])
        return None

    def labels(self) -> list[str]:
        """Each image's top class and its probability ("7 0.99")."""
        if self.probs is None:
            pixels = self._pixels()
            return [str(i) for i in range(0 if pixels is None else len(pixels))]
        out = []
        for row in self.probs:
            top = int(np.argmax(row))
            name = self.class_names[top] if top < len(self.class_names) else str(top)
            out.append(f"{name} {row[top]:.2f}")
        return out

    def pictures(self) -> np.ndarray:
        """The images as pictures, float32 [B, 1 or 3, H, W]: `images` (their
        `composite` when they have bands), else the PNGs decoded."""
        if self.images is not None:
            return _images.composite(self.images, self.composite or None)
        pixels = self._pixels()
        if pixels is None:
            raise ValueError("the result carries no images (render with png or tensor)")
        return pixels  # the server's PNGs: pictures already

    def to_pil(self) -> list:
        """The images as PIL images, one per batch entry ("L" or "RGB"; the
        composite for images with bands).

        Converts `images` when present, otherwise decodes `png`. Raises
        ImportError without Pillow.
        """
        return _images.to_pil(self.pictures())

    def grid(self, labels: Optional[Sequence[str]] = None, **options):
        """The images as one labelled contact sheet (a PIL image; the
        composite for images with bands). `labels` defaults to each image's
        top class and probability; `options` are `featviz_client.grid`'s
        (columns, scale, padding, background)."""
        return _images.grid(self.pictures(), self.labels() if labels is None else labels,
                            **options)

    def band_grid(self, rows: Optional[Sequence[str]] = None, **options):
        """Images with bands: every band as a gray panel labelled with its
        name, one row per image (a PIL image; `options` as for `grid`).
        Raises ValueError for images without bands."""
        if not self.composite:
            raise ValueError("the result's images have no bands (the model takes 1 or 3 "
                             "channels and its card names no bands)")
        if self.images is not None:
            return _images.band_sheet(self.images, self.band_names, rows, **options)
        if not self.band_png:
            raise ValueError("the result carries neither image tensors nor band PNGs")
        sheets = np.stack([_images.from_png(data) for data in self.band_png])
        return _images.grid(sheets, list(rows) if rows is not None else None, columns=1,
                            scale=1, padding=0)

    def show(self, path: Union[str, Path, None] = None, **options):
        """Shows the labelled grid: writes it to `path` (a PNG) when given,
        displays it when running in IPython/Jupyter, and returns it (a PIL
        image). `options` as for `grid`."""
        image = self.grid(**options)
        return _show(image, path)

    @property
    def objective_per_image(self) -> float:
        """Σ weight × final_value: the objective per image on the final images."""
        return sum(t.weight * t.final_value for t in self.terms)

    @property
    def objective_at_last_step(self) -> Optional[float]:
        """Σ weight × the trace's last value (with transforms); None without a trace."""
        if self.trace.size == 0 or self.trace.shape[0] != len(self.terms):
            return None
        return float(sum(t.weight * float(row[-1]) for t, row in zip(self.terms, self.trace)))

    def _repr_png_(self) -> Optional[bytes]:
        """Jupyter's rich display: the labelled grid."""
        try:
            return _images.png_bytes(self.grid())
        except (ImportError, ValueError):
            return None



def _unit_layers(model) -> list[str]:
    """The layers label_units labels when none is named, as `featviz units`
    chooses them: every tappable convolution and linear layer with channels,
    less the class logits (the last of them, when as wide as the classes)."""
    out: list[str] = []
    logits_last = False
    for layer in model.layers:
        conv = "Conv" in layer.kind and len(layer.output_shape) == 4
        linear = layer.kind == "Linear" and (
            len(layer.output_shape) == 2 or layer.layout == "tokens")
        if not (conv or linear) or not layer.tappable or layer.channels < 1:
            continue
        logits_last = (bool(model.logits_output) and linear
                       and layer.channels == len(model.class_names))
        out.append(layer.path)
    if logits_last:
        out.pop()
    return out

class Client:
    """A connection to one featviz server. Use as a context manager or `close()`."""

    def __init__(self, address: Optional[str] = None, *,
                 token: Optional[str] = None,
                 token_file: Optional[str] = None,
                 tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None,
                 tls_key: Optional[str] = None) -> None:
        """Connects (lazily) to `address`, else $FEATVIZ_SERVER, else 127.0.0.1:8980.

        `address` is "host:port" or any gRPC target; calls are balanced
        round-robin over every address it resolves to. The bearer token is
        `token`, else the first line of `token_file`, else $FEATVIZ_TOKEN; it
        goes with every call. `tls_ca` (a PEM file)
        means TLS, verifying the server against it; `tls_cert` and `tls_key`
        (PEM files) add a client certificate (mTLS).
        """
        self.address = address or os.environ.get("FEATVIZ_SERVER") or DEFAULT_ADDRESS
        if token is None and token_file:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        if token is None:
            token = os.environ.get("FEATVIZ_TOKEN", "").strip()
        # Plain metadata rather than call credentials: gRPC sends those only
        # over TLS, and a loopback server takes tokens in plaintext.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if tls_ca or tls_cert:
            def read(path):
                with open(path, "rb") as f:
                    return f.read()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read(tls_ca) if tls_ca else None,
                private_key=read(tls_key) if tls_key else None,
                certificate_chain=read(tls_cert) if tls_cert else None)
        else:
            credentials = None
        self._credentials = credentials
        self._channel = self._make_channel(self.address)
        self._stub = featviz_pb2_grpc.VisualizerStub(self._channel)
        self._replicas: dict = {}  # replica address -> (channel, stub)
        self._circuits = circuits_pb2_grpc.CircuitsStub(self._channel)
        self._class_names: dict[str, list[str]] = {}

    def _make_channel(self, target: str) -> grpc.Channel:
        """A channel to `target` with this client's credentials (replicas too)."""
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                   # Spread calls over every resolved address; gRPC's
                   # default, pick_first, sends them all to one.
                   ("grpc.lb_policy_name", "round_robin")]
        if self._credentials is not None:
            return grpc.secure_channel(target, self._credentials, options=options)
        return grpc.insecure_channel(target, options=options)

    def _stub_for(self, job_id: str):
        """The stub for calls about `job_id`: its replica's, when it names one."""
        replica = job_id.partition("@")[2]
        if not replica:
            return self._stub
        if replica not in self._replicas:
            channel = self._make_channel(replica)
            self._replicas[replica] = (channel, featviz_pb2_grpc.VisualizerStub(channel))
        return self._replicas[replica][1]

    def close(self) -> None:
        """Closes the channels; the client cannot be used afterwards."""
        self._channel.close()
        for channel, _ in self._replicas.values():
            channel.close()
        self._replicas.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def list_models(self, *, timeout: Optional[float] = None) -> list:
        """Every hosted model (featviz.v1.Model messages), ordered by name."""
        models = []
        request = featviz_pb2.ListModelsRequest()
        while True:
            response = self._call(self._stub.ListModels, request, timeout)
            models.extend(response.models)
            if not response.next_page_token:
                return models
            request.page_token = response.next_page_token

    def models(self, *, timeout: Optional[float] = None) -> list[_models.ModelStatus]:
        """Every served model version with whether it is in memory: its state
        ("loaded", "unloaded", "loading", "failed"), the bytes a loaded copy
        takes, and when it was last used (featviz_client.models)."""
        return [_models.model_status(m) for m in self.list_models(timeout=timeout)]

    def models_table(self, *, timeout: Optional[float] = None) -> str:
        """models() as the aligned table `featviz models` prints."""
        return _models.table(self.models(timeout=timeout))

    def get_model(self, name: str, *, timeout: Optional[float] = None):
        """The hosted model `name` (a featviz.v1.Model); NOT_FOUND when unknown."""
        return self._call(self._stub.GetModel,
                          featviz_pb2.GetModelRequest(name=name), timeout)

    def layers(self, name: str, *, timeout: Optional[float] = None) -> list:
        """The layer catalogue (featviz.v1.Layer messages) of model `name`."""
        return list(self.get_model(name, timeout=timeout).layers)

    def render(self, model: str, objective: ObjectiveSpec, *,
               steps: Optional[int] = None,
               size: Optional[int] = None,
               batch: Optional[int] = None,
               parameterization: Optional[str] = None,
               seed: Optional[int] = None,
               lr: Optional[float] = None,
               precision: Optional[str] = None,
               decay_power: Optional[float] = None,
               transforms: TransformSpec = "default",
               init_image: Optional[np.ndarray] = None,
               maco_dataset: Optional[str] = None,
               references: Sequence[np.ndarray] = (),
               accentuate: Union[int, tuple, np.ndarray, None] = None,
               accentuate_layer: str = "",
               accentuate_weight: float = 0.0,
               png: bool = True,
               tensor: bool = True,
               progress_every: Optional[int] = None,
               preview: bool = False,
               on_progress: Optional[Callable[[Progress], Any]] = None,
               timeout: Optional[float] = None,
               units: Union[str, int, Sequence[int], None] = None,
               exemplars: int = 0,
               path_similarity: bool = False,
               trust_dataset: str = "",
               **deprecated: Any) -> Union[RenderResult, UnitRender]:
        """Renders images that maximise `objective` on `model`.

        `objective` is the text syntax ("conv2:5 - 0.01 * tv()") or a
        structure: one term as a dict ({"kind": "channel", "layer": "conv2",
        "index": 5, "weight": 1.0}; keys as in featviz.v1.Term, weight 1 by
        default), a list of such dicts, or {"terms": [...]}.
        `batch` is the batch size (images optimised together; a term's
        `batch=i` picks image i). `transforms` is "default", "none", or a
        list such as [("pad", 2), ("jitter", 4), ("scale", [0.9, 1.1]),
        ("rotate", [-5, 5])]. `parameterization` is "fft", "pixel" or
        "maco"; None (like every other None here) leaves the choice to the
        server: MaCo from the dataset for a gray model on a server hosting
        one gray dataset (when decay_power, init_image and maco_dataset are
        None too), FFT otherwise (docs/quality.md). `lr` None is 0.05, or
        0.5 for MaCo. MaCo keeps the spectrum magnitude of `maco_dataset` (a
        hosted dataset's name, "1/f", or None for the server's choice) and
        returns `transparency` maps. `decay_power` is the FFT spectrum's
        (1.0). `init_image` is float32 [C, H, W] or [B, C, H, W] in [0, 1].
        `references` are float32 [C, H, W] images at the model's input
        size: `reference(k)` in the objective (inversion, inversion_l2,
        caricature, l2) is the k-th; `dataset(name, i)` names a hosted image.
        `accentuate` asks for feature accentuation (docs/trust.md): every
        image starts from a real image and raises the objective's unit while
        a term keeps it close to that image: an int i (image i of the
        model's hosted dataset), a ("dataset", i) pair, or a float32
        [C, H, W] array in [0, 1] (sent as one more reference). It is kept
        close in the pixels, or in `accentuate_layer`'s activations, with
        weight `accentuate_weight` (0: the server's default);
        `RenderResult.accentuation` says how far each picture moved and how
        much the unit rose.
        `precision` is the steps' arithmetic: "fp32", "bf16" (convolutions
        and matrix products in bfloat16; the final statistics stay float32),
        "tf32" (CUDA servers started with --precision tf32), or None for the
        server's default; `RenderResult.precision` says which was used.
        `on_progress` gets a `Progress` every `progress_every` steps, with
        a PNG of the current images when `preview`; if it raises, the
        render is cancelled and the exception propagates. It always sees the
        final state: a result from the server's cache comes without progress
        events, and then `on_progress` is called once with the last step's
        term values (and, with `preview`, the final images). `timeout` is the whole render's deadline
        in seconds. The old names `param` and `decay` still work (deprecated).

        Beside the pictures (docs/trust.md): `exemplars` (0 to 64) dataset
        examples that drive the objective's unit most, with their activation
        maps (`RenderResult.exemplars`), and with `path_similarity` a check
        of each picture's path through the network against theirs
        (`RenderResult.path_similarity`), from the hosted dataset
        `trust_dataset` ("" for the one that fits the model).

        A layer at once: a `*` for the unit in the objective text
        ("channel(conv2, *)", "neuron(fc1, *) - 0.01 * tv()", "conv2:*")
        renders every unit that `units` lists ("all" or None, 3, [3, 5, 9],
        "0-15", "3,5,9"), one image each, as one batched request (several
        of at most 64 units for more) and returns a `UnitRender`. The layer
        and the units are checked against the model first; a bad template
        or unit raises ValueError naming it.
        """
        template = _units.find_unit_template(objective) if isinstance(objective, str) \
            else None
        if units is not None and template is None:
            raise ValueError("units= needs an objective with '*' for the unit, such as "
                             f"'channel(conv2, *)' or 'neuron(fc1, *)'; got {objective!r}")
        if template is not None:
            if batch is not None:
                raise ValueError("batch does not apply to a render of a layer's units: "
                                 "each unit gets one image")
            return self._render_units(
                model, template, units, on_progress=on_progress, timeout=timeout,
                options=dict(steps=steps, size=size, parameterization=parameterization,
                             seed=seed, lr=lr, precision=precision,
                             decay_power=decay_power,
                             transforms=transforms, init_image=init_image,
                             maco_dataset=maco_dataset, references=references,
                             accentuate=accentuate, accentuate_layer=accentuate_layer,
                             accentuate_weight=accentuate_weight, png=png,
                             tensor=tensor, progress_every=progress_every,
                             preview=preview, exemplars=exemplars,
                             path_similarity=path_similarity,
                             trust_dataset=trust_dataset, **deprecated))
        request = self._render_request(
            model, objective, steps=steps, size=size, batch=batch,
            parameterization=parameterization, seed=seed, lr=lr,
            precision=precision, decay_power=decay_power, transforms=transforms,
            init_image=init_image, maco_dataset=maco_dataset,
            references=references, accentuate=accentuate,
            accentuate_layer=accentuate_layer, accentuate_weight=accentuate_weight,
            png=png, tensor=tensor,
            progress_every=progress_every, preview=preview,
            exemplars=exemplars, path_similarity=path_similarity,
            trust_dataset=trust_dataset,
            deprecated=deprecated, caller="render")
        call = self._stub.Render(request, timeout=timeout, metadata=self._metadata)
        return self._named(self._follow(call, on_progress, preview=preview))

    def _render_units(self, model: str, template: "_units.UnitTemplate", units,
                      *, on_progress, timeout, options: dict) -> UnitRender:
        """render() for an objective with '*': every listed unit at once."""
        described = self.get_model(model)
        layer = next((l for l in described.layers if l.path == template.layer), None)
        if layer is None:
            paths = ", ".join(l.path for l in described.layers)
            raise ValueError(f"model {model} has no layer {template.layer} (layers: {paths})")
        if not layer.tappable:
            raise ValueError(f"layer {template.layer} of model {model} cannot be tapped: "
                             f"{layer.untappable_reason}")
        unit_list = _units.parse_units(units, template.layer, layer.channels)
        per_request = template.units_per_request()
        chunks = [unit_list[i:i + per_request]
                  for i in range(0, len(unit_list), per_request)]
        # Every request queued at once, so that the server batches them.
        jobs: list[str] = []
        try:
            for chunk in chunks:
                jobs.append(self.submit(model, template.expand(chunk), batch=len(chunk),
                                        **options).id)
            results = [self._wait(job, on_progress, timeout,
                                  preview=bool(options.get("preview")))
                       for job in jobs]
        except BaseException:
            for job in jobs:
                try:
                    self.cancel_job(job)
                except FeatvizError:
                    pass
            raise
        values = np.array([batch_term_value(result, i)
                           for result, chunk in zip(results, chunks)
                           for i in range(len(chunk))], dtype=np.float64)
        first = results[0]
        images = (np.concatenate([r.images for r in results], 0)
                  if all(r.images is not None for r in results) else None)
        probs = (np.concatenate([r.probs for r in results], 0)
                 if all(r.probs is not None for r in results) else None)
        return UnitRender(
            model=first.model, model_version=first.model_version,
            model_hash=first.model_hash, objective=template.objective,
            layer=template.layer, kind=template.kind, units=unit_list, values=values,
            images=images, probs=probs, results=results,
            class_names=list(described.class_names), composite=list(first.composite),
            band_names=list(first.band_names))

    def compare(self, model_a: str, model_b: str, objective: ObjectiveSpec, *,
                seed: Optional[int] = None, **options: Any) -> Comparison:
        """Renders `objective` on two models (or two versions, "name@1" and
        "name@2"; "name/1" is read the same) with the same seed and
        `options` (as for `render`); the seed is drawn here when None.
        Returns a `Comparison`: `grid()` is one sheet with a labelled row per
        model, `table()` their term values, top classes and layer statistics."""
        if isinstance(objective, str) and _units.find_unit_template(objective) is not None:
            raise ValueError("compare renders one objective; '*' (every unit of a layer) "
                             "works with render")
        if options.get("units") is not None:
            raise ValueError("compare takes no units")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        results = [self.render(model_version_ref(m), objective, seed=seed, **options)
                   for m in (model_a, model_b)]
        labels = [f"{r.model}@{r.model_version}" for r in results]
        if labels[0] == labels[1]:
            labels = [f"{label} {r.model_hash[:8]}" for label, r in zip(labels, results)]
        return Comparison(objective=results[0].objective, seed=results[0].seed,
                          results=results, labels=labels)

    def submit(self, model: str, objective: ObjectiveSpec, *,
               steps: Optional[int] = None,
               size: Optional[int] = None,
               batch: Optional[int] = None,
               parameterization: Optional[str] = None,
               seed: Optional[int] = None,
               lr: Optional[float] = None,
               precision: Optional[str] = None,
               decay_power: Optional[float] = None,
               transforms: TransformSpec = "default",
               init_image: Optional[np.ndarray] = None,
               maco_dataset: Optional[str] = None,
               references: Sequence[np.ndarray] = (),
               accentuate: Union[int, tuple, np.ndarray, None] = None,
               accentuate_layer: str = "",
               accentuate_weight: float = 0.0,
               png: bool = True,
               tensor: bool = True,
               progress_every: Optional[int] = None,
               preview: bool = False,
               owner: str = "",
               priority: int = 0,
               timeout: Optional[float] = None,
               exemplars: int = 0,
               path_similarity: bool = False,
               trust_dataset: str = "",
               **deprecated: Any) -> "featviz_pb2.Job":
        """Queues a render (arguments as for `render`) and returns its Job at once.

        `owner` and `priority` place it in the server's fair-share queue.
        Follow it with `get_job(job.id)`, `wait(job.id)` or `cancel_job(job.id)`.
        """
        request = self._render_request(
            model, objective, steps=steps, size=size, batch=batch,
            parameterization=parameterization, seed=seed, lr=lr,
            precision=precision, decay_power=decay_power, transforms=transforms,
            init_image=init_image, maco_dataset=maco_dataset,
            references=references, accentuate=accentuate,
            accentuate_layer=accentuate_layer, accentuate_weight=accentuate_weight,
            png=png, tensor=tensor,
            progress_every=progress_every, preview=preview,
            exemplars=exemplars, path_similarity=path_similarity,
            trust_dataset=trust_dataset,
            deprecated=deprecated, caller="submit")
        request.owner = owner
        request.priority = priority
        return self._call(self._stub.SubmitJob,
                          featviz_pb2.SubmitJobRequest(request=request), timeout)

    def get_job(self, job_id: str, *, include_result: bool = False,
                timeout: Optional[float] = None) -> "featviz_pb2.Job":
        """The job `job_id` (a featviz.v1.Job), from the replica holding it."""
        return self._call(self._stub_for(job_id).GetJob,
                          featviz_pb2.GetJobRequest(id=job_id,
                                                    include_result=include_result),
                          timeout)

    def wait(self, job_id: str, *,
             on_progress: Optional[Callable[[Progress], Any]] = None,
             timeout: Optional[float] = None) -> RenderResult:
        """Watches job `job_id` to its end (WatchJob); returns its result.

        `on_progress` gets the job's progress events from now on, and always
        its final state: a job that had already finished (or was answered
        from the cache) is reported once with its last step's term values
        (without a preview: the job's request is not known here).
        A job that did not succeed raises `FeatvizError` with its status.
        """
        return self._wait(job_id, on_progress, timeout, preview=False)

    def _wait(self, job_id: str, on_progress, timeout, *, preview: bool) -> RenderResult:
        call = self._stub_for(job_id).WatchJob(
            featviz_pb2.WatchJobRequest(id=job_id), timeout=timeout,
            metadata=self._metadata)
        result = self._named(self._follow(call, on_progress, preview=preview))
        result.job_id = result.job_id or job_id
        return result

    def cancel_job(self, job_id: str, *,
                   timeout: Optional[float] = None) -> "featviz_pb2.Job":
        """Cancels job `job_id`; returns the Job once it has ended."""
        return self._call(self._stub_for(job_id).CancelJob,
                          featviz_pb2.CancelJobRequest(id=job_id), timeout)

    def list_jobs(self, *, owner: str = "", state: Optional[str] = None,
                  timeout: Optional[float] = None) -> list:
        """Jobs the server knows (featviz.v1.Job, without results), newest
        first, all pages; only `owner`'s when given, only those in `state`
        ("queued", "running", "succeeded", "failed", "cancelled", "expired")."""
        request = featviz_pb2.ListJobsRequest(owner=owner, state=_job_state(state))
        jobs = []
        while True:
            response = self._call(self._stub.ListJobs, request, timeout)
            jobs.extend(response.jobs)
            if not response.next_page_token:
                return jobs
            request.page_token = response.next_page_token

    def server_stats(self, *, timeout: Optional[float] = None) -> "featviz_pb2.ServerStats":
        """The server's queue, worker and cache figures (featviz.v1.ServerStats)."""
        return self._call(self._stub.GetServerStats, featviz_pb2.GetServerStatsRequest(),
                          timeout)

    def health(self, service: str = "", *, timeout: Optional[float] = None) -> str:
        """The standard gRPC health check: "SERVING", "NOT_SERVING", ...
        `service` is e.g. "featviz.v1.Visualizer"; empty for the whole server."""
        if health_pb2 is None:
            raise FeatvizError("UNIMPLEMENTED",
                               "health stubs come with the installed package only")
        stub = health_pb2_grpc.HealthStub(self._channel)
        response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service),
                              timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    # ----------------------------------------------------------- admin

    def load_model(self, path: str, *, timeout: Optional[float] = None):
        """Admin: serves the model at `path` of the server's repository
        ("mnist/2", "mnist_classifier.pt"); returns its featviz.v1.Model."""
        return self._call(self._stub.LoadModel, featviz_pb2.LoadModelRequest(path=path),
                          timeout).model

    def unload_model(self, name: str, version: str = "", *,
                     timeout: Optional[float] = None) -> list:
        """Admin: stops serving `name` (one `version`, or all); answers once
        its running jobs have finished. Returns the versions unloaded."""
        return list(self._call(self._stub.UnloadModel,
                               featviz_pb2.UnloadModelRequest(name=name, version=version),
                               timeout).models)

    def reload_model(self, name: str = "", *, timeout: Optional[float] = None):
        """Admin: brings `name` (every model when empty) in line with the
        repository; returns the ReloadModelResponse (loaded, unloaded, failed)."""
        return self._call(self._stub.ReloadModel, featviz_pb2.ReloadModelRequest(name=name),
                          timeout)

    # -------------------------------------------------------- circuits

    def datasets(self, *, timeout: Optional[float] = None) -> list[Dataset]:
        """The datasets the server hosts, sorted by name."""
        response = self._call(self._circuits.ListDatasets,
                              circuits_pb2.ListDatasetsRequest(), timeout)
        return [_dataset(d) for d in response.datasets]

    def upload_dataset(self, name: str,
                       images_or_path: Union[np.ndarray, str, os.PathLike],
                       labels: Union[None, np.ndarray, Sequence[int], str, os.PathLike] = None,
                       class_names: Optional[Sequence[str]] = None, *,
                       chunk_bytes: int = 1 << 20,
                       timeout: Optional[float] = None) -> Dataset:
        """Uploads a dataset of your own (UploadDataset; needs the uploader or
        admin role) and returns it as the server now hosts it, owned by you.

        `images_or_path` is an array (uint8 0..255 or float32 in [0, 1];
        [N, H, W], [N, C, H, W] or [N, H, W, C] with C in 1..16), sent as
        .npy, or as .npz with `labels` (int [N] class indices) when given;
        or a path: an .npy or .npz file, an IDX3 image file
        (`*-images-idx3-ubyte[.gz]`; `labels` is its IDX1 file, by default
        the one beside it), or a folder of PNGs with one subfolder per class
        (needs Pillow; the subfolders' names become the class names).
        `class_names` names the label indices. The server refuses what it
        cannot use (dtype, shape, NaN, values outside [0, 1], a label count
        that is not the image count, a name in use, a size past its limit or
        your quota) with a FeatvizError naming the field and value."""
        fmt, data, labels_bytes, folder_classes = _pack_dataset(images_or_path, labels)
        names = list(class_names) if class_names is not None else folder_classes
        header = circuits_pb2.UploadDatasetRequest.Header(
            name=name, format=fmt, size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(), labels_bytes=labels_bytes,
            class_names=names)
        step = max(1, int(chunk_bytes))

        def messages():
            yield circuits_pb2.UploadDatasetRequest(header=header, chunk=data[:step])
            for offset in range(step, len(data), step):
                yield circuits_pb2.UploadDatasetRequest(chunk=data[offset:offset + step])

        try:
            hosted = self._circuits.UploadDataset(messages(), timeout=timeout,
                                                  metadata=self._metadata)
        except grpc.RpcError as err:
            raise FeatvizError._from_rpc(err) from None
        return _dataset(hosted)

    def delete_dataset(self, name: str, *, timeout: Optional[float] = None) -> Dataset:
        """Deletes a dataset you uploaded (an admin: anyone's); returns it.
        The operator's datasets cannot be deleted (FAILED_PRECONDITION)."""
        response = self._call(self._circuits.DeleteDataset,
                              circuits_pb2.DeleteDatasetRequest(name=name), timeout)
        return _dataset(response.dataset)

    def activations(self, model: str, layers, *,
                    images: Optional[np.ndarray] = None,
                    dataset: Optional[str] = None,
                    indices: Optional[Sequence[int]] = None,
                    start: int = 0, count: Optional[int] = None,
                    label: Optional[int] = None,
                    overlay_png: bool = False,
                    timeout: Optional[float] = None) -> Activations:
        """Activation maps of `layers` on images: `layers` is a path
        ("conv2"), a list of paths, or {path: [channels]}; every channel
        unless listed. The images are `images` (float32 [B, C, H, W] in
        [0, 1]) or dataset images: `indices`, else `count` from `start`
        (only of class `label` when given)."""
        request = circuits_pb2.ComputeActivationsRequest(
            model=model, overlay_png=overlay_png,
            input=_image_input(images, dataset, indices, start, count, label))
        if isinstance(layers, str):
            layers = {layers: []}
        elif not isinstance(layers, Mapping):
            layers = {layer: [] for layer in layers}
        for layer, channels in layers.items():
            request.layers.add(layer=layer, channels=list(channels or []))
        response = self._call(self._circuits.ComputeActivations, request, timeout)
        out = {}
        for entry in response.layers:
            out[entry.layer] = LayerActivations(
                layer=entry.layer,
                channels=np.array(entry.channels, dtype=np.int64),
                maps=_from_tensor(entry.maps),
                stats=[ChannelStats(s.channel, s.mean, s.max, s.fraction_active)
                       for s in entry.stats],
                overlay_png=list(entry.overlay_png))
        return Activations(response.model, response.model_version, response.model_hash,
                           out, np.array(response.indices, dtype=np.int64),
                           np.array(response.labels, dtype=np.int64))

    def attribute(self, model: str, target: str, layer: str, *,
                  images: Optional[np.ndarray] = None,
                  dataset: Optional[str] = None,
                  indices: Optional[Sequence[int]] = None,
                  start: int = 0, count: Optional[int] = None,
                  label: Optional[int] = None,
                  gradcam: bool = False, gradcam_png: bool = False,
                  timeout: Optional[float] = None) -> Attribution:
        """Each channel of `layer`'s contribution (gradient x activation) to
        `target` ("logit(3)", "channel(conv2, 5)", any per-image objective),
        averaged over the images (chosen as for `activations`)."""
        request = circuits_pb2.AttributeRequest(
            model=model, target=target, layer=layer, gradcam=gradcam or gradcam_png,
            gradcam_png=gradcam_png,
            input=_image_input(images, dataset, indices, start, count, label))
        response = self._call(self._circuits.Attribute, request, timeout)
        return Attribution(
            model=response.model, model_version=response.model_version,
            model_hash=response.model_hash, target=response.target, layer=response.layer,
            channels=np.array([s.channel for s in response.scores], dtype=np.int64),
            scores=np.array([s.score for s in response.scores], dtype=np.float64),
            per_image=_from_tensor(response.per_image),
            linear_path=response.linear_path,
            direct_weights=(np.array([s.direct_weight for s in response.scores])
                            if response.linear_path else None),
            gradcam=_from_tensor(response.gradcam) if response.HasField("gradcam") else None,
            gradcam_png=list(response.gradcam_png), images=response.images,
            indices=np.array(response.indices, dtype=np.int64))

    def find_circuit(self, model: str, layer: str, *,
                     classes: Optional[Sequence[int]] = None,
                     top_k: Optional[int] = None,
                     dataset: str = "",
                     examples_per_class: Optional[int] = None,
                     render: bool = True,
                     steps: Optional[int] = None,
                     seed: Optional[int] = None,
                     timeout: Optional[float] = None) -> Circuit:
        """For each class (every class when `classes` is None), the `top_k`
        (3) channels of `layer` that feed its logit most, scored on
        `examples_per_class` (64) images of the class from `dataset` (when
        empty, the one labelled dataset whose images fit the model; the
        server refuses to guess between several). With `render`,
        the class and detector visualisations are queued as jobs
        (`Circuit.job_ids()`, then `wait`)."""
        request = circuits_pb2.FindCircuitRequest(
            model=model, layer=layer, classes=list(classes or []),
            top_k=top_k or 0, dataset=dataset,
            examples_per_class=examples_per_class or 0, skip_renders=not render)
        if steps is not None:
            request.render.optimizer.steps = steps
        if seed is not None:
            request.render.seed = seed
        response = self._call(self._circuits.FindCircuit, request, timeout)
        return Circuit(
            response.model, response.model_version, response.model_hash, response.layer,
            response.dataset,
            [ClassCircuit(
                c.class_index, c.class_name, c.class_job_id,
                [Detector(d.channel, d.score, d.job_id, _from_tensor(d.activation_map),
                          d.activation_png, d.example_activation) for d in c.detectors],
                c.example_index, c.example_png, c.images_scored)
             for c in response.classes])

    def top_examples(self, model: str, layer: str, *,
                     channels: Optional[Sequence[int]] = None,
                     dataset: str = "",
                     top_n: Optional[int] = None,
                     png: bool = False,
                     timeout: Optional[float] = None) -> TopExamples:
        """The `top_n` (9) images of `dataset` that excite each channel of
        `layer` most (every channel when `channels` is None), with their
        PNGs when `png`. `dataset` defaults to the one dataset whose images
        fit the model (the server refuses to guess between several)."""
        request = circuits_pb2.TopExamplesRequest(
            model=model, layer=layer, channels=list(channels or []),
            dataset=dataset,
            top_n=top_n or 0, png=png)
        response = self._call(self._circuits.TopExamples, request, timeout)
        return TopExamples(
            response.model, response.model_version, response.model_hash, response.layer,
            response.dataset,
            [UnitExamples(u.channel, np.array(u.indices, dtype=np.int64),
                          np.array(u.values, dtype=np.float32),
                          np.array(u.labels, dtype=np.int64), list(u.png))
             for u in response.units],
            response.cached)

    def label_units(self, model: str, layer: Optional[str] = None, *,
                    label: Optional[int] = None,
                    top_n: int = 100,
                    limit: int = 0,
                    dataset: str = "",
                    timeout: Optional[float] = None) -> UnitLabels:
        """Automatic unit labels (LabelUnits) on a labelled dataset: for each
        unit of `layer` the classes of its `top_n` top examples ("fires on
        7s: 82 % of its top 100"), a class selectivity index in [0, 1] and
        the classes it feeds most by attribution.

        `layer` None labels every layer `featviz units` does (each tappable
        convolution and linear layer, less the class logits). With `label`
        (a class index) only the units with examples of that class, sorted
        by their share of it across the layers, at most `limit` (0: all).
        `dataset` defaults to the one labelled dataset whose images fit."""
        layers = [layer] if layer is not None else _unit_layers(
            self.get_model(model, timeout=timeout))
        if not layers:
            raise ValueError(f"model {model} has no convolution or linear layer with "
                             "channels besides its logits; name a layer")
        responses = []
        for path in layers:
            request = circuits_pb2.LabelUnitsRequest(
                model=model, layer=path, dataset=dataset, top_n=top_n,
                limit=limit if label is not None else 0)
            if label is not None:
                request.label = label
            responses.append(self._call(self._circuits.LabelUnits, request, timeout))
        units = [
            UnitLabel(r.layer, u.channel, u.label, u.selectivity,
                      [ClassShare(c.class_index, c.class_name, c.count, c.fraction)
                       for c in u.classes],
                      [ClassScore(a.class_index, a.class_name, a.score)
                       for a in u.attribution])
            for r in responses for u in r.units]
        if label is not None:
            units.sort(key=lambda u: -u.share(label))  # Stable: layer order on ties.
            if limit > 0:
                units = units[:limit]
        first = responses[0]
        return UnitLabels(first.model, first.model_version, first.model_hash,
                          first.dataset, first.top_n, layers, units,
                          all(r.cached for r in responses))

    def upload_model(self, model_path: Union[str, os.PathLike], *,
                     card: Union[None, str, os.PathLike, Mapping] = None,
                     name: Optional[str] = None,
                     chunk_bytes: int = 1 << 20,
                     timeout: Optional[float] = None) -> "featviz_pb2.Model":
        """Uploads a TorchScript file (UploadModel; needs the uploader or
        admin role) and returns the model version the server now serves.

        `card` is a path to the card JSON or the card as a dict; when None,
        `<stem>.card.json` beside the model is sent if it exists. `name`
        defaults to the card's name, else the file's stem. The file is sent
        in `chunk_bytes` pieces with its SHA-256, which the server checks."""
        return _upload_model(self._stub, self._metadata, model_path, card=card,
                             name=name, chunk_bytes=chunk_bytes, timeout=timeout)

    @staticmethod
    def _follow(call, on_progress, *, preview: bool = False) -> RenderResult:
        """Reads a Render or WatchJob stream to its result. `on_progress`
        sees the final step even when the stream carried no progress for it
        (a cached result, a job that had finished); `preview` says whether
        the request asked for previews."""
        result = None
        last_step = None
        try:
            for event in call:
                kind = event.WhichOneof("event")
                if kind == "progress":
                    p = event.progress
                    last_step = p.step
                    if on_progress is not None:
                        on_progress(Progress(p.step, p.total_steps, tuple(p.term_values),
                                             p.preview_png))
                elif kind == "result":
                    result = event.result
        except grpc.RpcError as err:
            raise FeatvizError._from_rpc(err) from None
        except BaseException:
            call.cancel()
            raise
        if result is None:
            raise FeatvizError("INTERNAL", "render stream ended without a result")
        outcome = _render_result(result)
        outcome.job_id = dict(call.initial_metadata() or ()).get("featviz-job-id", "")
        if on_progress is not None and last_step != outcome.steps:
            on_progress(_final_progress(outcome, preview))
        return outcome

    def _named(self, result: RenderResult) -> RenderResult:
        """Fills in the model's class names (asked once per model version)."""
        ref = (f"{result.model}@{result.model_version}" if result.model_version
               else result.model)
        names = self._class_names.get(ref)
        if names is None:
            try:
                names = list(self.get_model(ref).class_names)
            except FeatvizError:
                names = []  # A model unloaded since only costs the names.
            self._class_names[ref] = names
        result.class_names = names
        return result

    @staticmethod
    def _render_request(model: str, objective: ObjectiveSpec, *, steps, size, batch,
                        parameterization, seed, lr, decay_power, transforms,
                        init_image, png, tensor, progress_every, preview,
                        deprecated, caller, maco_dataset=None,
                        references=(), precision=None, accentuate=None,
                        accentuate_layer="", accentuate_weight=0.0, exemplars=0,
                        path_similarity=False,
                        trust_dataset="") -> "featviz_pb2.RenderRequest":
        for old, new in _DEPRECATED_RENDER_ARGS.items():
            if old not in deprecated:
                continue
            warnings.warn(f"{caller}({old}=...) is deprecated; use {new}=",
                          DeprecationWarning, stacklevel=3)
            value = deprecated.pop(old)
            if new == "parameterization" and parameterization is None:
                parameterization = value
            elif new == "decay_power" and decay_power is None:
                decay_power = value
        if deprecated:
            raise TypeError(f"{caller}() got an unexpected keyword argument "
                            f"{next(iter(deprecated))!r}")
        request = featviz_pb2.RenderRequest(model=model)
        if isinstance(objective, str):
            request.objective_text = objective
        else:
            request.objective_tree.CopyFrom(_objective_tree(objective))
        if parameterization not in _PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be 'fft', 'pixel', 'maco' or "
                             f"None, not {parameterization!r}")
        request.image.parameterization = _PARAMETERIZATIONS[parameterization]
        if size is not None:
            request.image.size = size
        if batch is not None:
            request.image.batch = batch
        if decay_power is not None:
            request.image.decay_power = decay_power
        if init_image is not None:
            request.image.init_image.CopyFrom(_to_tensor(init_image))
        if maco_dataset is not None:
            request.image.maco_dataset = maco_dataset
        for k, reference in enumerate(references):
            request.references.append(_to_tensor(reference, f"references[{k}]"))
        if accentuate is not None:
            _accentuation(request, accentuate, accentuate_layer, accentuate_weight)
        elif accentuate_layer or accentuate_weight:
            raise ValueError("accentuate_layer and accentuate_weight need accentuate=")
        request.transforms.CopyFrom(_transforms(transforms))
        if lr is not None:
            request.optimizer.lr = lr
        if precision is not None:
            request.precision = precision
        if steps is not None:
            request.optimizer.steps = steps
        if seed is not None:
            request.seed = seed
        request.output.png = png
        request.output.tensor = tensor
        request.output.preview_png = preview
        if progress_every is not None:
            request.output.progress_every = progress_every
        request.trust.exemplars = exemplars
        request.trust.path_similarity = path_similarity
        request.trust.dataset = trust_dataset
        return request

    def _call(self, method, request, timeout: Optional[float]):
        try:
            return method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise FeatvizError._from_rpc(err) from None


def _job_state(state: Optional[str]) -> int:
    if state is None or state == "":
        return featviz_pb2.JOB_STATE_UNSPECIFIED
    name = state.upper()
    if not name.startswith("JOB_STATE_"):
        name = "JOB_STATE_" + name
    try:
        return featviz_pb2.JobState.Value(name)
    except ValueError:
        raise ValueError(f"unknown job state {state!r}") from None


def _image_input(images, dataset, indices, start, count, label) -> "circuits_pb2.ImageInput":
    """Client-sent `images`, or a slice of `dataset` (None: the one dataset
    whose images fit the model)."""
    if images is not None and dataset is not None:
        raise ValueError("give either images or dataset, not both")
    if images is not None:
        return circuits_pb2.ImageInput(images=_to_tensor(images, "images"))
    dataset_slice = circuits_pb2.DatasetSlice(dataset=dataset or "", start=start,
                                              count=count or 0)
    if indices is not None:
        dataset_slice.indices.extend(int(i) for i in indices)
    if label is not None:
        dataset_slice.label = label
    return circuits_pb2.ImageInput(dataset=dataset_slice)


def _objective_tree(spec: ObjectiveSpec) -> "featviz_pb2.Objective":
    """The structured form of a dict / list-of-dicts objective."""
    if isinstance(spec, featviz_pb2.Objective):
        return spec
    if isinstance(spec, Mapping):
        terms: Iterable = spec["terms"] if "terms" in spec else [spec]
    elif isinstance(spec, Sequence):
        terms = spec
    else:
        raise TypeError(f"objective must be text, a dict or a list, not {type(spec).__name__}")
    tree = featviz_pb2.Objective()
    for term_spec in terms:
        term_spec = dict(term_spec)
        weighted = tree.terms.add(weight=float(term_spec.pop("weight", 1.0)))
        if "kind" not in term_spec:
            raise ValueError(f"objective term {term_spec!r} has no 'kind'")
        weighted.term.kind = _term_kind(term_spec.pop("kind"))
        for key, value in term_spec.items():
            if key not in _TERM_FIELDS:
                raise ValueError(f"unknown objective term field {key!r}")
            if key == "vector":
                weighted.term.vector.extend(float(v) for v in value)
            elif key == "reference":
                weighted.term.reference.CopyFrom(_reference(value))
            else:
                setattr(weighted.term, key, value)
    return tree


def _accentuation(request: "featviz_pb2.RenderRequest", seed, layer: str,
                  weight: float) -> None:
    """Fills request.accentuate: `seed` an int (an image of the model's
    dataset), a (dataset, index) pair, or an array sent as one more
    reference tensor."""
    accentuate = request.accentuate
    accentuate.layer = layer or ""
    accentuate.weight = float(weight)
    if isinstance(seed, np.ndarray):
        accentuate.image.request_index = len(request.references)
        request.references.append(_to_tensor(seed, "accentuate"))
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        accentuate.image.dataset_image.index = int(seed)
    elif isinstance(seed, tuple) and len(seed) == 2:
        accentuate.image.dataset_image.dataset = str(seed[0])
        accentuate.image.dataset_image.index = int(seed[1])
    else:
        raise ValueError("accentuate must be a dataset index, a (dataset, index) pair "
                         f"or a float32 [C, H, W] array, not {type(seed).__name__}")


def _reference(spec) -> "featviz_pb2.ReferenceImage":
    """A term's reference image: an int k (the request's references[k]), a
    (dataset, index) pair, or {"dataset": name, "index": i}."""
    if isinstance(spec, featviz_pb2.ReferenceImage):
        return spec
    if isinstance(spec, int):
        return featviz_pb2.ReferenceImage(request_index=spec)
    if isinstance(spec, Mapping):
        dataset, index = spec.get("dataset", ""), spec["index"]
    else:
        dataset, index = spec
    return featviz_pb2.ReferenceImage(
        dataset_image=featviz_pb2.DatasetImage(dataset=dataset, index=int(index)))


def _term_kind(kind: Union[str, int]) -> int:
    if isinstance(kind, int):
        return kind
    name = kind.upper()
    if not name.startswith("TERM_KIND_"):
        name = "TERM_KIND_" + name
    try:
        return featviz_pb2.TermKind.Value(name)
    except ValueError:
        raise ValueError(f"unknown objective term kind {kind!r}") from None


def _transforms(spec: TransformSpec) -> "featviz_pb2.Transforms":
    """The Transforms message for "default", "none" or a [(name, arg), ...] list."""
    Transforms, Transform = featviz_pb2.Transforms, featviz_pb2.Transform
    if isinstance(spec, Transforms):
        return spec
    if spec is None or spec == "default":
        return Transforms(preset=Transforms.PRESET_DEFAULT)
    if spec == "none":
        return Transforms(preset=Transforms.PRESET_NONE)
    if isinstance(spec, str):
        raise ValueError(f"transforms must be 'default', 'none' or a list, not {spec!r}")
    out = Transforms(preset=Transforms.PRESET_CUSTOM)
    for name, arg in spec:
        try:
            kind = Transform.Kind.Value("KIND_" + name.upper())
        except ValueError:
            raise ValueError(f"unknown transform {name!r}") from None
        transform = out.list.add(kind=kind)
        if kind in (Transform.KIND_PAD, Transform.KIND_JITTER):
            transform.pixels = int(arg)
        else:
            values = arg if isinstance(arg, Iterable) else [arg]
            transform.values.extend(float(v) for v in values)
    return out


def _to_tensor(array: np.ndarray, name: str = "init_image") -> "featviz_pb2.Tensor":
    data = np.ascontiguousarray(array, dtype="<f4")
    if data.ndim not in (3, 4):
        raise ValueError(f"{name} must be [C, H, W] or [B, C, H, W], not shape {data.shape}")
    return featviz_pb2.Tensor(shape=data.shape, dtype=featviz_pb2.Tensor.DTYPE_FLOAT32,
                              data=data.tobytes())


def _from_tensor(tensor: "featviz_pb2.Tensor") -> np.ndarray:
    """A float32 array from a Tensor (little-endian float32, C order)."""
    if tensor.dtype != featviz_pb2.Tensor.DTYPE_FLOAT32:
        raise FeatvizError("INTERNAL", f"unsupported tensor dtype {tensor.dtype}")
    shape = tuple(tensor.shape)
    flat = np.frombuffer(tensor.data, dtype="<f4")
    if flat.size != int(np.prod(shape)):
        raise FeatvizError("INTERNAL",
                           f"tensor of shape {shape} carries {flat.size} values")
    # astype copies: a writable array in native byte order.
    return flat.reshape(shape).astype(np.float32)


def _final_progress(result: RenderResult, preview: bool) -> Progress:
    """The progress event of a result's last step, made from the result: its
    trace's last values (what the server's event at that step carries), and
    with `preview` the final pictures laid out as the server lays out a
    preview (core::MakeGrid's defaults: ceil(sqrt(n)) columns, scale 1,
    padding 4, white)."""
    values = tuple(float(trace[-1]) if len(trace) else term.final_value
                   for term, trace in zip(result.terms, result.trace))
    preview_png = b""
    if preview:
        try:
            pictures = result.pictures()
            columns = math.ceil(math.sqrt(len(pictures)))
            preview_png = _images.png_bytes(
                _images.grid(pictures, columns=columns, scale=1, padding=4))
        except (ImportError, ValueError):
            pass  # No Pillow, or no pictures: an event without a preview.
    return Progress(result.steps, result.steps, values, preview_png)


def _render_result(result: "featviz_pb2.RenderResult") -> RenderResult:
    return RenderResult(
        model=result.model,
        model_version=result.model_version,
        model_hash=result.model_hash,
        objective=result.objective,
        seed=result.seed,
        steps=result.steps,
        transforms=result.transforms,
        linear_mode=result.linear_mode,
        precision=result.precision,
        terms=[TermOutcome(t.term, t.weight, t.final_value) for t in result.terms],
        final_total=result.final_total,
        images=_from_tensor(result.images) if result.HasField("images") else None,
        png=list(result.png),
        logits=_from_tensor(result.logits) if result.HasField("logits") else None,
        probs=_from_tensor(result.probs) if result.HasField("probs") else None,
        trace=np.array([list(t.trace) for t in result.terms], dtype=np.float32),
        layer_stats={s.layer: (_from_tensor(s.mean), _from_tensor(s.max))
                     for s in result.layer_stats},
        queue_seconds=result.timings.queue_seconds,
        compute_seconds=result.timings.compute_seconds,
        transparency=(_from_tensor(result.transparency)
                      if result.HasField("transparency") else None),
        transparency_png=list(result.transparency_png),
        maco_magnitude=result.maco_magnitude,
        composite=list(result.composite),
        band_names=list(result.band_names),
        band_png=list(result.band_png),
        accentuation=[AccentuationOutcome(a.seed_value, a.value, a.pixel_distance)
                      for a in result.accentuation],
        exemplars=(Exemplars(
            result.exemplars.dataset, result.exemplars.unit,
            [Exemplar(e.index, e.value, e.label, e.png, e.activation_png)
             for e in result.exemplars.examples],
            result.exemplars.cached) if result.HasField("exemplars") else None),
        path_similarity=[
            PathSimilarity(p.score, p.threshold, p.reliable,
                           [LayerPathSimilarity(l.layer, l.score, l.similarity,
                                                l.natural_similarity,
                                                l.random_similarity)
                            for l in p.layers])
            for p in result.path_similarity],
    )


def _dataset(d: "circuits_pb2.Dataset") -> Dataset:
    return Dataset(d.name, d.size, tuple(d.image_shape), list(d.class_names),
                   list(d.class_counts), d.source, d.owner, d.uploaded, d.size_bytes)


_IDX_IMAGES = "-images-idx3-ubyte"
_IDX_LABELS = "-labels-idx1-ubyte"


def _npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **{k: np.asarray(v) for k, v in arrays.items()})
    return out.getvalue()


def _png_folder(folder: Path) -> tuple[np.ndarray, Optional[np.ndarray], list[str]]:
    """A folder of PNGs as the server reads one: one subfolder per class
    (numeric names in numeric order first, then the others by name), or PNGs
    in the folder itself (unlabelled)."""
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("packing a folder of PNGs needs Pillow "
                          "(pip install 'featviz-client[images]'; Debian: python3-pil)") from err

    def pngs(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".png")

    def read(p: Path) -> np.ndarray:
        with Image.open(p) as image:
            return np.asarray(image.convert("L" if image.mode in ("1", "L", "I", "I;16") else "RGB"))

    classes = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0,
                                    d.name))
    loose = pngs(folder)
    if classes and loose:
        raise ValueError(f"{folder} holds both PNGs and class folders; keep the PNGs "
                         "in one subfolder per class")
    if not classes:
        if not loose:
            raise ValueError(f"{folder} holds no PNG files")
        return np.stack([read(p) for p in loose]), None, []
    images, labels = [], []
    for index, d in enumerate(classes):
        for p in pngs(d):
            images.append(read(p))
            labels.append(index)
    if not images:
        raise ValueError(f"the class folders of {folder} hold no PNG files")
    return np.stack(images), np.asarray(labels, dtype=np.int64), [d.name for d in classes]


def _pack_dataset(images_or_path, labels) -> tuple[int, bytes, int, list[str]]:
    """(format, the stream's bytes, labels_bytes, class names of a folder)."""
    if isinstance(images_or_path, np.ndarray):
        if labels is None:
            return circuits_pb2.DATASET_FORMAT_NPY, _npy_bytes(images_or_path), 0, []
        return (circuits_pb2.DATASET_FORMAT_NPZ,
                _npz_bytes(images=images_or_path, labels=np.asarray(labels)), 0, [])
    path = Path(images_or_path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        images, folder_labels, names = _png_folder(path)
        if labels is not None:
            raise ValueError("a folder's labels are its class subfolders; do not pass labels")
        if folder_labels is None:
            return circuits_pb2.DATASET_FORMAT_NPZ, _npz_bytes(images=images), 0, []
        return (circuits_pb2.DATASET_FORMAT_NPZ,
                _npz_bytes(images=images, labels=folder_labels), 0, names)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if labels is None:
            return circuits_pb2.DATASET_FORMAT_NPY, path.read_bytes(), 0, []
        return (circuits_pb2.DATASET_FORMAT_NPZ,
                _npz_bytes(images=np.load(path, allow_pickle=False),
                           labels=np.asarray(labels)), 0, [])
    if suffix == ".npz":
        if labels is not None:
            raise ValueError("an .npz carries its labels inside, as labels.npy")
        return circuits_pb2.DATASET_FORMAT_NPZ, path.read_bytes(), 0, []
    if _IDX_IMAGES in path.name:
        label_path = (Path(labels) if labels is not None
                      else path.with_name(path.name.replace(_IDX_IMAGES, _IDX_LABELS)))
        label_bytes = label_path.read_bytes() if label_path.exists() else b""
        if labels is not None and not label_bytes:
            raise FileNotFoundError(f"{label_path} does not exist")
        return (circuits_pb2.DATASET_FORMAT_IDX, path.read_bytes() + label_bytes,
                len(label_bytes), [])
    raise ValueError(f"cannot tell the format of {path}: give an array, an .npy or .npz "
                     f"file, an IDX3 image file (*{_IDX_IMAGES}[.gz]) or a folder of PNGs")


def _upload_model(stub, metadata, model_path, *, card, name, chunk_bytes,
                  timeout) -> "featviz_pb2.Model":
    """Client.upload_model's work, kept apart from the rest of the client."""
    import hashlib
    import json

    model_path = Path(model_path)
    data = model_path.read_bytes()
    if card is None:
        beside = model_path.with_suffix(".card.json")
        card_json = beside.read_text() if beside.exists() else ""
    elif isinstance(card, Mapping):
        card_json = json.dumps(dict(card))
    else:
        card_json = Path(card).read_text()
    if not name:
        try:
            name = json.loads(card_json).get("name", "") if card_json else ""
        except (ValueError, AttributeError):
            name = ""
        name = name or model_path.stem
    header = featviz_pb2.UploadModelRequest.Header(
        name=name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        card_json=card_json)

    def messages():
        step = max(1, int(chunk_bytes))
        yield featviz_pb2.UploadModelRequest(header=header, chunk=data[:step])
        for offset in range(step, len(data), step):
            yield featviz_pb2.UploadModelRequest(chunk=data[offset:offset + step])

    try:
        return stub.UploadModel(messages(), timeout=timeout, metadata=metadata).model
    except grpc.RpcError as err:
        raise FeatvizError._from_rpc(err) from None
