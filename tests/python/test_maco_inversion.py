"""MaCo renders with their transparency maps, and feature inversion and
caricature objectives, from the Python client against the real
featviz-server hosting the MNIST test set (../shared/data/mnist).

Uses the same environment as test_client.py.
"""

from __future__ import annotations


import numpy as np
import pytest

from featviz_client import Client, FeatvizError
from mnist_server import serving_mnist, mnist_digit as first_digit

MODEL = "mnist_classifier"


@pytest.fixture(scope="module")
def featviz():
    with serving_mnist() as address, Client(address) as client:
        yield client


def test_maco_render_returns_a_transparency_map(featviz):
    result = featviz.render(MODEL, "logit(8)", parameterization="maco", steps=128,
                            batch=2, seed=3)
    assert result.maco_magnitude.startswith("dataset mnist")
    assert result.images.shape == (2, 1, 28, 28)
    assert result.transparency.shape == (2, 1, 28, 28)
    assert (result.transparency >= 0).all() and result.transparency.sum() > 0
    assert len(result.transparency_png) == 2
    assert result.probs[:, 8].min() > 0.5

    fft = featviz.render(MODEL, "logit(8)", parameterization="fft", steps=4)
    assert fft.transparency is None and fft.transparency_png == [] and fft.maco_magnitude == ""
    # Left open, a gray model on a server hosting MNIST renders with MaCo.
    default = featviz.render(MODEL, "logit(8)", steps=4)
    assert default.maco_magnitude == "dataset mnist (2000 images)"
    assert len(default.transparency_png) == 1


def test_maco_with_the_1_over_f_default(featviz):
    result = featviz.render(MODEL, "logit(1)", parameterization="maco",
                            maco_dataset="1/f", steps=8)
    assert result.maco_magnitude == "1/f"


def test_inversion_of_a_sent_digit_and_of_a_dataset_index(featviz):
    digit = first_digit()
    sent = featviz.render(MODEL, "inversion(conv2, reference(0))", references=[digit],
                          steps=256, seed=0)
    assert sent.terms[0].final_value > 0.8  # 0.835 in core's test
    a = sent.images[0].ravel() - sent.images[0].mean()
    b = digit.ravel() - digit.mean()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.35

    # The same image named by its dataset index, in the structured form.
    hosted = featviz.render(MODEL, {"kind": "inversion", "layer": "conv2",
                                    "reference": ("mnist", 0)}, steps=256, seed=0)
    assert hosted.objective == "inversion(conv2, dataset(mnist, 0))"
    assert hosted.terms[0].final_value > 0.8


def test_caricature_goes_beyond_the_reference(featviz):
    result = featviz.render(MODEL, {"kind": "caricature", "layer": "conv2", "reference": 0},
                            references=[first_digit(1)], steps=128, seed=0)
    assert result.objective == "caricature(conv2, reference(0))"
    assert result.terms[0].final_value > 0.7  # 0.88 in core's test


def test_a_missing_reference_is_out_of_range(featviz):
    with pytest.raises(FeatvizError) as err:
        featviz.render(MODEL, "inversion(conv2, reference(1))", references=[first_digit()],
                       steps=4)
    assert err.value.code == "OUT_OF_RANGE"
    assert "references[1]" in err.value.message
