"""The Python client's token and TLS options against a real featviz-server
that serves TLS and wants bearer tokens (certificates made here by openssl).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from featviz_client import Client, FeatvizError

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"^featviz-server listening on (\S+:\d+)$")
ALICE = "alice-python-0123456789-token"
OPS = "ops-python-0123456789-token"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    for name in ("ca", "server", "client"):
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-out", f"{name}.key", cwd=d)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=featviz-python-ca", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "server.ext"]), ("client", [])):
        openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *extra, cwd=d)
    (d / "tokens").write_text(f"{ALICE} alice user max_image_steps=1000\n{OPS} ops admin\n")
    return d


@pytest.fixture(scope="module")
def address(pki):
    """featviz-server with mTLS and tokens on a free loopback port."""
    binary = os.environ.get("FEATVIZ_SERVER_BIN", str(REPO / "build/server/featviz-server"))
    models = os.environ.get("FEATVIZ_MODELS_DIR", str(REPO / "models"))
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--model_dir", models,
         "--tls_cert", str(pki / "server.pem"), "--tls_key", str(pki / "server.key"),
         "--tls_client_ca", str(pki / "ca.pem"), "--tokens_file", str(pki / "tokens")],
        stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def drain() -> None:
        for line in server.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    found = None
    while found is None:
        line = lines.get(timeout=120)
        if line is None:
            pytest.fail(f"featviz-server exited ({server.wait()}) before listening")
        match = READY.match(line.strip())
        if match:
            found = match.group(1)
    yield found
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0


def tls(pki: Path) -> dict:
    return {"tls_ca": str(pki / "ca.pem"), "tls_cert": str(pki / "client.pem"),
            "tls_key": str(pki / "client.key")}


def test_a_token_and_a_client_certificate_let_the_client_in(pki, address):
    with Client(address, token=ALICE, **tls(pki)) as client:
        assert [m.name for m in client.list_models()] == ["mnist_classifier"]
        result = client.render("mnist_classifier", "logit(3)", steps=4, seed=1)
        assert result.images.shape[0] == 1


def test_no_token_is_unauthenticated(pki, address, monkeypatch):
    monkeypatch.delenv("FEATVIZ_TOKEN", raising=False)
    with Client(address, **tls(pki)) as client:
        with pytest.raises(FeatvizError) as err:
            client.list_models()
    assert err.value.code == "UNAUTHENTICATED"


def test_the_token_comes_from_a_file_or_the_environment(pki, address, monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(OPS + "\n")
    with Client(address, token_file=str(token_file), **tls(pki)) as client:
        assert client.list_models()
    monkeypatch.setenv("FEATVIZ_TOKEN", ALICE)
    with Client(address, **tls(pki)) as client:
        assert client.list_models()


def test_a_quota_is_named_in_the_error(pki, address):
    with Client(address, token=ALICE, **tls(pki)) as client:
        with pytest.raises(FeatvizError) as err:
            client.render("mnist_classifier", "logit(3)", steps=2000)
    assert err.value.code == "RESOURCE_EXHAUSTED"
    assert "max_image_steps (1000)" in err.value.message


def test_without_a_client_certificate_the_handshake_fails(pki, address):
    with Client(address, token=ALICE, tls_ca=str(pki / "ca.pem")) as client:
        with pytest.raises(FeatvizError) as err:
            client.list_models(timeout=20)
    assert err.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
