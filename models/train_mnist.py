#!/usr/bin/python3
"""Train the small MNIST classifier that featviz ships as its demo model.

Reads the MNIST test set (t10k, gzip'd IDX) from ../shared/data/mnist beside
the checkout, trains on images 0-8999, evaluates on the held-out 9000-9999,
and writes a TorchScript module plus its model card:

    models/mnist_classifier.pt
    models/mnist_classifier.card.json

Run with Debian's python (python3-torch):  /usr/bin/python3 models/train_mnist.py
Deterministic: the same seed gives the same weights and the same accuracy.
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 0
MEAN, STD = 0.1307, 0.3081
N_TRAIN = 9000
EPOCHS = 12
BATCH = 64
SHIFT = 2  # augmentation: random translation of up to +-SHIFT pixels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "mnist"))
DEFAULT_OUT = os.path.join(REPO, "models")


class MnistClassifier(nn.Module):
    """LeNet-style CNN. Input [B,1,28,28] normalised; output logits [B,10]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)    # 28 -> 24, pool -> 12
        self.conv2 = nn.Conv2d(16, 32, 5)   # 12 -> 8, pool -> 4
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def read_idx(path):
    """Parse a gzip'd IDX file (magic 0x00000800 | ndim, big-endian dims, uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims}, got {arr.size} bytes")
    return arr.reshape(dims)


def load_mnist(data_dir):
    images = read_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    x = (torch.from_numpy(images.astype(np.float32) / 255.0) - MEAN) / STD
    return x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def random_shift(x, rng):
    """Translate each image by a random (dy, dx) in [-SHIFT, SHIFT], zero (background) fill."""
    b = x.shape[0]
    padded = F.pad(x, (SHIFT,) * 4, value=-MEAN / STD)  # pad with normalised black
    dy = torch.from_numpy(rng.integers(0, 2 * SHIFT + 1, size=b))
    dx = torch.from_numpy(rng.integers(0, 2 * SHIFT + 1, size=b))
    ar = torch.arange(28)
    rows = (dy[:, None] + ar)[:, :, None]  # [B,28,1]
    cols = (dx[:, None] + ar)[:, None, :]  # [B,1,28]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    correct = sum((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item()
                  for i in range(0, len(x), 1000))
    return correct / len(x)


def main():
    # TorchScript serialises module constants in set order, which follows
    # Python's string hashing; pin it so the .pt is byte-for-byte reproducible.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="dir with t10k-*-ubyte.gz")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output dir for .pt and .card.json")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args()

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    rng = np.random.default_rng(SEED)

    x, y = load_mnist(args.data)
    x_train, y_train = x[:N_TRAIN], y[:N_TRAIN]
    x_held, y_held = x[N_TRAIN:], y[N_TRAIN:]

    model = MnistClassifier()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(N_TRAIN))
        total = 0.0
        for i in range(0, N_TRAIN, BATCH):
            idx = perm[i:i + BATCH]
            xb = random_shift(x_train[idx], rng)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {total / N_TRAIN:.4f}  "
              f"({time.time() - t0:.1f}s)", flush=True)
    train_time = time.time() - t0

    model.eval()
    train_acc = accuracy(model, x_train, y_train)
    held_acc = accuracy(model, x_held, y_held)

    os.makedirs(args.out, exist_ok=True)
    pt_path = os.path.join(args.out, "mnist_classifier.pt")
    scripted = torch.jit.script(model)
    scripted.save(pt_path)
    reloaded = torch.jit.load(pt_path)
    assert abs(accuracy(reloaded, x_held, y_held) - held_acc) < 1e-9

    card = {
        "name": "mnist_classifier",
        "version": "1",
        "description": ("Small CNN (2 conv + 2 fc) classifying 28x28 handwritten digits, "
                        f"held-out accuracy {held_acc:.4f} on MNIST t10k images 9000-9999."),
        "input": {"channels": 1, "height": 28, "width": 28, "range": [0.0, 1.0],
                  "mean": [MEAN], "std": [STD]},
        "output": "logits",
        "classes": [str(d) for d in range(10)],
        "training": {"data": "MNIST t10k images 0-8999",
                     "heldout": "MNIST t10k images 9000-9999",
                     "heldout_accuracy": round(held_acc, 4), "seed": SEED},
    }
    card_path = os.path.join(args.out, "mnist_classifier.card.json")
    with open(card_path, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")

    print(f"parameters:        {n_params}")
    print(f"training time:     {train_time:.1f}s")
    print(f"train accuracy:    {train_acc:.4f}")
    print(f"held-out accuracy: {held_acc:.4f}")
    print(f"wrote {pt_path} ({os.path.getsize(pt_path)} bytes)")
    print(f"wrote {card_path}")
    if held_acc < 0.97:
        raise SystemExit(f"held-out accuracy {held_acc:.4f} below 0.97")


if __name__ == "__main__":
    main()
