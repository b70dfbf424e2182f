"""Python client for the featviz.v1 feature-visualisation service.

    from featviz_client import Client
    with Client("127.0.0.1:8980") as fv:
        result = fv.render("mnist_classifier", "logit(7)", seed=0)
        print(result.probs[0])

The generated stubs (`featviz.v1.featviz_pb2`, built into
`build/python` by CMake) must be importable.
"""

from featviz_client.client import (
    Client,
    FeatvizError,
    Progress,
    RenderResult,
    TermOutcome,
)

__all__ = ["Client", "FeatvizError", "Progress", "RenderResult", "TermOutcome"]
