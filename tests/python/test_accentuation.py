"""Feature accentuation (render(accentuate=...); docs/trust.md) from the
Python client against the real featviz-server hosting the MNIST test set
(../shared/data/mnist).

Uses the same environment as test_client.py.
"""

from __future__ import annotations


import numpy as np
import pytest

from featviz_client import AccentuationOutcome, Client, FeatvizError
from mnist_server import serving_mnist, mnist_digit as digit

MODEL = "mnist_classifier"


@pytest.fixture(scope="module")
def featviz():
    with serving_mnist() as address, Client(address) as client:
        yield client


def test_accentuating_a_dataset_image_raises_the_unit_near_the_seed(featviz):
    result = featviz.render(MODEL, "channel(conv2, 2)", accentuate=12, seed=1)
    assert result.steps == 64  # An accentuation's default.
    assert "l2(dataset(12))" in result.objective
    assert len(result.accentuation) == 1
    outcome = result.accentuation[0]
    assert isinstance(outcome, AccentuationOutcome)
    assert outcome.value > outcome.seed_value > 0
    assert outcome.factor == pytest.approx(outcome.value / outcome.seed_value)
    seed = digit(12)
    distance = float(np.sqrt(((result.images[0] - seed) ** 2).mean()))
    assert outcome.pixel_distance == pytest.approx(distance, abs=1e-4)
    assert outcome.factor >= 1.5
    assert outcome.pixel_distance < 0.2


def test_accentuation_from_an_array_a_named_dataset_and_a_layer(featviz):
    sent = featviz.render(MODEL, "channel(conv2, 2)", accentuate=digit(12), seed=1,
                          steps=64)
    assert "l2(reference(0))" in sent.objective
    named = featviz.render(MODEL, "channel(conv2, 2)", accentuate=("mnist", 12), seed=1,
                           steps=64)
    assert "l2(dataset(mnist, 12))" in named.objective
    # The same seed pixels, the same start, the same picture.
    np.testing.assert_allclose(sent.images, named.images, atol=1e-5)
    layer = featviz.render(MODEL, "channel(conv2, 2)", accentuate=12,
                           accentuate_layer="conv1", accentuate_weight=2.0, steps=16)
    assert "2 * inversion_l2(conv1, dataset(12))" in layer.objective
    assert len(layer.accentuation) == 1


def test_an_ordinary_render_has_no_accentuation(featviz):
    assert featviz.render(MODEL, "channel(conv2, 2)", steps=2).accentuation == []


def test_hostile_accentuation_values_are_refused_by_name(featviz):
    with pytest.raises(FeatvizError) as err:
        featviz.render(MODEL, "channel(conv2, 2)", accentuate=12,
                       accentuate_weight=float("nan"), steps=2)
    assert err.value.code == "INVALID_ARGUMENT" and "accentuate.weight" in str(err.value)
    with pytest.raises(FeatvizError) as err:
        featviz.render(MODEL, "channel(conv2, 2)", accentuate=12,
                       accentuate_layer="conv9", steps=2)
    assert "accentuate.layer" in str(err.value)
    with pytest.raises(FeatvizError) as err:
        featviz.render(MODEL, "channel(conv2, 2)", accentuate=20000, steps=2)
    assert err.value.code == "OUT_OF_RANGE"
    with pytest.raises(ValueError, match="accentuate"):
        featviz.render(MODEL, "channel(conv2, 2)", accentuate="12", steps=2)
    with pytest.raises(ValueError, match="need accentuate"):
        featviz.render(MODEL, "channel(conv2, 2)", accentuate_layer="conv1", steps=2)
