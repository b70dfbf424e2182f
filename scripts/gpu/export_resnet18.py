#!/usr/bin/env python3
"""Writes resnet18.pt (TorchScript) and resnet18.card.json: ResNet-18 for
3x224x224 ImageNet-style inputs with seeded random weights, the second model
of the GPU figures (docs/gpu.md).

The network is written out here in plain torch (the same modules, names and
shapes as torchvision.models.resnet18), so the file can be made wherever
torch is, including a GPU machine without torchvision; --check compares it
with Debian's python3-torchvision, weight for weight and output for output.
The 45 MB file is generated, never committed.

  /usr/bin/python3 scripts/gpu/export_resnet18.py --out DIR [--check]
"""
import argparse
import json
import os

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 128, 256, 512]
        cin = 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}",
                    nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def check_against_torchvision(model):
    import torchvision  # Debian: python3-torchvision
    reference = torchvision.models.resnet18(weights=None).eval()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs), "parameter names differ from torchvision"
    for name in ours:
        assert ours[name].shape == theirs[name].shape, name
    reference.load_state_dict(ours)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        diff = (reference(x) - model(x)).abs().max().item()
    assert diff < 1e-4, f"outputs differ from torchvision by {diff}"
    print(f"export_resnet18: same names, shapes and outputs as torchvision "
          f"{torchvision.__version__} (max difference {diff:.2e})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="compare with torchvision.models.resnet18")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = ResNet18().eval()
    if args.check:
        check_against_torchvision(model)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "resnet18.pt")
    torch.jit.script(model).save(path)
    card = {
        "name": "resnet18",
        "version": "random-seed-%d" % args.seed,
        "description": "ResNet-18 (torchvision's architecture) with random "
                       "weights, for GPU throughput figures.",
        "input": {"channels": 3, "height": 224, "width": 224,
                  "range": [0.0, 1.0],
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "output": "logits",
    }
    with open(os.path.join(args.out, "resnet18.card.json"), "w") as f:
        json.dump(card, f, indent=2)
    print(f"export_resnet18: wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
