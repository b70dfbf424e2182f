"""The Circuits service from Python through the generated stubs: a researcher
asks which MNIST digits excite a conv2 channel and which channels feed a class,
and through featviz_client which units are labelled by which digits.

Uses the same environment as test_client.py, plus the MNIST test set in
../shared/data/mnist as the server's dataset directory.
"""

from __future__ import annotations


import grpc
import numpy as np
import pytest

from featviz.v1 import circuits_pb2, circuits_pb2_grpc
from featviz_client import Client, FeatvizError
from mnist_server import serving_mnist


@pytest.fixture(scope="module")
def server_address():
    with serving_mnist() as address:
        yield address


@pytest.fixture(scope="module")
def circuits(server_address):
    with grpc.insecure_channel(server_address) as channel:
        yield circuits_pb2_grpc.CircuitsStub(channel)


def test_top_examples_are_sorted_and_labelled(circuits):
    response = circuits.TopExamples(circuits_pb2.TopExamplesRequest(
        model="mnist_classifier", layer="conv2", channels=[7], dataset="mnist", top_n=4))
    (unit,) = response.units
    assert unit.channel == 7
    assert len(unit.indices) == 4
    assert list(unit.values) == sorted(unit.values, reverse=True)
    assert all(0 <= label <= 9 for label in unit.labels)


def test_attribution_of_a_class_and_a_precise_error(circuits):
    response = circuits.Attribute(circuits_pb2.AttributeRequest(
        model="mnist_classifier", target="logit(0)", layer="conv2",
        input=circuits_pb2.ImageInput(dataset=circuits_pb2.DatasetSlice(
            dataset="mnist", label=0, count=8))))
    scores = [s.score for s in response.scores]
    assert len(scores) == 32 and scores == sorted(scores, reverse=True)
    per_image = np.frombuffer(response.per_image.data, dtype="<f4").reshape(
        tuple(response.per_image.shape))
    assert per_image.shape == (8, 32)
    with pytest.raises(grpc.RpcError) as error:
        circuits.Attribute(circuits_pb2.AttributeRequest(
            model="mnist_classifier", target="logit(0)", layer="conv2",
            input=circuits_pb2.ImageInput(dataset=circuits_pb2.DatasetSlice(
                dataset="mnist", indices=[12345]))))
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "input.dataset.indices[0]" in error.value.details()


def test_unit_labels_name_the_classes_of_the_top_examples(server_address):
    with Client(server_address) as featviz:
        labels = featviz.label_units("mnist_classifier", "conv2")
        assert labels.layers == ["conv2"] and labels.dataset == "mnist"
        assert labels.top_n == 100 and len(labels) == 32
        for unit in labels:
            assert abs(sum(c.fraction for c in unit.classes) - 1) < 1e-9
            assert 0 <= unit.selectivity <= 1
            top = unit.classes[0]
            assert unit.label.endswith(f" {top.class_name}s: "
                                       f"{round(100 * top.fraction)} % of its top 100")
            assert unit.label.startswith(("fires on", "never fires; closest on"))
            assert len(unit.attribution) <= 3
            assert all(a.score > 0 for a in unit.attribution)
        # Every layer but the logits, then the units most selective for 7.
        sevens = featviz.label_units("mnist_classifier", label=7, limit=5)
        assert "fc2" not in sevens.layers and "conv2" in sevens.layers
        assert len(sevens) == 5
        shares = [u.share(7) for u in sevens]
        assert shares == sorted(shares, reverse=True) and shares[-1] > 0
        with pytest.raises(FeatvizError) as error:
            featviz.label_units("mnist_classifier", "conv2", label=10)
        assert "label" in str(error.value)
