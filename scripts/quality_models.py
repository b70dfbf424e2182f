#!/usr/bin/python3
"""Models and data for the quality benchmark (scripts/quality, docs/quality.md).

Writes into OUT (default build/quality-models), in about a minute on two cores:

  colour_mnist.pt + .card.json   An RGB classifier: MNIST digits drawn in a
                                 random ink colour on a random background
                                 colour, 32x32, trained on t10k images
                                 0-8999 (three conv layers, two fc).
  colour_mnist_data/<digit>/*.png  The held-out images 9000-9999, coloured
                                 the same way (their own colour draws): the
                                 dataset the benchmark measures against.
  mnist_judge.pt, colour_mnist_judge.pt (+ cards)
                                 Independently trained classifiers (another
                                 architecture, another seed) that judge
                                 whether a class picture shows its class.

Only torch (Debian's python3-torch), numpy and PIL; no download. Run with
/usr/bin/python3; deterministic for a given machine (one thread, fixed seeds).
"""
import argparse
import gzip
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "mnist"))
N_TRAIN = 9000
SIDE = 32


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(data_dir):
    x = read_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
    y = read_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def colourise(gray, gen):
    """[N,1,28,28] ink in [0,1] -> [N,3,32,32]: ink colour over a background
    colour whose luminance differs by at least 0.35, plus faint noise."""
    n = gray.shape[0]
    fg = torch.rand(n, 3, 1, 1, generator=gen)
    bg = torch.rand(n, 3, 1, 1, generator=gen)
    lum = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for _ in range(20):  # redraw backgrounds too close to their ink
        close = ((fg - bg) * lum).sum(1, keepdim=True).abs() < 0.35
        if not close.any():
            break
        bg = torch.where(close, torch.rand(n, 3, 1, 1, generator=gen), bg)
    a = F.pad(gray, (2, 2, 2, 2))
    img = bg * (1 - a) + fg * a + 0.02 * torch.randn(n, 3, SIDE, SIDE, generator=gen)
    return img.clamp(0, 1)


def shift(x, gen, s=2):
    """Random translation by up to +-s pixels (edge-replicated), per image."""
    n, _, h, w = x.shape
    p = F.pad(x, (s, s, s, s), mode="replicate")
    dy = torch.randint(0, 2 * s + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return p[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
             rows, cols]


class ColourNet(nn.Module):
    """3x32x32 -> 10 logits: conv1-3 (16, 32, 64 channels), fc1 (64), fc2."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class Judge(nn.Module):
    """Another architecture: strided convolutions, no pooling, one fc."""

    def __init__(self, channels, side):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 4, stride=2, padding=1)
        self.fc = nn.Linear(64 * (side // 4) ** 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


def train(model, x, y, seed, epochs, lr=2e-3, batch=64):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(shift(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model, x, y):
    return (model(x).argmax(1) == y).float().mean().item()


def save(model, out, name, channels, side, description):
    torch.jit.script(model).save(os.path.join(out, name + ".pt"))
    card = {"name": name, "version": "1", "description": description,
            "input": {"channels": channels, "height": side, "width": side, "range": [0.0, 1.0],
                      "mean": [0.0] * channels, "std": [1.0] * channels},
            "output": "logits", "classes": [str(d) for d in range(10)]}
    with open(os.path.join(out, name + ".card.json"), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default=os.path.join(REPO, "build", "quality-models"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    x, y = load_mnist(args.data)
    x_train, y_train, x_held, y_held = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]

    gen = torch.Generator().manual_seed(0)
    c_train = colourise(x_train, gen)
    c_held = colourise(x_held, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    net = train(ColourNet(), c_train, y_train, seed=0, epochs=6)
    acc = accuracy(net, c_held, y_held)
    save(net, args.out, "colour_mnist", 3, SIDE,
         f"RGB digits (MNIST ink and background in random colours, 32x32); held-out accuracy {acc:.4f}.")
    print(f"colour_mnist: held-out accuracy {acc:.4f}")

    data = os.path.join(args.out, "colour_mnist_data")
    for i in range(len(c_held)):
        folder = os.path.join(data, str(int(y_held[i])))
        os.makedirs(folder, exist_ok=True)
        pixels = (c_held[i].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(os.path.join(folder, f"{N_TRAIN + i:05d}.png"))
    print(f"colour_mnist_data: {len(c_held)} held-out PNGs")

    # The judges see other colour draws and start from other weights.
    torch.manual_seed(1)
    judge = train(Judge(1, 28), x_train, y_train, seed=1, epochs=4)
    acc = accuracy(judge, x_held, y_held)
    save(judge, args.out, "mnist_judge", 1, 28, f"Independent MNIST judge; held-out accuracy {acc:.4f}.")
    print(f"mnist_judge: held-out accuracy {acc:.4f}")
    torch.manual_seed(2)
    c_train2 = colourise(x_train, torch.Generator().manual_seed(2))
    judge = train(Judge(3, SIDE), c_train2, y_train, seed=2, epochs=4)
    acc = accuracy(judge, c_held, y_held)
    save(judge, args.out, "colour_mnist_judge", 3, SIDE,
         f"Independent colour-digit judge; held-out accuracy {acc:.4f}.")
    print(f"colour_mnist_judge: held-out accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
