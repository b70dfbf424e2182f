"""End-to-end tests of the Python client's multi-band pictures, `units=` (a
layer at once) and `compare` against the real featviz-server.

The server hosts a 4-band (RGB + NIR) model made by
tests/models/make_transformer_models.py (--only multiband), the bundled MNIST classifier, and a
repository model "mnist" in two versions (2 with its last layer halved).
Environment as for test_client.py.
"""

from __future__ import annotations

import io
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featviz_client import (Client, Comparison, FeatvizError, UnitRender, band_sheet,
                            composite, grid)
from featviz_client.units import find_unit_template, parse_units

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"^featviz-server listening on (\S+:\d+)$")


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    models = Path(os.environ.get("FEATVIZ_MODELS_DIR", str(REPO / "models")))
    subprocess.run([sys.executable, str(REPO / "tests/models/make_transformer_models.py"),
                    "--out", str(root), "--only", "multiband"],
                   check=True, capture_output=True, timeout=300)
    for name in ("mnist_classifier.pt", "mnist_classifier.card.json"):
        shutil.copy(models / name, root / name)
    for version in ("1", "2"):
        (root / "mnist" / version).mkdir(parents=True)
        shutil.copy(models / "mnist_classifier.card.json",
                    root / "mnist" / version / "model.card.json")
    shutil.copy(models / "mnist_classifier.pt", root / "mnist" / "1" / "model.pt")
    subprocess.run([sys.executable, "-c",
                    "import sys, torch\n"
                    "m = torch.jit.load(sys.argv[1])\n"
                    "with torch.no_grad():\n"
                    "    m.fc2.weight.mul_(0.5)\n"
                    "m.save(sys.argv[2])\n",
                    str(models / "mnist_classifier.pt"),
                    str(root / "mnist" / "2" / "model.pt")],
                   check=True, capture_output=True, timeout=300)
    return root


@pytest.fixture(scope="module")
def client(repository):
    binary = os.environ.get("FEATVIZ_SERVER_BIN", str(REPO / "build/server/featviz-server"))
    server = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--model_dir",
                               str(repository)], stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def drain() -> None:
        for line in server.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    address = None
    while address is None:
        line = lines.get(timeout=120)
        if line is None:
            pytest.fail(f"featviz-server exited ({server.wait()}) before listening")
        match = READY.match(line.strip())
        address = match.group(1) if match else None
    with Client(address) as featviz:
        yield featviz
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0


# ------------------------------------------------------------------ bands

def test_model_input_names_its_bands(client):
    spec = client.get_model("multiband").input
    assert spec.channels == 4
    assert list(spec.band_names) == ["red", "green", "blue", "nir"]
    assert list(spec.composite) == [0, 1, 2]


def test_four_band_render_shows_its_composite_and_its_bands(client, tmp_path):
    result = client.render("multiband", "channel(conv2, 3)", steps=16, seed=0, batch=2)
    assert result.images.shape == (2, 4, 32, 32)
    assert result.composite == [0, 1, 2]
    assert result.band_names == ["red", "green", "blue", "nir"]
    assert len(result.png) == len(result.band_png) == 2
    assert Image.open(io.BytesIO(result.png[0])).mode == "RGB"
    pictures = result.pictures()
    assert pictures.shape == (2, 3, 32, 32)
    assert np.array_equal(pictures[:, 2], result.images[:, 2])
    assert [im.mode for im in result.to_pil()] == ["RGB", "RGB"]
    sheet = result.grid()
    assert sheet.size[0] == 2 + 2 * (128 + 2)  # two 32-px cells magnified 4x
    bands = result.band_grid()
    assert bands.size[0] == 2 + 4 * (128 + 2)  # four bands a row
    result.show(tmp_path / "mb.png")
    bands.save(tmp_path / "mb.bands.png")
    print(f"look at {tmp_path}/mb.png and mb.bands.png")
    # PNGs only: the server's composites and band sheets.
    only_png = client.render("multiband", "logit(1)", steps=4, seed=0, tensor=False)
    assert only_png.images is None
    assert only_png.pictures().shape == (1, 3, 32, 32)
    assert only_png.band_grid().size[0] == 4 + 4 * (128 + 4)


