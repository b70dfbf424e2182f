"""The Python client as a researcher gets it: installed with pip into a fresh
virtual environment and used from a folder outside the checkout.

Creates a venv (--system-site-packages: Debian's python3-grpcio,
python3-protobuf, python3-numpy, python3-pil), runs `pip install --no-index
client/python` (offline: the in-tree build backend needs nothing from an
index and generates the stubs), starts the real featviz-server with the
bundled models and the MNIST test set, and runs a script in a temporary
folder that renders, shows the result to a PNG, finds a circuit, lists jobs
and reads the server's statistics; then runs client/python/examples/notebook.py
in place, as a researcher does after the install.

Environment (the ctest entry `python_client_installed` sets it):
FEATVIZ_SERVER_BIN, FEATVIZ_MODELS_DIR, FEATVIZ_MNIST_DIR.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"^featviz-server listening on (\S+:\d+)$")

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    import featviz_client
    from featviz_client import Client
    from PIL import Image

    report = {"package": featviz_client.__file__}
    with Client(sys.argv[1]) as fv:
        seen = []
        result = fv.render("mnist_classifier", "logit(3, batch=0) + logit(7, batch=1)",
                           batch=2, steps=48, seed=0, progress_every=16, preview=True,
                           on_progress=lambda p: seen.append((p.step, p.preview() is not None)))
        report["progress"] = seen
        report["images_hwc"] = list(result.images_hwc.shape)
        report["labels"] = result.labels()
        image = result.show("shown.png")
        report["shown"] = list(Image.open("shown.png").size)
        report["repr_png"] = result._repr_png_()[:4].decode("latin-1")
        report["to_pil"] = [im.mode for im in result.to_pil()]
        report["grid_rgb"] = featviz_client.grid(np.random.rand(5, 3, 8, 8),
                                                 labels=list("abcde")).mode

        circuit = fv.find_circuit("mnist_classifier", "conv2", classes=[3], top_k=2,
                                  examples_per_class=8, steps=16, seed=0)
        report["circuit"] = {
            "class": circuit.classes[0].class_index,
            "channels": [d.channel for d in circuit.classes[0].detectors],
            "map_shape": list(circuit.classes[0].detectors[0].activation_map.shape),
            "jobs": len(circuit.job_ids()),
        }
        for job_id in circuit.job_ids():
            fv.wait(job_id)

        top = fv.top_examples("mnist_classifier", "conv2", channels=[5], top_n=4)
        report["top"] = {"indices": len(top.units[0].indices),
                         "sorted": bool(np.all(np.diff(top.units[0].values) <= 0))}
        acts = fv.activations("mnist_classifier", {"conv2": [5]}, dataset=circuit.dataset,
                              count=2)
        report["activations"] = list(acts["conv2"].shape)
        attribution = fv.attribute("mnist_classifier", "logit(3)", "conv2",
                                   dataset=circuit.dataset, count=4, label=3)
        report["attribution"] = [len(attribution.channels),
                                 list(attribution.per_image.shape)]
        report["datasets"] = [d.name for d in fv.datasets()]

        jobs = fv.list_jobs()
        report["jobs"] = {"count": len(jobs),
                          "succeeded": len(fv.list_jobs(state="succeeded"))}
        stats = fv.server_stats()
        report["stats"] = {"submitted": stats.jobs_submitted,
                           "succeeded": stats.jobs_succeeded}
        report["health"] = fv.health()
    print(json.dumps(report))
""")


def _run(args, **kwargs):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    _run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(root)])
    python = root / "bin" / "python"
    # --no-index: nothing may come from the network.
    _run([str(python), "-m", "pip", "install", "--no-index", "--quiet",
          str(REPO / "client" / "python")])
    return python


