"""A lab's own data from Python: Client.upload_dataset with arrays and with
files NumPy wrote (np.save, Fortran order, np.savez, np.savez_compressed),
the MNIST IDX files and a folder of PNGs; top_examples and find_circuit on
them; the precise errors; delete_dataset; and the uploads served again by a
restarted server.
"""

from __future__ import annotations

import gzip
import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from featviz_client import Client, FeatvizError

REPO = Path(__file__).resolve().parents[2]
MNIST = Path(os.environ.get("FEATVIZ_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist")))
READY = re.compile(r"^featviz-server listening on (\S+:\d+)$")
UPLOADER = "uploader-datasets-py-0123456789"
OTHER = "other-uploader-datasets-py-0123"
READER = "reader-datasets-py-0123456789"
MODEL = "mnist_classifier"


def _start(dataset_dir: Path, tokens: Path) -> tuple[subprocess.Popen, str]:
    binary = os.environ.get("FEATVIZ_SERVER_BIN", str(REPO / "build/server/featviz-server"))
    models = os.environ.get("FEATVIZ_MODELS_DIR", str(REPO / "models"))
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--model_dir", models, "--dataset_dir",
         str(dataset_dir), "--tokens_file", str(tokens)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()

    def drain() -> None:
        for line in server.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    while True:
        line = lines.get(timeout=120)
        if line is None:
            pytest.fail(f"featviz-server exited ({server.wait()}) before listening")
        match = READY.match(line.strip())
        if match:
            return server, match.group(1)


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A server with tokens and a dataset directory of its own (empty)."""
    d = tmp_path_factory.mktemp("datasets")
    (d / "datasets").mkdir()
    (d / "tokens").write_text(f"{UPLOADER} lab uploader\n{OTHER} other uploader\n"
                              f"{READER} reader user\n")
    server, address = _start(d / "datasets", d / "tokens")
    yield d, address
    _stop(server)


def _digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` MNIST test digits (uint8 [n, 28, 28]) and labels."""
    with gzip.open(MNIST / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(MNIST / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images[:n].copy(), labels[:n].astype(np.int64)


def test_arrays_and_numpy_files_upload_and_answer_top_examples(lab, tmp_path):
    _, address = lab
    images, labels = _digits(300)
    with Client(address, token=UPLOADER) as fv:
        # An array alone goes as .npy; the only dataset, so no name needed.
        gray = fv.upload_dataset("gray", images[:60])
        assert (gray.name, gray.size, gray.image_shape) == ("gray", 60, (1, 28, 28))
        assert gray.uploaded and gray.owner == "lab" and gray.source == "npy"
        assert gray.size_bytes == 60 * 28 * 28 * 4 + 60 * 8
        top = fv.top_examples(MODEL, "conv2", channels=[5], top_n=4)
        assert top.dataset == "gray"
        assert all(0 <= i < 60 for i in top.units[0].indices)

        # With labels: .npz, and the class names.
        names = [f"digit {c}" for c in range(10)]
        labelled = fv.upload_dataset("labelled", images, labels, class_names=names)
        assert labelled.class_names == names and labelled.source == "npz"
        circuit = fv.find_circuit(MODEL, "conv2", classes=[7], top_k=2, dataset="labelled",
                                  examples_per_class=8, render=False)
        example = circuit.classes[0].example_index
        assert circuit.dataset == "labelled" and labels[example] == 7

        # Files as NumPy writes them: channels-last float32, Fortran order,
        # savez and savez_compressed (deflated entries, ZIP64 records).
        np.save(tmp_path / "nhwc.npy", (images[:20, :, :, None] / 255.0).astype(np.float32))
        np.save(tmp_path / "fortran.npy", np.asfortranarray(images[:20]))
        np.savez(tmp_path / "plain.npz", images=images[:30], labels=labels[:30].astype(np.int32))
        np.savez_compressed(tmp_path / "small.npz", images=images[:30], labels=labels[:30])
        for name, file in [("nhwc", "nhwc.npy"), ("fortran", "fortran.npy"),
                           ("plain", "plain.npz"), ("small", "small.npz")]:
            d = fv.upload_dataset(name, tmp_path / file)
            assert d.image_shape == (1, 28, 28), name
        acts_expected = fv.activations(MODEL, "conv2", dataset="gray", indices=[3])
        for name in ("nhwc", "fortran", "small"):
            acts = fv.activations(MODEL, "conv2", dataset=name, indices=[3])
            # The same digit, whatever the file's layout.
            np.testing.assert_allclose(acts["conv2"], acts_expected["conv2"], atol=1e-5)

        # IDX, the labels found beside the images.
        idx = fv.upload_dataset("idx", MNIST / "t10k-images-idx3-ubyte.gz")
        assert (idx.size, len(idx.class_names), idx.source) == (10000, 10, "idx")

        listed = {d.name: d for d in fv.datasets()}
        assert set(listed) == {"gray", "labelled", "nhwc", "fortran", "plain", "small", "idx"}
        assert all(d.owner == "lab" and d.uploaded for d in listed.values())
        # Seven datasets fit the model now: the server will not guess.
        with pytest.raises(FeatvizError) as err:
            fv.top_examples(MODEL, "conv2")
        assert err.value.code == "INVALID_ARGUMENT"
        assert "7 hosted datasets fit model mnist_classifier's input [1, 28, 28]" in str(err.value)
        for name in ("nhwc", "fortran", "plain", "small"):
            fv.delete_dataset(name)


def test_a_png_folder_uploads_with_its_class_names(lab, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    _, address = lab
    images, labels = _digits(100)
    for i, (image, label) in enumerate(zip(images, labels)):
        if label in (1, 4):
            folder = tmp_path / "pngs" / ("one" if label == 1 else "four")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    count = sum(1 for _ in (tmp_path / "pngs").rglob("*.png"))
    with Client(address, token=UPLOADER) as fv:
        d = fv.upload_dataset("pngs", tmp_path / "pngs")
        assert (d.size, d.class_names) == (count, ["four", "one"])
        top = fv.top_examples(MODEL, "fc1", dataset="pngs", channels=[0], top_n=3)
        assert all(0 <= i < count for i in top.units[0].indices)
        assert set(top.units[0].labels) <= {0, 1}
        fv.delete_dataset("pngs")


def test_bad_uploads_and_deletes_raise_precise_errors(lab):
    _, address = lab
    images, _ = _digits(10)
    nan = (images / 255.0).astype(np.float32)
    nan[4, 3, 3] = np.nan
    with Client(address, token=UPLOADER) as fv:
        cases = [
            (lambda: fv.upload_dataset("../x", images), "INVALID_ARGUMENT", "header.name '../x'"),
            (lambda: fv.upload_dataset("nan", nan), "INVALID_ARGUMENT",
             "images: image 4 holds NaN or infinity"),
            (lambda: fv.upload_dataset("range", np.full_like(nan, 2.0)), "INVALID_ARGUMENT",
             "images: image 0 holds values from 2"),
            (lambda: fv.upload_dataset("doubles", images.astype(np.float64)),
             "INVALID_ARGUMENT", "images: dtype float64 is not an image type"),
            (lambda: fv.upload_dataset("shape", images[0]), "INVALID_ARGUMENT",
             "images: shape [28, 28]"),
            (lambda: fv.upload_dataset("count", images, np.arange(9)), "INVALID_ARGUMENT",
             "labels: 9 labels for 10 images"),
            (lambda: fv.upload_dataset("gray", images), "ALREADY_EXISTS",
             "a dataset named 'gray' is already hosted"),
            (lambda: fv.delete_dataset("nope"), "NOT_FOUND", "dataset 'nope' is not hosted"),
        ]
        for call, code, says in cases:
            with pytest.raises(FeatvizError) as err:
                call()
            assert err.value.code == code, str(err.value)
            assert says in str(err.value), str(err.value)
    with Client(address, token=OTHER) as fv:
        with pytest.raises(FeatvizError) as err:
            fv.delete_dataset("gray")
        assert err.value.code == "PERMISSION_DENIED"
        assert "belongs to 'lab'" in str(err.value)
    with Client(address, token=READER) as fv:
        with pytest.raises(FeatvizError) as err:
            fv.upload_dataset("mine", images)
        assert err.value.code == "PERMISSION_DENIED"


def test_uploads_are_served_again_after_a_restart(lab):
    d, _ = lab
    server, address = _start(d / "datasets", d / "tokens")
    try:
        with Client(address, token=READER) as fv:
            listed = {x.name: x for x in fv.datasets()}
            assert {"gray", "labelled", "idx"} <= set(listed)
            assert listed["labelled"].class_names[7] == "digit 7"
            assert listed["gray"].owner == "lab" and listed["gray"].uploaded
            top = fv.top_examples(MODEL, "conv2", dataset="gray", channels=[5], top_n=4)
            assert all(0 <= i < 60 for i in top.units[0].indices)
    finally:
        _stop(server)
