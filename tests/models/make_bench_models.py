#!/usr/bin/python3
"""Build the TorchScript models the benchmarks load (not the tests: see
make_test_models.py for those).

    /usr/bin/python3 tests/models/make_bench_models.py --out DIR

Writes into DIR: classic_cnn.pt and classic_cnn.card.json, the network of
PyTorch's MNIST example (conv 1->32 k3, conv 32->64 k3, max-pool 2, dropout,
fc 9216->128, fc 128->10, log_softmax), the size of model researchers bring.
About 1.2 M weights, 48 MFLOP per image for forward and backward together.
And resnet18_128.pt + card: torchvision's ResNet-18 (random weights) with an
RGB 128x128 ImageNet-normalised input, the deep network of the issue-26
benchmarks (11.7 M weights). Weights are random but deterministic
(torch.manual_seed(0)): the benchmarks measure speed, not what the network
has learnt. Runs in a few seconds, so
the file is built, not committed.
"""
import argparse
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


class ClassicCnn(nn.Module):  # 1x28x28 -> 10 log-probabilities
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)    # 28 -> 26
        self.conv2 = nn.Conv2d(32, 64, 3, 1)   # 26 -> 24, pool -> 12
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    module = torch.jit.script(ClassicCnn().eval())
    with torch.no_grad():
        assert module(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # Written under a temporary name and renamed, so that a build that runs
    # this twice at once never loads half a file.
    path = os.path.join(args.out, "classic_cnn.pt")
    module.save(path + ".tmp")
    os.replace(path + ".tmp", path)
    card = {
        "name": "classic_cnn",
        "version": "1",
        "description": ("PyTorch's MNIST example network (2 conv + max-pool + 2 fc, "
                        "log_softmax output) with random weights, for benchmarks."),
        "input": {"channels": 1, "height": 28, "width": 28, "range": [0.0, 1.0],
                  "mean": [0.1307], "std": [0.3081]},
        "output": "logits",
        "classes": [str(d) for d in range(10)],
    }
    with open(os.path.join(args.out, "classic_cnn.card.json"), "w") as f:
        json.dump(card, f, indent=2)
    print(f"wrote {path}")
    write_resnet18(args.out)


def write_resnet18(out):
    import torchvision  # Debian's python3-torchvision
    torch.manual_seed(0)
    module = torch.jit.script(torchvision.models.resnet18(weights=None).eval())
    with torch.no_grad():
        assert module(torch.zeros(2, 3, 128, 128)).shape == (2, 1000)
    path = os.path.join(out, "resnet18_128.pt")
    module.save(path + ".tmp")
    os.replace(path + ".tmp", path)
    card = {
        "name": "resnet18_128",
        "version": "1",
        "description": "torchvision ResNet-18 with random weights at 128 px, for benchmarks.",
        "input": {"channels": 3, "height": 128, "width": 128, "range": [0.0, 1.0],
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "output": "logits",
    }
    with open(os.path.join(out, "resnet18_128.card.json"), "w") as f:
        json.dump(card, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
