#!/usr/bin/python3
"""Test models that look like what labs bring (issue 14), for
make_test_models.py: architectures and output structures that were not
written for featviz. Weights are random (torch.manual_seed) and nothing
is downloaded; the class heads of the small nets are fitted by a linear probe
on synthetic patterns (fit_heads), and the MobileNet-like net is trained
briefly on them (train_classifier).

    /usr/bin/python3 tests/models/wild_models.py --out DIR   # these alone

Writes into DIR, each with a .card.json:
  resnet18.pt          torchvision ResNet-18, scripted, ImageNet card (224 px,
                       ImageNet mean/std, 1000 classes); its random head is
                       scaled to a trained network's logit range
  mobilenet_like.pt    depthwise-separable blocks (MobileNet v1 style), 10 classes
  sequential.pt        a top-level nn.Sequential: layers named 0, 1, 2, ...
  face_heads.pt        forward returns a tuple (age, gender, ethnicity) of
                       logits; the card says "logits": 1
  dict_heads.pt        forward returns {"species": logits, "mask": map}; card
                       "logits": "species"
  backbone.pt          returns a [B, 32, 4, 4] feature map: no classes
  wide_input.pt        non-square input, 3 x 24 x 40
  log_softmax.pt       ends in log_softmax; card "output": "log_probs"
  odd_names.pt         layers named "block-1" and "block-2" (dashes) and one
                       called only inside an `if` (cannot be tapped)
"""
import argparse
import json
import math
import os
from collections import OrderedDict
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
RESNET_HEAD_SCALE = 4.0


def dw_separable(cin, cout, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin), nn.ReLU6(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class MobileNetLike(nn.Module):  # 3x32x32 -> 10
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(dw_separable(16, 32, 1), dw_separable(32, 64, 2),
                                    dw_separable(64, 64, 1))
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(self.dropout(x))


def sequential():  # 1x16x16 -> 4
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 4))


class FaceHeads(nn.Module):  # 3x32x32 -> (age[5], gender[2], ethnicity[4])
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.age = nn.Linear(32, 5)
        self.gender = nn.Linear(32, 2)
        self.ethnicity = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = F.adaptive_avg_pool2d(self.trunk(x), 1).flatten(1)
        return self.age(f), self.gender(f), self.ethnicity(f)


class DictHeads(nn.Module):  # 3x32x32 -> {"species": [6], "mask": [1, 16, 16]}
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.mask_head = nn.Conv2d(16, 1, 1)
        self.species_head = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        f = self.encoder(x)
        return {"species": self.species_head(f.mean(dim=[2, 3])),
                "mask": self.mask_head(f)}


class Backbone(nn.Module):  # 3x32x32 -> [32, 4, 4], no classes
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.MaxPool2d(2))
        self.layer2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                    nn.MaxPool2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(x))


class WideInput(nn.Module):  # 3x24x40 -> 3
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 6 * 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)   # 12x20
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)   # 6x10
        return self.fc(torch.flatten(x, 1))


class LogSoftmax(nn.Module):  # 1x16x16 -> log p[5]
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return F.log_softmax(self.fc(torch.flatten(x, 1)), dim=1)


