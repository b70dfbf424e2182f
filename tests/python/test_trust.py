"""Exemplars and path similarity beside a render, from the Python client
(Client.render(exemplars=, path_similarity=, trust_dataset=)).

Uses the same environment as test_client.py, plus the MNIST test set in
../shared/data/mnist as the server's dataset directory.
"""

from __future__ import annotations


import pytest

from featviz_client import Client, FeatvizError
from mnist_server import serving_mnist


@pytest.fixture(scope="module")
def client():
    with serving_mnist() as address, Client(address) as c:
        yield c


def test_exemplars_and_path_similarity_come_with_the_picture(client):
    result = client.render("mnist_classifier", "channel(conv2, 4)", steps=128, seed=1,
                           parameterization="fft", exemplars=3, path_similarity=True,
                           trust_dataset="mnist")
    ex = result.exemplars
    assert ex is not None and ex.dataset == "mnist" and ex.unit == "channel(conv2, 4)"
    assert len(ex.examples) == 3
    values = [e.value for e in ex.examples]
    assert values == sorted(values, reverse=True)
    assert all(e.png.startswith(b"\x89PNG") and e.activation_png.startswith(b"\x89PNG")
               for e in ex.examples)
    (check,) = result.path_similarity
    assert 0.0 <= check.score <= 1.0
    assert check.reliable == (check.score >= check.threshold)
    assert [l.layer for l in check.layers] == ["conv1", "conv2"]
    assert str(check).startswith("path similarity ")
    # Shown as the CLI's x.exemplars.png: the images, then their maps.
    sheet = ex.grid(scale=2)
    assert sheet.width >= 3 * 56 and sheet.height >= 2 * 56
    assert sheet.getpixel((0, 0)) == (255, 255, 255)  # the sheet's margin


def test_a_render_without_trust_has_none_and_bad_values_are_named(client):
    result = client.render("mnist_classifier", "channel(conv2, 4)", steps=16, seed=1,
                           parameterization="fft")
    assert result.exemplars is None and result.path_similarity == []
    with pytest.raises(FeatvizError, match="trust.exemplars"):
        client.render("mnist_classifier", "channel(conv2, 4)", steps=16, exemplars=65)
    with pytest.raises(FeatvizError, match="has no unit"):
        client.render("mnist_classifier", "tv()", steps=16, path_similarity=True)
