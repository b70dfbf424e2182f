"""End-to-end tests of the Python client against the real featviz-server.

The server binary comes from $FEATVIZ_SERVER_BIN (default
build/server/featviz-server), its models from $FEATVIZ_MODELS_DIR (default
models/); the generated stubs (build/python) and client/python must be on
PYTHONPATH, as the ctest entry `python_client` arranges.
"""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featviz_client import Client, FeatvizError, Progress

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "client" / "python"
MODEL = "mnist_classifier"
READY = re.compile(r"^featviz-server listening on (\S+:\d+)$")
START_SECONDS = 120
STOP_SECONDS = 60


@pytest.fixture(scope="session")
def server_address():
    """Starts featviz-server on a free loopback port; SIGTERM must exit 0."""
    binary = os.environ.get("FEATVIZ_SERVER_BIN", str(REPO / "build/server/featviz-server"))
    models = os.environ.get("FEATVIZ_MODELS_DIR", str(REPO / "models"))
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no featviz-server at {binary}; set FEATVIZ_SERVER_BIN")
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--model_dir", models],
        stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def drain() -> None:  # keeps reading so the server never blocks on stdout
        for line in server.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    address = None
    try:
        while address is None:
            line = lines.get(timeout=START_SECONDS)
            if line is None:
                pytest.fail(f"featviz-server exited ({server.wait()}) before listening")
            match = READY.match(line.strip())
            if match:
                address = match.group(1)
    except queue.Empty:
        server.kill()
        pytest.fail(f"featviz-server printed no listening line in {START_SECONDS} s")

    yield address

    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"featviz-server did not exit within {STOP_SECONDS} s of SIGTERM")
    assert code == 0, f"featviz-server exited with {code} on SIGTERM"


@pytest.fixture(scope="session")
def client(server_address):
    with Client(server_address) as featviz:
        yield featviz


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """Runs a client/python script (a path below client/python) with this
    interpreter (Debian's python3)."""
    return subprocess.run([sys.executable, str(CLIENT_DIR / script), *args],
                          capture_output=True, text=True, timeout=300)


def test_list_models_has_mnist_classifier_with_four_layers(client):
    models = {model.name: model for model in client.list_models()}
    assert MODEL in models
    layers = models[MODEL].layers
    assert [layer.path for layer in layers] == ["conv1", "conv2", "fc1", "fc2"]
    conv2 = layers[1]
    assert (conv2.channels, list(conv2.output_shape)) == (32, [1, 32, 8, 8])
    assert [layer.path for layer in client.layers(MODEL)] == ["conv1", "conv2", "fc1", "fc2"]
    assert client.get_model(MODEL).input.height == 28


def test_render_prob_reaches_its_class_with_images_in_range(client):
    result = client.render(MODEL, "prob(3)", steps=256, seed=0)
    assert result.probs[0, 3] >= 0.99
    assert result.probs.shape == result.logits.shape == (1, 10)
    assert result.images.shape == (1, 1, 28, 28)
    assert result.images.dtype == np.float32
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    assert (result.seed, result.steps) == (0, 256)
    assert result.linear_mode == "invariant"  # the server's default
    # The server's default: bf16 on a CPU that computes it natively.
    assert result.precision == client.server_stats().default_precision
    assert result.precision in ("fp32", "bf16")
    assert [term.term for term in result.terms] == ["prob(3)"]
    assert result.trace.shape == (1, 256)
    assert len(result.png) == 1
    decoded = Image.open(io.BytesIO(result.png[0]))
    assert decoded.size == (28, 28)
    assert [image.size for image in result.to_pil()] == [(28, 28)]


