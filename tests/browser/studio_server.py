"""Starts a real featviz-server with its studio on free loopback ports, for
the browser and gateway tests: the repository's mnist_classifier, a copy of
it whose card names a class as markup (`<img src=x onerror=alert(1)>`), the
test model odd_names (layers `features.block-1`, `features.block-2`: paths
the objective syntax must quote; from $FEATVIZ_TEST_MODELS_DIR, which ctest's
make_test_models fills), and the MNIST test set as its dataset.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MNIST = REPO.parent / "shared" / "data" / "mnist"
HOSTILE = "<img src=x onerror=alert(1)>"
READY = re.compile(r"^featviz-server listening on (\S+:\d+)$")
STUDIO = re.compile(r"^featviz-server studio on (https?://\S+/)$")


def model_dir(base: Path) -> Path:
    """mnist_classifier, `hostile_names` (the same network, a hostile class)
    and odd_names."""
    models = base / "models"
    models.mkdir()
    src = Path(os.environ.get("FEATVIZ_MODELS_DIR", REPO / "models"))
    shutil.copy(src / "mnist_classifier.pt", models / "mnist_classifier.pt")
    shutil.copy(src / "mnist_classifier.card.json", models / "mnist_classifier.card.json")
    shutil.copy(src / "mnist_classifier.pt", models / "hostile_names.pt")
    card = json.loads((src / "mnist_classifier.card.json").read_text())
    card["name"] = "hostile_names"
    card["description"] = "a class named as markup: " + HOSTILE
    card["classes"] = [HOSTILE] + [str(i) for i in range(1, 10)]
    (models / "hostile_names.card.json").write_text(json.dumps(card))
    test_models = Path(os.environ.get("FEATVIZ_TEST_MODELS_DIR", REPO / "build/test_models"))
    if not (test_models / "odd_names.pt").is_file():
        raise RuntimeError(f"no odd_names.pt in {test_models}: run ctest -R make_test_models")
    for suffix in (".pt", ".card.json"):
        shutil.copy(test_models / f"odd_names{suffix}", models / f"odd_names{suffix}")
    return models


# Steps of a render that must still be running when a test acts on it:
# hours on any machine, where 10000 take 20 s on a fast CPU.
ENDLESS_STEPS = 10_000_000


class Server:
    """featviz-server --http_listen 127.0.0.1:0; `url` is the studio's."""

    def __init__(self, base: Path, *extra: str):
        binary = os.environ.get("FEATVIZ_SERVER_BIN", str(REPO / "build/server/featviz-server"))
        if not MNIST.is_dir():
            raise RuntimeError(f"no MNIST test set at {MNIST}")
        self.models = model_dir(base)
        self.log = open(base / "server.log", "w")
        self.process = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--http_listen", "127.0.0.1:0",
             "--model_dir", str(self.models), "--dataset_dir", str(MNIST),
             "--studio_dir", str(REPO / "studio"),
             # Room for ENDLESS_STEPS, a render no machine finishes while a
             # test looks at it.
             "--max_steps", str(ENDLESS_STEPS), *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        lines: queue.Queue = queue.Queue()

        def drain() -> None:
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        self.address = self.url = None
        while self.url is None:
            line = lines.get(timeout=120)
            if line is None:
                raise RuntimeError(f"featviz-server exited ({self.process.wait()}) "
                                   f"before serving; see {base / 'server.log'}")
            if m := READY.match(line.strip()):
                self.address = m.group(1)
            if m := STUDIO.match(line.strip()):
                self.url = m.group(1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.log.close()
        return code


def post(url: str, method: str, body=None, token: str | None = None, *,
         raw: bytes | None = None, headers: dict | None = None, context=None):
    """POST /api/featviz.v1.<method>: (HTTP status, JSON body or text)."""
    data = raw if raw is not None else json.dumps(body or {}).encode()
    request = urllib.request.Request(f"{url}api/featviz.v1.{method}", data=data,
                                     method="POST",
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120, context=context) as response:
            text = response.read().decode()
            status = response.status
            kind = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        status = error.code
        kind = error.headers.get("Content-Type", "")
    return status, (json.loads(text) if kind.startswith("application/json") else text)


def events(text: str) -> list[tuple[str, dict]]:
    """A text/event-stream body as (event, data) pairs; comments dropped."""
    out = []
    for block in text.split("\n\n"):
        kind, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((kind, json.loads("\n".join(data))))
    return out
