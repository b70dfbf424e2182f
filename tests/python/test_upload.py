"""docs/models.md step by step against a real featviz-server: a researcher
exports a model of their own with torch.jit (script and trace), writes its
card, uploads it with Client.upload_model, finds its layers and outputs, and
renders; a client without the uploader role is refused.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Dict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from featviz_client import Client, FeatvizError

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"^featviz-server listening on (\S+:\d+)$")
UPLOADER = "uploader-python-0123456789-token"
READER = "reader-python-0123456789-token"


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    """featviz-server with an empty model repository and tokens."""
    d = tmp_path_factory.mktemp("upload")
    (d / "repo").mkdir()
    (d / "tokens").write_text(f"{UPLOADER} lab uploader\n{READER} reader user\n")
    binary = os.environ.get("FEATVIZ_SERVER_BIN", str(REPO / "build/server/featviz-server"))
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--model_dir", str(d / "repo"),
         "--tokens_file", str(d / "tokens")],
        stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def drain() -> None:
        for line in server.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    found = None
    while found is None:
        line = lines.get(timeout=120)
        if line is None:
            pytest.fail(f"featviz-server exited ({server.wait()}) before listening")
        match = READY.match(line.strip())
        if match:
            found = match.group(1)
    yield found
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0


# Step 1 of the guide: a model of one's own, with dropout and batch norm, a
# functional op in forward, and two heads returned as a dict.
class BirdNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.dropout = nn.Dropout(0.5)
        self.species = nn.Linear(16, 4)
        self.embed = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.conv2(x))
        f = self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return {"species": self.species(f), "embedding": self.embed(f)}


def test_the_guide_step_by_step(address, tmp_path):
    torch.manual_seed(0)
    model = BirdNet()
    model.eval()                                # step 1: eval mode first
    scripted = torch.jit.script(model)
    scripted.save(str(tmp_path / "birdnet.pt"))

    card = {                                    # step 2: the card
        "name": "birdnet", "version": "1",
        "description": "the guide's example",
        "input": {"channels": 3, "height": 24, "width": 32, "range": [0, 1],
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "output": "logits", "logits": "species",
        "classes": ["robin", "wren", "tit", "finch"],
    }

    with Client(address, token=UPLOADER) as client:   # step 3: upload
        uploaded = client.upload_model(tmp_path / "birdnet.pt", card=card)
    assert (uploaded.name, uploaded.version, uploaded.path) == ("birdnet", "1",
                                                                "birdnet/1/model.pt")

    with Client(address, token=READER) as client:     # step 4: layers, outputs
        m = client.get_model("birdnet")
        paths = [layer.path for layer in m.layers]
        assert paths == ["conv1", "bn1", "conv2", "dropout", "species", "embed"]
        assert sorted(o.name for o in m.outputs) == ["embedding", "species"]
        assert m.logits_output == "species"
        assert list(m.class_names) == card["classes"]
        assert (m.input.height, m.input.width) == (24, 32)

        r = client.render("birdnet", "channel(conv2, 3) + output(embedding, 2)",
                          steps=16, seed=0)                           # step 5
        assert r.images.shape == (1, 3, 24, 32)
        assert r.terms[0].final_value > r.trace[0][0]
        r = client.render("birdnet", "prob(2)", steps=32, seed=0)
        assert r.terms[0].final_value > r.trace[0][0]   # class 2 gained


def test_a_traced_sequential_with_inputs_in_minus_one_to_one(address, tmp_path):
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval()
    torch.jit.trace(seq, torch.rand(1, 1, 12, 12)).save(str(tmp_path / "seq.pt"))
    (tmp_path / "seq.card.json").write_text(json.dumps(
        {"name": "seq", "input": {"channels": 1, "height": 12, "width": 12,
                                  "range": [-1, 1]}}))
    with Client(address, token=UPLOADER) as client:
        # The card beside the model is found by itself.
        m = client.upload_model(tmp_path / "seq.pt")
    assert m.name == "seq"
    assert m.logits_output == ""              # a [B, 4, 12, 12] output: no classes
    with Client(address, token=READER) as client:
        m = client.get_model("seq")
        assert [layer.path for layer in m.layers] == ["0", "1", "2", "3"]
        assert len(m.class_names) == 0
        r = client.render("seq", "channel('2', 1)", steps=8)
        assert r.objective == "channel('2', 1)"
        with pytest.raises(FeatvizError) as refused:
            client.render("seq", "logit(0)", steps=1)
        assert refused.value.code == "INVALID_ARGUMENT"
        assert "seq" in refused.value.message


def test_uploading_needs_the_uploader_role(address, tmp_path):
    torch.jit.script(nn.Conv2d(1, 2, 3).eval()).save(str(tmp_path / "tiny.pt"))
    with Client(address, token=READER) as client:
        with pytest.raises(FeatvizError) as refused:
            client.upload_model(tmp_path / "tiny.pt", name="tiny")
    assert refused.value.code == "PERMISSION_DENIED"
    assert "uploader" in refused.value.message