def test_precision_is_the_requests_and_bf16_still_reaches_the_class(client):
    fp32 = client.render(MODEL, "prob(3)", steps=128, seed=2, precision="fp32")
    bf16 = client.render(MODEL, "prob(3)", steps=128, seed=2, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert not np.array_equal(fp32.images, bf16.images)
    # The final statistics are float32 in both; bf16 steps still get there.
    assert bf16.probs[0, 3] >= 0.9
    with pytest.raises(FeatvizError) as refused:
        client.render(MODEL, "prob(3)", steps=2, precision="fp8")
    assert refused.value.code == "INVALID_ARGUMENT"
    assert "precision must be fp32, tf32 or bf16, got 'fp8'" in refused.value.message


def test_progress_callback_sees_increasing_steps(client):
    events: list[Progress] = []
    client.render(MODEL, "conv2:5", steps=64, seed=1, progress_every=8,
                  on_progress=events.append, png=False, tensor=False)
    steps = [event.step for event in events]
    assert steps, "no progress events"
    assert steps == sorted(set(steps))
    assert steps[-1] == 64
    assert all(event.total_steps == 64 and len(event.term_values) == 1 for event in events)


def test_a_cached_result_still_reports_its_final_progress(client):
    options = dict(steps=24, seed=27, batch=2, progress_every=8, preview=True)
    objective = "conv2:5 - 0.01 * tv()"
    live: list[Progress] = []
    first = client.render(MODEL, objective, on_progress=live.append, **options)
    again: list[Progress] = []
    second = client.render(MODEL, objective, on_progress=again.append, **options)
    assert not client.get_job(first.job_id).cached
    assert client.get_job(second.job_id).cached

    # The cache sends no progress; the callback still sees the last step once,
    # as the live render's last event showed it.
    assert [event.step for event in live] == [8, 16, 24]
    assert [(event.step, event.total_steps) for event in again] == [(24, 24)]
    last, final = live[-1], again[0]
    # The trace (float32) holds what the progress events (double) carried.
    assert np.array_equal(np.float32(final.term_values), np.float32(last.term_values))
    assert np.array_equal(np.asarray(final.preview()), np.asarray(last.preview()))

    # The three figures of the objective agree (issue 27): the last event's
    # weighted sum is the result's value at the last step, and the total
    # maximised is the per-image value summed over the two images.
    weighted = sum(t.weight * v for t, v in zip(first.terms, last.term_values))
    assert first.objective_at_last_step == pytest.approx(weighted, rel=1e-6)
    assert first.final_total == pytest.approx(2 * first.objective_per_image, rel=1e-5)

    # wait() on a finished job: the final state, without a preview (the
    # job's request, and so whether it asked for one, is not known there).
    waited: list[Progress] = []
    client.wait(first.job_id, on_progress=waited.append)
    assert [(event.step, event.term_values) for event in waited] == \
        [(24, final.term_values)]
    assert waited[0].preview() is None


def test_structured_objective_renders_the_same_bits_as_text(client):
    text = client.render(MODEL, "channel(conv2, 5) - 0.01 * tv()", steps=32, seed=7)
    tree = client.render(MODEL, [{"kind": "channel", "layer": "conv2", "index": 5},
                                 {"kind": "tv", "weight": -0.01}], steps=32, seed=7)
    assert tree.objective == text.objective
    assert tree.images.tobytes() == text.images.tobytes()
    assert tree.probs.tobytes() == text.probs.tobytes()
    single = client.render(MODEL, {"kind": "prob", "index": 3}, steps=8, seed=7)
    assert single.objective == "prob(3)"


def test_same_seed_gives_identical_arrays(client):
    first = client.render(MODEL, "prob(3)", steps=32, seed=11)
    second = client.render(MODEL, "prob(3)", steps=32, seed=11)
    for name in ("images", "logits", "probs", "trace"):
        assert getattr(first, name).tobytes() == getattr(second, name).tobytes(), name
    assert first.png == second.png
    other = client.render(MODEL, "prob(3)", steps=32, seed=12)
    assert other.images.tobytes() != first.images.tobytes()


def test_custom_transforms_pixel_param_and_init_image_are_accepted(client):
    start = np.full((1, 28, 28), 0.5, dtype=np.float32)
    result = client.render(MODEL, "logit(7)", steps=8, seed=0, param="pixel",
                           transforms=[("pad", 2), ("jitter", 2), ("rotate", [-5, 0, 5])],
                           init_image=start, lr=0.05)
    assert result.images.shape == (1, 1, 28, 28)
    assert 0.0 <= result.images.min() <= result.images.max() <= 1.0


def test_layer_stats_cover_the_objectives_layer(client):
    result = client.render(MODEL, "conv2:5", steps=8, seed=0, batch=2)
    mean, peak = result.layer_stats["conv2"]
    assert mean.shape == peak.shape == (2, 32)
    assert np.all(peak >= mean)


def test_raising_progress_callback_cancels_the_render(client):
    class Stop(Exception):
        pass

    def stop(progress: Progress) -> None:
        raise Stop

    with pytest.raises(Stop):
        client.render(MODEL, "prob(3)", steps=4096, progress_every=1, on_progress=stop)
    assert client.render(MODEL, "prob(3)", steps=4, seed=0).steps == 4


@pytest.mark.parametrize("call", ["get_model", "render"])
def test_unknown_model_is_not_found_and_named(client, call):
    with pytest.raises(FeatvizError) as caught:
        if call == "get_model":
            client.get_model("no_such_model")
        else:
            client.render("no_such_model", "prob(3)", steps=4)
    assert caught.value.code == "NOT_FOUND"
    assert "no_such_model" in caught.value.message


def test_malformed_objective_is_invalid_argument_with_its_column(client):
    with pytest.raises(FeatvizError) as caught:
        client.render(MODEL, "prob(3 +", steps=4)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "column" in caught.value.message


def test_reflection_client_lists_services_and_calls_list_models(server_address):
    listed = run_script("featviz_reflect.py", "--server", server_address, "--list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "featviz.v1.Visualizer" in services
    assert "grpc.health.v1.Health" in services

    described = run_script("featviz_reflect.py", "--server", server_address,
                           "--describe", "featviz.v1.Visualizer")
    assert described.returncode == 0, described.stderr
    assert ("rpc Render(featviz.v1.RenderRequest) returns (stream featviz.v1.RenderEvent)"
            in described.stdout)

    called = run_script("featviz_reflect.py", "--server", server_address, "--call-list-models")
    assert called.returncode == 0, called.stderr
    assert MODEL in called.stdout


def test_example_writes_pngs(server_address, tmp_path):
    ran = run_script("examples/example.py", "--server", server_address, "--out", str(tmp_path),
                     "--steps", "16")
    assert ran.returncode == 0, ran.stderr
    assert "logit(7)" in ran.stdout
    written = sorted(path.name for path in tmp_path.glob("*.png"))
    assert written == ["conv2_5_0.png", "logit_7_0.png"]
    for path in tmp_path.glob("*.png"):
        assert Image.open(path).size == (28, 28)
