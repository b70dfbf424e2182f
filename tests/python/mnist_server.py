"""A real featviz-server for the Python tests: the bundled models and the
MNIST test set (../shared/data/mnist) as its one dataset, on a free loopback
port. The binary and models come from the environment ctest sets
(FEATVIZ_SERVER_BIN, FEATVIZ_MODELS_DIR), else the checkout's build.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MNIST = REPO.parent / "shared" / "data" / "mnist"
READY = re.compile(r"^featviz-server listening on (\S+:\d+)$")


@contextlib.contextmanager
def serving_mnist():
    """Starts the server, yields its address once it listens, and checks on
    the way out that SIGTERM stops it with exit 0."""
    binary = os.environ.get("FEATVIZ_SERVER_BIN", str(REPO / "build/server/featviz-server"))
    models = os.environ.get("FEATVIZ_MODELS_DIR", str(REPO / "models"))
    if not MNIST.is_dir():
        pytest.fail(f"no MNIST test set at {MNIST}")
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--model_dir", models, "--dataset_dir", str(MNIST)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        match = READY.match(server.stdout.readline().strip())
        assert match, "featviz-server did not print its listening line"
        yield match.group(1)
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0


def mnist_digit(index: int = 0):
    """MNIST test image `index` as float32 [1, 28, 28] in [0, 1]."""
    import gzip

    import numpy as np
    with gzip.open(MNIST / "t10k-images-idx3-ubyte.gz", "rb") as f:
        data = f.read()
    pixels = np.frombuffer(data, dtype=np.uint8, count=28 * 28,
                           offset=16 + 28 * 28 * index)
    return (pixels.reshape(1, 28, 28) / 255.0).astype(np.float32)