def test_grid_refuses_bands_without_a_composite():
    bands = np.random.rand(2, 4, 8, 8).astype(np.float32)
    with pytest.raises(ValueError, match=r"have 4 bands, and no composite"):
        grid(bands)
    assert grid(bands, composite=[3, 2, 1]).mode == "RGB"
    with pytest.raises(ValueError, match=r"composite band 4 is out of range for images of 4"):
        composite(bands, [4, 0, 1])
    assert band_sheet(bands, ["r", "g", "b", "n"]).size[0] == 2 + 4 * (112 + 2)


def test_a_three_band_reference_for_four_bands_is_refused(client):
    with pytest.raises(FeatvizError, match=r"references\[0\] has shape \[3, 32, 32\], but "
                                           r"model multiband takes \[4, 32, 32\]"):
        client.render("multiband", "inversion(conv1, reference(0))", steps=2,
                      references=[np.zeros((3, 32, 32), np.float32)])


# ------------------------------------------------------------------ units

def test_units_render_a_layer_in_one_request(client, tmp_path):
    layer = client.render("mnist_classifier", "channel(conv2, *)", steps=16, seed=0)
    assert isinstance(layer, UnitRender)
    assert layer.units == list(range(32))
    assert len(layer.results) == 1
    assert layer.images.shape == (32, 1, 28, 28)
    assert np.all(np.isfinite(layer.values))
    assert layer.labels()[5] == f"conv2:5 {layer.values[5]:.2f}"
    assert layer.grid().size[0] == 2 + 6 * (112 + 2)
    layer.show(tmp_path / "conv2.png")


def test_units_list_with_other_terms_and_a_split(client):
    few = client.render("mnist_classifier", "neuron(fc1, *) - 0.01 * tv()",
                        units="3,5,9", steps=8, seed=1)
    assert few.units == [3, 5, 9]
    assert "- 0.01 * tv()" in few.results[0].objective
    many = "channel(conv2, *)" + " - 0.0001 * l1()" * 230
    split = client.render("mnist_classifier", many, units=range(32), steps=2,
                          seed=1, tensor=False)
    assert [len(r.png) for r in split.results] == [26, 6]
    assert split.pictures().shape == (32, 1, 28, 28)


@pytest.mark.parametrize("objective, units, message", [
    ("channel(conv2, *)", "99-5", r"range 99-5 runs backwards"),
    ("neuron(fc1, *)", 1000, r"unit 1000 is out of range for layer fc1 with 64 channels"),
    ("channel(conv2, *) + neuron(fc1, *)", None, r"has 2 '\*'"),
    ("logit(*)", None, r"has no layer to take units of"),
    ("channel(conv2, 5)", "3", r"units= needs an objective with '\*'"),
    ("channel(conv9, *)", None, r"has no layer conv9"),
])
def test_bad_units_and_templates_raise_value_error(client, objective, units, message):
    with pytest.raises(ValueError, match=message):
        client.render("mnist_classifier", objective, units=units, steps=2)


def test_unit_template_matches_the_cli():
    template = find_unit_template("2 * conv2:* - 0.01 * tv()")
    assert template.expand([4, 7]) == (
        "2 * (channel(conv2, 4, batch=0) + channel(conv2, 7, batch=1)) - 0.01 * tv()")
    assert template.other_terms == 1
    assert parse_units("0-2,9", "conv2", 32) == [0, 1, 2, 9]


# ---------------------------------------------------------------- compare

def test_compare_two_versions_with_one_seed(client, tmp_path):
    cmp = client.compare("mnist/1", "mnist@2", "logit(3) + channel(conv2, 5)", steps=16)
    assert isinstance(cmp, Comparison)
    assert cmp.labels == ["mnist@1", "mnist@2"]
    a, b = cmp.results
    assert a.seed == b.seed == cmp.seed
    assert a.model_hash != b.model_hash
    assert a.terms[0].final_value != b.terms[0].final_value
    rows = dict((name, (x, y)) for name, x, y in cmp.rows())
    assert {"objective total", "top class", "conv2 mean", "conv2 max"} <= set(rows)
    assert "mnist@1" in cmp.table() and "conv2 max" in cmp.table()
    sheet = cmp.show(tmp_path / "cmp.png")
    assert sheet.size[0] == 2 + 280 + 2  # one 28-px image magnified 10x
    data = cmp.to_dict()
    assert [m["label"] for m in data["models"]] == ["mnist@1", "mnist@2"]
    with pytest.raises(ValueError, match=r"compare renders one objective"):
        client.compare("mnist@1", "mnist@2", "channel(conv2, *)")
