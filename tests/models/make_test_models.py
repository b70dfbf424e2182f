#!/usr/bin/python3
"""Build the small TorchScript models the C++ tests load (CTest fixture).

    /usr/bin/python3 tests/models/make_test_models.py --out DIR

Writes into DIR: scripted.pt, traced.pt, residual.pt, tuple_output.pt,
twin_heads.pt, confident.pt (each with a .card.json), no_card.pt (no card),
corrupt.pt (random bytes), not_torchscript.pt (a plain torch.save'd state_dict) and wide.pt (64 MiB of
weights in one layer, to measure the memory a model unload frees), then the
models from the wild of wild_models.py (ResNet-18, MobileNet-like, ...) and
the transformers of make_transformer_models.py (ViTs, an MLP-mixer, a
4-band model), and the hostile_*.pt models of make_hostile_models.py, which
try to read a file and must be refused. Weights
are random but deterministic (torch.manual_seed(0)); nothing is trained or downloaded.
"""
import argparse
import json
import os
from typing import Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Scripted(nn.Module):  # 3x16x16 -> 5
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 8x8
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 4x4
        return self.fc(torch.flatten(x, 1))


class Traced(nn.Module):  # 3x16x16 -> 5
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))  # 16x4x4
        self.classifier = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return F.relu(out + identity)


class Residual(nn.Module):  # 3x16x16 -> 4
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2))  # 16x8x8
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(F.relu(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TupleOutput(nn.Module):  # 3x16x16 -> (logits[3], features[8])
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = torch.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1), 1)
        return self.fc(feats), feats


class TwinHeads(nn.Module):  # 3x16x16 -> (a[3], b[3]): which is the classes?
    """Two heads as wide as the card's class list: featviz cannot tell which
    holds the class scores, so a card without "logits" is refused."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = torch.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1), 1)
        return self.a(feats), self.b(feats)


class Confident(nn.Module):  # 1x8x8 -> 3, class 0 at p ~ 1 whatever the image
    """A model as sure as a trained one gets: its softmax is saturated on
    every image, so prob(c) has no gradient to follow."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)
        with torch.no_grad():
            self.fc.weight.mul_(0.01)
            self.fc.bias.copy_(torch.tensor([30.0, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class BatchMixing(nn.Module):  # 3x16x16 -> 3
    """Each image's features are centred on the batch's mean, as a layer of
    batch statistics does: an image's output depends on what shares its
    batch (alone, its features are all zero), so featviz must never batch
    its jobs with others."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x)).flatten(1)
        return self.fc(h - h.mean(0, keepdim=True))


class NoCard(nn.Module):  # 1x8x8 -> 3
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


class KnownWeights(nn.Module):
    """Hand-set weights with known attributions: conv (1x1, 1 -> 3 channels,
    weights 1, 2, 3) -> flatten -> fc (2 classes). Class 0 reads channel 0
    with weight 1 and channel 1 with 0.5 at every position; class 1 reads
    channel 2 with weight 1 in the bottom-right quadrant only. With `relu`
    (and a conv bias of -0.5 on channel 0) the path is no longer linear."""

    def __init__(self, relu: bool):
        super().__init__()
        self.relu = relu
        self.conv = nn.Conv2d(1, 3, 1)
        self.fc = nn.Linear(3 * 8 * 8, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([-0.5 if relu else 0.0, 0.0, 0.0]))
            w = torch.zeros(2, 3, 8, 8)
            w[0, 0] = 1.0
            w[0, 1] = 0.5
            w[1, 2, 4:, 4:] = 1.0
            self.fc.weight.copy_(w.view(2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.relu:
            y = F.relu(y)
        return self.fc(torch.flatten(y, 1))


class Wide(nn.Module):  # 1x16x16 -> 3, through one 64 MiB layer
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16 * 16, 65536)
        self.fc2 = nn.Linear(65536, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def write_card(out, name, channels, size, classes, extra=None):
    card = {
        "name": name, "version": "1",
        "description": f"Untrained {name} test model for the featviz C++ tests.",
        "input": {"channels": channels, "height": size, "width": size, "range": [0.0, 1.0],
                  "mean": [0.0] * channels, "std": [1.0] * channels},
        "output": "logits",
        "classes": classes,
        "training": {"data": "none (random init, torch.manual_seed(0))", "heldout": "none",
                     "heldout_accuracy": 0.0, "seed": 0},
    }
    card.update(extra or {})  # further card keys ("tokens", "bands")
    path = os.path.join(out, name + ".card.json")
    with open(path, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    print(f"wrote {path}")


def save(module, out, name, shape):
    path = os.path.join(out, name + ".pt")
    module.save(path)
    m = torch.jit.load(path)  # verify: loads back and runs
    y = m(torch.rand(2, *shape))
    kind = "tuple" if isinstance(y, tuple) else list(y.shape)
    print(f"wrote {path}  input {list(shape)} -> {kind}  modules {[n for n, _ in m.named_modules()]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created)")
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)

    save(torch.jit.script(Scripted().eval()), out, "scripted", (3, 16, 16))
    write_card(out, "scripted", 3, 16, list("abcde"))

    traced = Traced().eval()
    save(torch.jit.trace(traced, torch.rand(1, 3, 16, 16)), out, "traced", (3, 16, 16))
    write_card(out, "traced", 3, 16, list("abcde"))

    residual = Residual()
    with torch.no_grad():  # non-default BN affine params and running stats
        for m in residual.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        residual.train()
        for _ in range(5):
            residual(torch.rand(8, 3, 16, 16) * 2.0 + 0.5)
    save(torch.jit.script(residual.eval()), out, "residual", (3, 16, 16))
    write_card(out, "residual", 3, 16, ["w", "x", "y", "z"])

    save(torch.jit.script(TupleOutput().eval()), out, "tuple_output", (3, 16, 16))
    write_card(out, "tuple_output", 3, 16, ["p", "q", "r"])  # no "logits": inferred

    save(torch.jit.script(BatchMixing().eval()), out, "batch_mixing", (3, 16, 16))
    write_card(out, "batch_mixing", 3, 16, ["p", "q", "r"])

    save(torch.jit.script(NoCard().eval()), out, "no_card", (1, 8, 8))

    for name, relu in (("known_weights", False), ("known_weights_relu", True)):
        save(torch.jit.script(KnownWeights(relu).eval()), out, name, (1, 8, 8))
        write_card(out, name, 1, 8, ["a", "b"])
    with torch.no_grad():
        wide = Wide().eval()
    save(torch.jit.script(wide), out, "wide", (1, 16, 16))
    write_card(out, "wide", 1, 16, ["a", "b", "c"])

    path = os.path.join(out, "corrupt.pt")
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    print(f"wrote {path}  (4096 random bytes)")

    path = os.path.join(out, "not_torchscript.pt")
    torch.save(Scripted().state_dict(), path)
    print(f"wrote {path}  (torch.save'd state_dict)")

    import wild_models  # beside this file
    wild_models.build(out)

    import make_transformer_models  # beside this file
    make_transformer_models.build(out)

    import make_hostile_models  # beside this file
    make_hostile_models.build(out)

    # Later additions, seeded on their own so that the models above keep
    # their weights.
    torch.manual_seed(27)
    save(torch.jit.script(TwinHeads().eval()), out, "twin_heads", (3, 16, 16))
    write_card(out, "twin_heads", 3, 16, ["p", "q", "r"])  # no "logits": ambiguous
    save(torch.jit.script(Confident().eval()), out, "confident", (1, 8, 8))
    write_card(out, "confident", 1, 8, ["sure", "never", "nope"])


if __name__ == "__main__":
    main()
