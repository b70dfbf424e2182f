#!/usr/bin/python3
"""Build the 4-band (red, green, blue, near infrared) test model for the
featviz C++ and Python tests (CTest fixture).

    /usr/bin/python3 tests/models/make_multiband_model.py --out DIR

Writes DIR/multiband.pt, a scripted 4x32x32 CNN (conv1 4->16, conv2 16->32,
each ReLU and 2x2 max-pool, fc 32*8*8 -> 6 classes "u".."z"), and its card
DIR/multiband.card.json with "input.channels": 4 and
"bands": {"names": ["red", "green", "blue", "nir"], "composite": [0, 1, 2]}.
The architecture is the one of multiband.pt in make_transformer_models.py.
Weights are random but deterministic (torch.manual_seed(0)); nothing is
trained or downloaded.
"""
import argparse
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

SIDE = 32
BANDS = ["red", "green", "blue", "nir"]
CLASSES = list("uvwxyz")


class MultiBand(nn.Module):  # 4x32x32 (red, green, blue, nir) -> 6
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 16x16
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 8x8
        return self.fc(torch.flatten(x, 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created)")
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    path = os.path.join(out, "multiband.pt")
    torch.jit.script(MultiBand().eval()).save(path)
    model = torch.jit.load(path)  # loads back, runs, has the right output shape
    y = model(torch.zeros(2, len(BANDS), SIDE, SIDE))
    assert list(y.shape) == [2, len(CLASSES)], y.shape
    card = {
        "name": "multiband", "version": "1",
        "description": "Untrained 4-band (RGB + NIR) test model for the featviz tests.",
        "input": {"channels": len(BANDS), "height": SIDE, "width": SIDE,
                  "range": [0.0, 1.0], "mean": [0.0] * len(BANDS),
                  "std": [1.0] * len(BANDS)},
        "output": "logits",
        "classes": CLASSES,
        "bands": {"names": BANDS, "composite": [0, 1, 2]},
    }
    with open(os.path.join(out, "multiband.card.json"), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    print(f"wrote {path}  input [{len(BANDS)}, {SIDE}, {SIDE}] -> {list(y.shape)}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
