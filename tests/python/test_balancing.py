"""The Python client over three featviz-server replicas on loopback.

One target names all three ("ipv4:127.0.0.1:A,127.0.0.1:B,127.0.0.1:C", what
a headless Service's DNS name resolves to in Kubernetes): renders and
submitted jobs spread over them round-robin, each job id names the replica
that holds the job (--advertise_address), and get_job / wait / cancel_job
reach that replica whichever replica the balanced channel would pick.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path

import grpc
import pytest

from featviz.v1 import featviz_pb2, featviz_pb2_grpc
from featviz_client import Client, FeatvizError

REPO = Path(__file__).resolve().parents[2]
MODEL = "mnist_classifier"
READY = re.compile(r"^featviz-server listening on (\S+:\d+)$")
REPLICAS = 3
START_SECONDS = 120
STOP_SECONDS = 60


def start_server(binary: str, models: str) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--model_dir", models,
         "--advertise_address", "127.0.0.1"],
        stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def drain() -> None:
        for line in server.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=START_SECONDS)
        except queue.Empty:
            server.kill()
            pytest.fail(f"featviz-server printed no listening line in {START_SECONDS} s")
        if line is None:
            pytest.fail(f"featviz-server exited ({server.wait()}) before listening")
        match = READY.match(line.strip())
        if match:
            return server, match.group(1)


@pytest.fixture(scope="module")
def replicas():
    binary = os.environ.get("FEATVIZ_SERVER_BIN", str(REPO / "build/server/featviz-server"))
    models = os.environ.get("FEATVIZ_MODELS_DIR", str(REPO / "models"))
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no featviz-server at {binary}; set FEATVIZ_SERVER_BIN")
    servers = []
    try:
        for _ in range(REPLICAS):
            servers.append(start_server(binary, models))
        yield [address for _, address in servers]
    finally:
        codes = []
        for server, _ in servers:
            server.send_signal(signal.SIGTERM)
        for server, _ in servers:
            try:
                codes.append(server.wait(timeout=STOP_SECONDS))
            except subprocess.TimeoutExpired:
                server.kill()
                codes.append("timeout")
        assert codes == [0] * len(servers), f"replicas exited with {codes} on SIGTERM"


@pytest.fixture(scope="module")
def balanced(replicas):
    with Client("ipv4:" + ",".join(replicas)) as client:
        yield client


def replica_of(job_id: str) -> str:
    return job_id.partition("@")[2]


def test_renders_spread_round_robin_over_every_replica(balanced, replicas):
    # Until every replica has a connection, round-robin picks among those
    # that do; once all are ready, consecutive calls go to each in turn.
    seen = Counter()
    for seed in range(60):
        seen[replica_of(balanced.render(MODEL, "logit(2)", steps=4, seed=seed).job_id)] += 1
        if len(seen) == REPLICAS:
            break
    assert set(seen) == set(replicas), f"renders reached {dict(seen)} of {replicas}"
    turn = [replica_of(balanced.render(MODEL, "logit(2)", steps=4, seed=1000 + i).job_id)
            for i in range(2 * REPLICAS)]
    assert set(turn[:REPLICAS]) == set(replicas), turn
    assert turn[:REPLICAS] == turn[REPLICAS:], f"not round-robin: {turn}"


def test_submitted_jobs_are_followed_on_the_replica_holding_them(balanced, replicas):
    # As above: keep submitting until every replica holds a job.
    jobs = []
    while len(jobs) < 2 * REPLICAS or {replica_of(j.id) for j in jobs} != set(replicas):
        assert len(jobs) < 60, f"jobs reached only {[j.id for j in jobs]}"
        c = len(jobs) % 10
        jobs.append(balanced.submit(MODEL, f"logit({c})", steps=8, seed=len(jobs)))
    for i, job in enumerate(jobs):
        c = i % 10
        # Through the balanced channel each call would land on any replica;
        # routing by the id sends it to the one holding the job.
        result = balanced.wait(job.id, timeout=120)
        assert result.objective == f"logit({c})"
        assert result.job_id == job.id
        got = balanced.get_job(job.id, include_result=True)
        assert got.id == job.id and got.state == featviz_pb2.JOB_STATE_SUCCEEDED
        assert got.result.objective == f"logit({c})"
        ended = balanced.cancel_job(job.id)
        assert ended.state == featviz_pb2.JOB_STATE_SUCCEEDED


def test_replica_asked_for_another_replicas_job_names_the_holder(balanced, replicas):
    job = balanced.submit(MODEL, "logit(5)", steps=4, seed=5)
    holder = replica_of(job.id)
    other = next(address for address in replicas if address != holder)
    # A plain stub on another replica: no routing.
    with grpc.insecure_channel(other) as channel:
        stub = featviz_pb2_grpc.VisualizerStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(featviz_pb2.GetJobRequest(id=job.id), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"held by replica {holder}" in err.value.details()
    assert other in err.value.details()


def test_unknown_job_on_a_replica_is_not_found(balanced, replicas):
    with pytest.raises(FeatvizError) as err:
        balanced.get_job(f"999999@{replicas[1]}")
    assert err.value.code == "NOT_FOUND"


def test_dns_target_reaches_a_server(replicas):
    port = replicas[0].rsplit(":", 1)[1]
    with Client(f"dns:///localhost:{port}") as client:
        assert MODEL in [m.name for m in client.list_models(timeout=30)]