class OddNames(nn.Module):  # 3x16x16 -> 3
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("block-1", nn.Conv2d(3, 8, 3, padding=1)), ("relu-1", nn.ReLU()),
            ("block-2", nn.Conv2d(8, 8, 3, padding=1)), ("relu-2", nn.ReLU())]))
        self.rarely = nn.Conv2d(8, 8, 1)  # called only inside an `if`
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if bool(x.mean() > 1000.0):
            x = self.rarely(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def card(out, name, channels, height, width, classes, extra=None, mean=None, std=None,
         description=None):
    c = {"name": name, "version": "1",
         "description": description or f"Untrained {name} test model (issue 14: models from the wild).",
         "input": {"channels": channels, "height": height, "width": width, "range": [0.0, 1.0],
                   "mean": mean or [0.0] * channels, "std": std or [1.0] * channels},
         "output": "logits"}
    if classes is not None:
        c["classes"] = classes
    c.update(extra or {})
    path = os.path.join(out, name + ".card.json")
    with open(path, "w") as f:
        json.dump(c, f, indent=2)
        f.write("\n")


def save(module, out, name, shape):
    path = os.path.join(out, name + ".pt")
    module.save(path)
    m = torch.jit.load(path)  # verify: loads back and runs
    y = m(torch.rand(2, *shape))
    if isinstance(y, torch.Tensor):
        kind = list(y.shape)
    elif isinstance(y, dict):
        kind = {k: list(v.shape) for k, v in y.items()}
    else:
        kind = [list(t.shape) for t in y]
    print(f"wrote {path}  input {list(shape)} -> {kind}")


def patterns(k, n, channels, height, width, gen):
    """n synthetic images of "class" k: a grating whose orientation, frequency
    and colour depend on k, with random phase and noise."""
    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    angle = math.pi * (k * 0.61803 % 1.0)
    freq = 2.0 + 3.0 * (k % 4)
    phase = torch.rand(n, 1, 1, 1, generator=gen) * 2 * math.pi
    wave = torch.sin(2 * math.pi * freq * (math.cos(angle) * xs + math.sin(angle) * ys) + phase)
    colour = torch.tensor([(k * 0.37 + 0.2 * c) % 1.0 for c in range(channels)]).view(1, channels, 1, 1)
    images = 0.5 + 0.35 * wave * (0.3 + colour) + 0.05 * torch.randn(n, channels, height, width, generator=gen)
    return images.clamp(0, 1)


def fit_heads(model, heads, normalise, channels, height, width, per_class=48):
    """A linear probe: each class head (nn.Linear) is refitted by ridge
    regression on the random backbone's features of synthetic images, one
    pattern per class. Random heads give every class nearly the same score
    whatever the image (no picture reaches prob 0.9); a fitted head, like a
    trained one, separates classes along directions the backbone can see."""
    gen = torch.Generator().manual_seed(14)
    model.eval()
    for head in heads:
        n = head.out_features
        images = torch.cat([patterns(k, per_class, channels, height, width, gen) for k in range(n)])
        captured = []
        hook = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
        with torch.no_grad():
            model(normalise(images))
        hook.remove()
        f = captured[0]
        f = torch.cat([f, torch.ones(f.shape[0], 1)], 1)
        target = torch.full((f.shape[0], n), -4.0)
        for k in range(n):
            target[k * per_class:(k + 1) * per_class, k] = 4.0
        ridge = 1e-3 * torch.eye(f.shape[1])
        w = torch.linalg.solve(f.T @ f + ridge, f.T @ target)  # [features + 1, n]
        with torch.no_grad():
            head.weight.copy_(w[:-1].T)
            head.bias.copy_(w[-1])


def train_classifier(model, normalise, channels, height, width, classes, epochs=10,
                     per_class=48, batch=40, lr=0.01):
    """A brief training run, end to end: cross-entropy on synthetic images of
    `classes` patterns (patterns() above), Adam, a few epochs. What a lab's
    trained classifier has and a random one lacks: batch-norm statistics of
    its data, features that tell its classes apart, and confident logits.
    (A linear probe on this random MobileNet's features is not enough: with
    default initialisation and ReLU6 its pooled features barely vary from one
    image to another, and no picture reaches prob 0.9.) Deterministic: the
    data and the batch order come from fixed seeds, dropout from its own fork
    of the global generator (the models built after this one get the same
    weights whether or not this one was trained), and one thread makes the
    sums the same on any machine."""
    with torch.random.fork_rng():
        torch.manual_seed(1414)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _train(model, normalise, channels, height, width, classes, epochs, per_class,
                   batch, lr)
        finally:
            torch.set_num_threads(threads)


def _train(model, normalise, channels, height, width, classes, epochs, per_class, batch, lr):
    gen = torch.Generator().manual_seed(14)
    images = torch.cat([patterns(k, per_class, channels, height, width, gen)
                        for k in range(classes)])
    labels = torch.arange(classes).repeat_interleave(per_class)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=gen)
        for i in range(0, len(labels), batch):
            take = order[i:i + batch]
            loss = F.cross_entropy(model(normalise(images[take])), labels[take])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(normalise(images)), 1)[torch.arange(len(labels)), labels]
    print(f"trained {type(model).__name__}: {epochs} epochs on {classes} x {per_class} "
          f"patterns; their class probability: mean {float(p.mean()):.3f}, "
          f"lowest {float(p.min()):.3f}")


