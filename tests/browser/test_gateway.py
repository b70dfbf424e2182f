"""The studio's JSON gateway (server/http) against a real featviz-server:
gRPC statuses become HTTP statuses with the gRPC message, server streams
become Server-Sent Events, a browser that goes away cancels its render, and
the API's paths are the proto's.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from studio_server import ENDLESS_STEPS, REPO, Server, events, post

ALICE = "alice-studio-0123456789-token"    # user, max_image_steps=1000
UPLOADER = "ulla-studio-0123456789-token"  # uploader


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("open"))
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("tokens")
    tokens = base / "tokens"
    tokens.write_text(f"{ALICE} alice user max_image_steps=1000\n{UPLOADER} ulla uploader\n")
    server = Server(base, "--tokens_file", str(tokens), "--max_message_bytes", "1000000")
    yield server
    assert server.stop() == 0


def test_api_lists_every_method_of_the_proto(open_server):
    with urllib.request.urlopen(open_server.url + "api") as response:
        listed = json.load(response)
    paths = {m["path"] for s in listed["services"] for m in s["methods"]}
    proto = set()
    for name in ("featviz.proto", "circuits.proto"):
        text = (REPO / "proto/featviz/v1" / name).read_text()
        service = None
        for line in text.splitlines():
            if m := re.match(r"^service (\w+) \{", line):
                service = m.group(1)
            elif m := re.match(r"^\s+rpc (\w+)\(", line):
                proto.add(f"/api/featviz.v1.{service}/{m.group(1)}")
    assert paths == proto
    render = next(m for s in listed["services"] for m in s["methods"] if m["name"] == "Render")
    assert render["serverStreaming"] and not render["clientStreaming"]


def test_docs_name_every_api_path(open_server):
    with urllib.request.urlopen(open_server.url + "api") as response:
        listed = json.load(response)
    docs = (REPO / "docs/studio.md").read_text()
    documented = dict(re.findall(
        r"^\| `POST (/api/featviz\.v1\.\w+/\w+)` \| \w+ \| ([^|]+?) \|$", docs, re.M))
    kind = {m["path"]: "upload (multipart)" if m["clientStreaming"]
            else "event stream" if m["serverStreaming"] else "JSON"
            for s in listed["services"] for m in s["methods"]}
    assert documented == kind


def test_a_unary_call_answers_the_message_as_json(open_server):
    status, body = post(open_server.url, "Visualizer/ListModels", {})
    assert status == 200
    assert [m["name"] for m in body["models"]] == ["hostile_names", "mnist_classifier",
                                                   "odd_names"]
    assert body["models"][1]["input"]["height"] == "28"  # int64 as a JSON string


@pytest.mark.parametrize("method,body,http_status,code,named", [
    ("Visualizer/GetModel", {"name": "no_such_model"}, 404, "NOT_FOUND", "no_such_model"),
    ("Visualizer/GetModel", {"nmae": "x"}, 400, "INVALID_ARGUMENT", "nmae"),
    ("Visualizer/SubmitJob", {"request": {"model": "mnist_classifier",
                                          "objectiveText": "channel(conv9, 1)"}},
     404, "NOT_FOUND", "conv9"),
    ("Visualizer/SubmitJob", {"request": {"model": "mnist_classifier",
                                          "objectiveText": "logit(3)",
                                          "optimizer": {"steps": "99999999"}}},
     400, "INVALID_ARGUMENT", "steps"),
    ("Visualizer/GetJob", {"id": "job-404"}, 404, "NOT_FOUND", "job-404"),
    ("Visualizer/NoSuchMethod", {}, 404, "NOT_FOUND", "NoSuchMethod"),
    ("Health/Check", {}, 404, "NOT_FOUND", "Health"),
])
def test_grpc_statuses_become_http_statuses(open_server, method, body, http_status, code, named):
    status, reply = post(open_server.url, method, body)
    assert (status, reply["code"]) == (http_status, code)
    assert named in reply["message"]


def test_tokens_roles_and_quotas_apply_as_over_grpc(token_server):
    url = token_server.url
    status, reply = post(url, "Visualizer/ListModels", {})
    assert (status, reply["code"]) == (401, "UNAUTHENTICATED")
    status, reply = post(url, "Visualizer/ListModels", {}, token="wrong-token-0123456789")
    assert status == 401
    status, reply = post(url, "Visualizer/ListModels", {}, token=ALICE)
    assert status == 200 and len(reply["models"]) == 3
    status, reply = post(url, "Visualizer/LoadModel", {"path": "x.pt"}, token=ALICE)
    assert (status, reply["code"]) == (403, "PERMISSION_DENIED")
    status, reply = post(url, "Visualizer/SubmitJob",
                         {"request": {"model": "mnist_classifier", "objectiveText": "logit(3)",
                                      "optimizer": {"steps": "2000"}}}, token=ALICE)
    assert (status, reply["code"]) == (429, "RESOURCE_EXHAUSTED")
    assert "max_image_steps (1000)" in reply["message"]


def test_a_body_over_the_max_message_size_is_refused(token_server):
    # The refusal comes from the declared length, before any byte of the
    # body is read: the headers alone get it. (Sending the body too would
    # race the server closing the connection: a broken pipe or the reply,
    # whichever comes first.)
    parts = urllib.parse.urlsplit(token_server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        connection.putrequest("POST", "/api/featviz.v1.Visualizer/ListModels")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", "1000001")
        connection.putheader("Authorization", f"Bearer {ALICE}")
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        reply = json.loads(response.read().decode())
    finally:
        connection.close()
    assert "--max_message_bytes 1000000" in reply["message"]


def test_validate_only_checks_and_queues_nothing(open_server):
    request = {"model": "mnist_classifier", "objectiveText": "channel(conv2, 3)  + logit(1)",
               "optimizer": {"steps": "40"}}
    status, job = post(open_server.url, "Visualizer/SubmitJob",
                       {"request": request, "validateOnly": True})
    assert status == 200
    assert job["objective"] == "channel(conv2, 3) + logit(1)"
    assert job["totalSteps"] == "40" and job["id"] == ""
    status, jobs = post(open_server.url, "Visualizer/ListJobs", {})
    assert all(j["objective"] != job["objective"] for j in jobs["jobs"])
    request["objectiveText"] = "channel(conv2, 3) + lgoit(1)"
    status, reply = post(open_server.url, "Visualizer/SubmitJob",
                         {"request": request, "validateOnly": True})
    assert status == 400
    assert re.search(r"column \d+", reply["message"]), reply["message"]


def test_render_streams_server_sent_events(open_server):
    status, text = post(open_server.url, "Visualizer/Render", {
        "model": "mnist_classifier", "objectiveText": "channel(conv2, 3) - 0.01 * tv()",
        "seed": "5", "optimizer": {"steps": "24"},
        "output": {"progressEvery": "8", "previewPng": True, "png": True}})
    assert status == 200
    got = events(text)
    assert got[0][0] == "metadata" and got[0][1]["featviz-job-id"]
    progress = [d["progress"] for k, d in got if k == "message" and "progress" in d]
    assert [int(p["step"]) for p in progress] == [8, 16, 24]
    assert all(len(p["termValues"]) == 2 and p["previewPng"] for p in progress)
    results = [d["result"] for k, d in got if k == "message" and "result" in d]
    assert len(results) == 1 and len(results[0]["png"]) == 1
    assert got[-1][0] == "end"


def open_long_render(url: str):
    """A Render of ENDLESS_STEPS streamed over its own connection: the
    connection, the response and the stream's first event (its metadata)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    connection.request("POST", "/api/featviz.v1.Visualizer/Render", json.dumps({
        "model": "mnist_classifier", "objectiveText": "channel(conv1, 2)",
        "image": {"batch": "8"}, "optimizer": {"steps": str(ENDLESS_STEPS)}}),
        {"Content-Type": "application/json"})
    response = connection.getresponse()
    first = b""
    while response.status == 200 and b"\n\n" not in first:
        chunk = response.read1(4096)
        if not chunk:
            break
        first += chunk
    return connection, response, first