@pytest.fixture(scope="module")
def server_address():
    binary = os.environ.get("FEATVIZ_SERVER_BIN", str(REPO / "build/server/featviz-server"))
    models = os.environ.get("FEATVIZ_MODELS_DIR", str(REPO / "models"))
    mnist = os.environ.get("FEATVIZ_MNIST_DIR", str(REPO.parent / "shared/data/mnist"))
    if not Path(mnist).is_dir():
        pytest.fail(f"no MNIST test set at {mnist}")
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--model_dir", models, "--dataset_dir", mnist],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        match = READY.match(server.stdout.readline().strip())
        assert match, "featviz-server did not print its listening line"
        yield match.group(1)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0


def test_the_stubs_are_generated_inside_the_package_not_committed(venv, tmp_path):
    out = _run([str(venv), "-c",
                "import featviz_client.v1 as v, os; print(sorted(os.listdir(v.__path__[0])))"],
               cwd=tmp_path).stdout
    for module in ("featviz_pb2.py", "featviz_pb2_grpc.py", "circuits_pb2.py",
                   "circuits_pb2_grpc.py", "health_pb2.py", "health_pb2_grpc.py"):
        assert module in out
    assert not (REPO / "client/python/featviz_client/v1").exists()


def test_an_installed_client_renders_shows_finds_circuits_and_reads_stats(
        venv, server_address, tmp_path):
    (tmp_path / "use_featviz.py").write_text(SCRIPT)
    # A clean environment: no PYTHONPATH pointing back into the checkout.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(venv), "use_featviz.py", server_address], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)

    assert str(tmp_path) not in report["package"]
    assert not report["package"].startswith(str(REPO))
    assert [step for step, _ in report["progress"]] == [16, 32, 48]
    assert all(has_preview for _, has_preview in report["progress"])
    assert report["images_hwc"] == [2, 28, 28, 1]
    assert [label.split()[0] for label in report["labels"]] == ["3", "7"]
    assert report["shown"][0] > 2 * 112 and report["shown"][1] > 112
    assert report["repr_png"] == "\x89PNG"
    assert report["to_pil"] == ["L", "L"]
    assert report["grid_rgb"] == "RGB"
    assert report["circuit"]["class"] == 3
    assert len(report["circuit"]["channels"]) == 2
    assert report["circuit"]["map_shape"] == [8, 8]
    assert report["circuit"]["jobs"] >= 2
    assert report["top"] == {"indices": 4, "sorted": True}
    assert report["activations"] == [2, 1, 8, 8]
    assert report["attribution"] == [32, [4, 32]]
    assert report["datasets"]
    assert report["jobs"]["count"] >= 1 + report["circuit"]["jobs"]
    assert report["jobs"]["succeeded"] >= 1
    assert report["stats"]["submitted"] >= 1 + report["circuit"]["jobs"]
    assert report["health"] == "SERVING"
    shown = tmp_path / "shown.png"
    assert shown.read_bytes()[:4] == b"\x89PNG"


def test_a_script_beside_the_examples_imports_the_installed_package(venv):
    # `python -c` puts its working folder first on sys.path, as running a
    # script puts the script's folder there: an example run in place must
    # find the installed package, which carries the stubs, not the sources.
    examples = REPO / "client/python/examples"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = _run([str(venv), "-c",
                "import featviz_client, featviz_client._stubs; print(featviz_client.__file__)"],
               cwd=examples, env=env).stdout.strip()
    assert not out.startswith(str(REPO)), out
    assert Path(out).is_relative_to(venv.parent.parent), out


def test_the_notebook_example_runs_in_place_top_to_bottom(venv, server_address, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(FEATVIZ_SERVER=server_address, FEATVIZ_NOTEBOOK_OUT=str(tmp_path / "out"))
    # In place, as a researcher runs it after `pip install ./client/python`:
    # the script's folder comes first on sys.path, so it must hold no copy of
    # featviz_client to shadow the installed one.
    notebook = REPO / "client/python/examples/notebook.py"
    run = subprocess.run([str(venv), str(notebook)], cwd=notebook.parent,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    for name in ("classes.png", "preview.png", "circuit_3.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG", name
    assert "jobs succeeded" in run.stdout
