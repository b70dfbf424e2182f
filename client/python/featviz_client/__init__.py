"""Python client for the featviz.v1 feature-visualisation service.

    from featviz_client import Client
    with Client("127.0.0.1:8980") as fv:
        result = fv.render("mnist_classifier", "logit(7)", seed=0)
        result.show("seven.png")     # a labelled grid; in Jupyter, just `result`
        print(result.probs[0])

Install with `pip install ./client/python` (the gRPC stubs are generated
then, into featviz_client.v1).
"""

from featviz_client.circuits import (
    Activations,
    Attribution,
    Circuit,
    ClassCircuit,
    ClassScore,
    ClassShare,
    Dataset,
    Detector,
    TopExamples,
    UnitExamples,
    UnitLabel,
    UnitLabels,
)
from featviz_client.client import (
    AccentuationOutcome,
    Client,
    Exemplar,
    Exemplars,
    FeatvizError,
    LayerPathSimilarity,
    PathSimilarity,
    Progress,
    RenderResult,
    TermOutcome,
)
from featviz_client.images import band_sheet, composite, grid, hwc, to_pil
from featviz_client.models import ModelCopy, ModelStatus
from featviz_client.multi_render import Comparison, UnitRender

__all__ = [
    "AccentuationOutcome", "Activations", "Attribution", "Circuit", "ClassCircuit",
    "ClassScore", "ClassShare", "Client", "Comparison",
    "Dataset", "Detector", "Exemplar", "Exemplars", "FeatvizError",
    "LayerPathSimilarity", "ModelCopy", "ModelStatus", "PathSimilarity", "Progress",
    "RenderResult", "TermOutcome",
    "TopExamples", "UnitExamples", "UnitLabel", "UnitLabels", "UnitRender", "band_sheet", "composite", "grid",
    "hwc", "to_pil",
]