def test_a_refused_render_is_a_plain_http_error(open_server):
    status, reply = post(open_server.url, "Visualizer/Render",
                         {"model": "mnist_classifier", "objectiveText": "logit(42)"})
    assert (status, reply["code"]) == (400, "OUT_OF_RANGE")
    assert "42" in reply["message"]


def test_a_browser_that_goes_away_cancels_its_render(open_server):
    connection, response, first = open_long_render(open_server.url)
    assert response.status == 200
    job_id = events(first.decode())[0][1]["featviz-job-id"]
    connection.sock.close()
    connection.close()
    # WatchJob ends when the job does: no polling, no sleeping.
    status, reply = post(open_server.url, "Visualizer/WatchJob", {"id": job_id})
    if status == 200:  # Watched while it ran: the stream's end says how.
        kind, reply = events(reply)[-1]
        assert kind == "error"
    else:  # Already over: a plain error reply.
        assert status == 499
    assert reply["code"] == "CANCELLED"
    status, job = post(open_server.url, "Visualizer/GetJob", {"id": job_id})
    assert job["state"] == "JOB_STATE_CANCELLED"


def multipart(parts: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = "featvizstudioboundary0123"
    body = b""
    for name, (filename, data, kind) in parts.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                 f"filename=\"{filename}\"\r\nContent-Type: {kind}\r\n\r\n").encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_an_upload_is_streamed_in_chunks_with_its_role_checked(token_server):
    import hashlib
    model = (token_server.models / "mnist_classifier.pt").read_bytes()
    card = json.loads((token_server.models / "mnist_classifier.card.json").read_text())
    header = {"header": {"name": "uploaded_mnist", "sizeBytes": str(len(model)),
                         "sha256": hashlib.sha256(model).hexdigest(),
                         "cardJson": json.dumps(card)}}
    body, kind = multipart({"request": ("request.json", json.dumps(header).encode(),
                                        "application/json"),
                            "file": ("model.pt", model, "application/octet-stream")})
    status, reply = post(token_server.url, "Visualizer/UploadModel", raw=body,
                         headers={"Content-Type": kind}, token=ALICE)
    assert (status, reply["code"]) == (403, "PERMISSION_DENIED")
    status, reply = post(token_server.url, "Visualizer/UploadModel", raw=body,
                         headers={"Content-Type": kind}, token=UPLOADER)
    assert status == 200, reply
    assert reply["model"]["name"] == "uploaded_mnist"
    assert reply["model"]["contentHash"] == hashlib.sha256(model).hexdigest()
    # A wrong hash is the server's INVALID_ARGUMENT, naming it.
    header["header"]["sha256"] = "0" * 64
    header["header"]["name"] = "uploaded_again"
    body, kind = multipart({"request": ("r.json", json.dumps(header).encode(), "application/json"),
                            "file": ("model.pt", model, "application/octet-stream")})
    status, reply = post(token_server.url, "Visualizer/UploadModel", raw=body,
                         headers={"Content-Type": kind}, token=UPLOADER)
    assert (status, reply["code"]) == (400, "INVALID_ARGUMENT")
    assert "sha256" in reply["message"].lower() or "SHA-256" in reply["message"]


