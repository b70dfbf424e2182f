"""A server with a model memory budget from Python: Client.models() says
which served models are in memory, what a loaded copy takes and when each
was last used, as they change while renders go from model to model;
models_table() prints them; server_stats() has the device's bytes and
budget.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from featviz_client import Client, ModelStatus

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"^featviz-server listening on (\S+:\d+)$")
NAMES = ["a", "b", "c"]


def _start(model_dir: Path, budget: int) -> tuple[subprocess.Popen, str]:
    binary = os.environ.get("FEATVIZ_SERVER_BIN", str(REPO / "build/server/featviz-server"))
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--model_dir", str(model_dir),
         f"--model_memory_bytes={budget}"],
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


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    """Three copies of the MNIST classifier, a budget for two of them."""
    models = Path(os.environ.get("FEATVIZ_MODELS_DIR", str(REPO / "models")))
    root = tmp_path_factory.mktemp("repository")
    for name in NAMES:
        (root / name / "1").mkdir(parents=True)
        shutil.copy(models / "mnist_classifier.pt", root / name / "1" / "model.pt")
        shutil.copy(models / "mnist_classifier.card.json",
                    root / name / "1" / "model.card.json")
    # What a copy is charged at most: its file's size before its first load
    # (a little more than its weights).
    unit = (models / "mnist_classifier.pt").stat().st_size
    budget = 2 * unit + unit // 2
    server, address = _start(root, budget)
    yield address, budget
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0


def _by_name(client: Client) -> dict[str, ModelStatus]:
    return {m.name: m for m in client.models(timeout=30)}


def test_models_show_state_bytes_and_last_use_as_renders_move_between_them(budgeted):
    address, budget = budgeted
    with Client(address) as client:
        # Distinct seeds: a cached answer would not touch the model.
        for seed, name in enumerate(NAMES + NAMES):
            client.render(name, "logit(2)", steps=2, seed=seed)
            models = _by_name(client)
            assert sorted(models) == NAMES
            used = models[name]
            assert used.state == "loaded"
            assert used.last_used is not None
            # The worker may still hold it until it looks for its next job.
            assert used.copies[0].device == "cpu" and used.copies[0].users <= 1
            assert used.memory_bytes > 10000
            loaded = [m for m in models.values() if m.state == "loaded"]
            assert sum(m.memory_bytes for m in loaded) <= budget
            assert any(m.state == "unloaded" for m in models.values())
            stats = client.server_stats(timeout=30)
            assert stats.devices[0].model_memory_bytes == budget
            assert 0 < stats.devices[0].model_bytes <= budget
            assert stats.devices[0].models_loaded + stats.devices[0].models_unloaded == 3

        table = client.models_table(timeout=30)
        header, *rows = table.splitlines()
        assert header.split() == ["NAME", "VERSION", "STATE", "BYTES", "LAST", "USED"]
        assert len(rows) == 3
        for row in rows:
            name, version, state, size, ago = row.split()
            assert name in NAMES and version == "1"
            assert state in ("loaded", "unloaded")
            assert int(size) > 10000
            assert re.fullmatch(r"\d+[smhd]", ago), row

        # An unloaded model is still described (its layers were kept).
        unloaded = [m for m in client.models() if m.state == "unloaded"][0]
        assert [layer.path for layer in client.layers(unloaded.name)]
        assert _by_name(client)[unloaded.name].state == "unloaded"