def normaliser(mean, std):
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return lambda x: (x - m) / s


def randomise_batchnorm(module):
    """Non-default BN statistics, as a trained network has."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)


def build(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(14)

    import torchvision
    resnet = torchvision.models.resnet18(weights=None).eval()
    # Random weights, but logits on the scale of a trained network's: the
    # default head (uniform in +-1/sqrt(512)) spreads the 1000 logits of an
    # image over about 7, a trained ImageNet ResNet-18 over about 25-30. Four
    # times the head gives that spread (and consumes no random numbers, so the
    # models below keep their weights).
    with torch.no_grad():
        resnet.fc.weight.mul_(RESNET_HEAD_SCALE)
        resnet.fc.bias.mul_(RESNET_HEAD_SCALE)
    save(torch.jit.script(resnet), out, "resnet18", (3, 224, 224))
    card(out, "resnet18", 3, 224, 224, None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
         description="torchvision ResNet-18 with random weights; ImageNet input "
                     "normalisation, 1000 classes named by index.")

    mobile = MobileNetLike()
    randomise_batchnorm(mobile)
    train_classifier(mobile, normaliser([0.5] * 3, [0.5] * 3), 3, 32, 32, 10)
    save(torch.jit.script(mobile.eval()), out, "mobilenet_like", (3, 32, 32))
    card(out, "mobilenet_like", 3, 32, 32, [f"c{i}" for i in range(10)],
         mean=[0.5] * 3, std=[0.5] * 3)  # the [-1, 1] input convention

    seq = sequential().eval()
    fit_heads(seq, [seq[7]], lambda x: x, 1, 16, 16)
    save(torch.jit.trace(seq, torch.rand(1, 1, 16, 16)), out, "sequential", (1, 16, 16))
    card(out, "sequential", 1, 16, 16, ["n", "e", "s", "w"])

    face = FaceHeads()
    fit_heads(face, [face.age, face.gender, face.ethnicity], lambda x: x, 3, 32, 32)
    save(torch.jit.script(face.eval()), out, "face_heads", (3, 32, 32))
    card(out, "face_heads", 3, 32, 32, ["female", "male"], extra={"logits": 1})

    heads = DictHeads()
    fit_heads(heads, [heads.species_head], lambda x: x, 3, 32, 32)
    save(torch.jit.script(heads.eval()), out, "dict_heads", (3, 32, 32))
    card(out, "dict_heads", 3, 32, 32, [f"s{i}" for i in range(6)],
         extra={"logits": "species"})

    backbone = Backbone()
    randomise_batchnorm(backbone)
    save(torch.jit.script(backbone.eval()), out, "backbone", (3, 32, 32))
    card(out, "backbone", 3, 32, 32, None, extra={"logits": None})

    wide = WideInput()
    fit_heads(wide, [wide.fc], lambda x: x, 3, 24, 40)
    save(torch.jit.script(wide.eval()), out, "wide_input", (3, 24, 40))
    card(out, "wide_input", 3, 24, 40, ["x", "y", "z"])

    log_softmax = LogSoftmax()
    fit_heads(log_softmax, [log_softmax.fc], lambda x: x, 1, 16, 16)
    save(torch.jit.script(log_softmax.eval()), out, "log_softmax", (1, 16, 16))
    card(out, "log_softmax", 1, 16, 16, list("abcde"), extra={"output": "log_probs"})

    odd = OddNames()
    fit_heads(odd, [odd.fc], lambda x: x, 3, 16, 16)
    save(torch.jit.script(odd.eval()), out, "odd_names", (3, 16, 16))
    card(out, "odd_names", 3, 16, 16, ["u", "v", "w"])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created)")
    build(ap.parse_args().out)