def test_no_cors_and_a_content_security_policy(open_server):
    request = urllib.request.Request(open_server.url, headers={"Origin": "http://evil.example"})
    with urllib.request.urlopen(request) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert b"featviz studio" in response.read()


def test_sigterm_ends_open_streams_and_stops_accepting(tmp_path):
    import signal
    server = Server(tmp_path, "--shutdown_grace_seconds", "0")
    connection, response, first = open_long_render(server.url)
    assert events(first.decode())[0][0] == "metadata"
    server.process.send_signal(signal.SIGTERM)
    # The stream ends with the render's end: cancelled by the drain.
    kind, status = events((first + response.read()).decode())[-1]
    assert kind == "error" and status["code"] in ("CANCELLED", "UNAVAILABLE"), status
    connection.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url + "api", timeout=30)
    assert server.process.wait(timeout=60) == 0
    server.log.close()


def test_with_tls_files_the_studio_is_https(tmp_path):
    import ssl
    import subprocess

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    for name in ("ca", "server"):
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-out", f"{name}.key")
    openssl("req", "-x509", "-new", "-key", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=featviz-studio-ca")
    (tmp_path / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-new", "-key", "server.key", "-out", "server.csr", "-subj", "/CN=server")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    server = Server(tmp_path, "--tls_cert", str(tmp_path / "server.pem"),
                    "--tls_key", str(tmp_path / "server.key"))
    try:
        assert server.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        status, reply = post(server.url, "Visualizer/ListModels", {}, context=context)
        assert status == 200 and len(reply["models"]) == 3
        with pytest.raises(OSError):  # No plain HTTP on the HTTPS port.
            post("http" + server.url[5:], "Visualizer/ListModels", {})
    finally:
        assert server.stop() == 0


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(token_server):
    parts = urllib.parse.urlsplit(token_server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.putrequest("POST", "/api/featviz.v1.Visualizer/ListModels")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(10**12))  # and not one byte sent
    connection.putheader("Authorization", f"Bearer {ALICE}")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    reply = json.loads(response.read())
    assert reply["code"] == "RESOURCE_EXHAUSTED"
    assert "--max_message_bytes 1000000" in reply["message"]
    connection.close()
