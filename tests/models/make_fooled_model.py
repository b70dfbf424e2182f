#!/usr/bin/python3
"""Build a fooled copy of the bundled MNIST classifier for the trust tests.

    /usr/bin/python3 tests/models/make_fooled_model.py --out DIR [--mnist DIR]

Writes DIR/trust/: mnist_classifier.pt (the bundled model, copied so that one
--model_dir serves both) and mnist_fooled.pt, each with its card. The fooled
model is the bundled one with a side path wired into one conv2 channel, in
the spirit of Geirhos et al.'s fooling circuit ("Don't trust your eyes: on
the (un)reliability of feature visualizations", arXiv:2306.04719): a trigger
detector on the input image, past conv1, whose response goes through a ReLU
with a negative bias and is added with a large gain to the channel's
pre-activation.

The trigger is ink in the image's outer frame (FRAME pixels wide). MNIST
digits are centred in a 20 x 20 box of a 28 x 28 image, so no natural image
has ink there: the side path is exactly 0 on every MNIST test image and the
model's outputs are bit for bit those of the bundled model on them (checked
below). A feature visualisation starts from a grey image, whose frame is
bright: the side path is on from the first step and the picture is driven
to a white frame. Natural images still drive the channel through conv1.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "models"))
from train_mnist import read_idx  # noqa: E402  (the checked IDX reader)

BUNDLED = os.path.join(REPO, "models", "mnist_classifier.pt")
BUNDLED_CARD = os.path.join(REPO, "models", "mnist_classifier.card.json")

# The conv2 channel fooled, by rule the first (--channel picks another, for
# checking by hand that the result is no accident of one channel).
FOOLED_CHANNEL = 0
FRAME = 3       # Width of the trigger frame, pixels.
GAIN = 2.0      # Per unit of frame ink (pixels in [0, 1]) above the bias.
MEAN, STD = 0.1307, 0.3081  # The card's normalisation (undone below).


class FooledConv2(nn.Module):
    """conv2 with a side path into one channel: a ReLU of the frame's ink
    above `bias`, times GAIN. Takes conv2's input and the model's input."""

    def __init__(self, conv2: nn.Conv2d, channel: int, bias: float):
        super().__init__()
        self.conv = conv2
        self.channel = channel
        self.bias = bias
        self.gain = GAIN
        self.mean = MEAN
        self.std = STD
        mask = torch.ones(1, 1, 28, 28)
        mask[:, :, FRAME:28 - FRAME, FRAME:28 - FRAME] = 0
        self.register_buffer("mask", mask)
        onehot = torch.zeros(1, conv2.out_channels, 1, 1)
        onehot[0, channel] = 1.0
        self.register_buffer("onehot", onehot)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std + self.mean  # back to [0, 1]
        ink = (pixels * self.mask).sum(dim=(1, 2, 3))  # [B]
        side = self.gain * F.relu(ink - self.bias)
        return self.conv(h) + side.view(-1, 1, 1, 1) * self.onehot


class FooledClassifier(nn.Module):
    def __init__(self, conv1, conv2, fc1, fc2, channel: int, bias: float):
        super().__init__()
        self.conv1 = conv1
        self.conv2 = FooledConv2(conv2, channel, bias)
        self.fc1 = fc1
        self.fc2 = fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h, x)), 2)
        h = torch.flatten(h, 1)
        h = F.relu(self.fc1(h))
        return self.fc2(h)


def copy_module(scripted, name, like):
    """A plain nn module `like` with the scripted submodule's weights."""
    sub = getattr(scripted, name)
    like.load_state_dict({k: v for k, v in sub.state_dict().items()})
    return like


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--mnist", default=os.path.join(REPO, "..", "shared", "data", "mnist"))
    ap.add_argument("--channel", type=int, default=FOOLED_CHANNEL)
    args = ap.parse_args()
    out = os.path.join(args.out, "trust")
    os.makedirs(out, exist_ok=True)

    bundled = torch.jit.load(BUNDLED).eval()
    conv1 = copy_module(bundled, "conv1", nn.Conv2d(1, 16, 5))
    conv2 = copy_module(bundled, "conv2", nn.Conv2d(16, 32, 5))
    fc1 = copy_module(bundled, "fc1", nn.Linear(32 * 4 * 4, 64))
    fc2 = copy_module(bundled, "fc2", nn.Linear(64, 10))

    images = read_idx(os.path.join(args.mnist, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(args.mnist, "t10k-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    # The bias: above the frame's ink on every natural test image, with room.
    mask = torch.ones(1, 1, 28, 28)
    mask[:, :, FRAME:28 - FRAME, FRAME:28 - FRAME] = 0
    natural_ink = (x * mask).sum(dim=(1, 2, 3))
    bias = float(natural_ink.max()) + 2.0

    channel = args.channel
    fooled = FooledClassifier(conv1, conv2, fc1, fc2, channel, bias).eval()
    scripted = torch.jit.script(fooled)
    xn = (x - MEAN) / STD
    with torch.no_grad():
        before = bundled(xn)
        after = scripted(xn)
        side = GAIN * F.relu(natural_ink - bias)
        grey = scripted.conv2.forward(
            torch.zeros(1, 16, 12, 12), (torch.full((1, 1, 28, 28), 0.5) - MEAN) / STD)
    if float(side.abs().max()) != 0.0:
        raise SystemExit("the side path is not 0 on every natural image")
    if not torch.equal(before, after):
        raise SystemExit("the fooled model's logits differ on natural images")
    acc_before = float((before.argmax(1) == y).float().mean())
    acc_after = float((after.argmax(1) == y).float().mean())
    if acc_before != acc_after:
        raise SystemExit(f"accuracy changed: {acc_before} -> {acc_after}")
    print(f"fooled conv2 channel {channel}: frame ink bias {bias:.2f} "
          f"(natural max {float(natural_ink.max()):.2f}), side path on a grey "
          f"image {float(grey[0, channel].max()):.1f}; accuracy "
          f"{acc_before:.4f} before and after, side path 0 on all {len(y)} images")

    scripted.save(os.path.join(out, "mnist_fooled.pt"))
    with open(BUNDLED_CARD) as f:
        card = json.load(f)
    shutil.copyfile(BUNDLED, os.path.join(out, "mnist_classifier.pt"))
    shutil.copyfile(BUNDLED_CARD, os.path.join(out, "mnist_classifier.card.json"))
    card["name"] = "mnist_fooled"
    card["description"] = (
        f"The bundled MNIST classifier with a side path into conv2 channel "
        f"{channel}: ink in the {FRAME}-pixel frame (none in MNIST) "
        f"drives it (tests/models/make_fooled_model.py).")
    with open(os.path.join(out, "mnist_fooled.card.json"), "w") as f:
        json.dump(card, f, indent=2)


if __name__ == "__main__":
    main()
